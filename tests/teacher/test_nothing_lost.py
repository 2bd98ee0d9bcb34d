"""Stage `rationales`, nothing lost: teacher-side rejects are asked again by the next run, content
rejects stay; pass-2 outcomes are marked and kept out of training; two runs at once on one output;
a Ray Data actor killed mid-run. Real Ray, real HTTP (tests/teacher/openai_server.py), real files."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import psutil
import pytest

from sentiray import cli, config, stages
from sentiray.data import schema
from sentiray.teacher import pipeline
from tests.conftest import free_port
from tests.teacher.openai_server import ServerProcess
from tests.teacher.test_pipeline import assert_exactly_once, file_hashes, job, write_input

REPO = Path(__file__).resolve().parents[2]
OPENAI_JOB = str(REPO / "jobs" / "rationales_openai.yaml")
NEGATIVE = 'Text_analysis: dull. Final_conclusion: gloomy. "Prediction": "negative"'
PASS2_PROMPT = "This post is labelled"  # the start of the label-conditioned (pass 2) prompt


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    with ServerProcess(tiny_models["vlm"], free_port(), max_tokens_cap=24) as srv:
        yield srv


@pytest.fixture
def healthy(server):
    server.control(p429=0.0, p500=0.0, pslow=0.0, delay_s=0.0, fail_if=None, answer=None)
    yield server
    server.control(p429=0.0, p500=0.0, pslow=0.0, delay_s=0.0, fail_if=None, answer=None)


def openai_overrides(tmp_path, server, output="out", **teacher) -> list[str]:
    t = {
        "endpoint": server.url,
        "endpoint_model": "tiny-teacher",
        "concurrency": 4,
        "batch_size": 8,
        "shard_rows": 10,
        "max_new_tokens": 24,
        "temperature": 1.0,
        "timeout_s": 10,
        "max_retries": 1,
        "backoff_s": 0.05,
        "backoff_max_s": 0.2,
        "lrsa_rationales": False,
        **teacher,
    }
    return [
        f"storage.root={tmp_path}",
        "data.input=in",
        f"data.output={output}",
        f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        "tracking.experiment=nothing-lost",
        *(f"teacher.{k}={'null' if v is None else v}" for k, v in t.items()),
    ]


def reasons(uri: str) -> dict[str, str]:
    return {r["id"]: r["reason"] for r in schema.read_rows(uri, "rejects")}


def runs(tmp_path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    return mlflow.search_runs(experiment_names=["nothing-lost"], output_format="list", order_by=["start_time ASC"])


# ----------------------------------------------------------------------------- endpoint down, then up


@pytest.mark.slow
def test_teacher_rejects_fail_the_run_and_the_rerun_asks_again(ray_cluster, healthy, tmp_path, capsys):
    write_input(str(tmp_path / "in"), size=60)  # three train rows the teacher cannot take (content)
    out = str(tmp_path / "out")
    # 500 for about a third of the requests, one retry: some rows are left with teacher errors
    healthy.control(p500=0.35)
    args = ["run", OPENAI_JOB, *openai_overrides(tmp_path, healthy, max_error_fraction=1.0)]
    assert cli.main(args) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]  # Ray logs there too
    first = reasons(out)
    teacher_ids = sorted(i for i, r in first.items() if pipeline.is_teacher_side(r))
    content = {i: r for i, r in first.items() if not pipeline.is_teacher_side(r)}
    n = len(teacher_ids)
    assert n >= 1 and len(content) == 3
    assert len(err) == 1 and err[0].startswith(
        f"error: rationales: {n} of 60 rows are rejected for teacher-side "
        f"failures after the retries (teacher.max_retries=1): HTTP 5xx: {n}."
    )
    assert "Rerun the same command" in err[0] and "teacher.allow_rejects=true" in err[0]
    assert not schema.is_complete(out)  # so `sentiray pipeline` does not skip it
    assert_exactly_once(str(tmp_path / "in"), out)  # each id once, in rows or rejects
    [failed] = runs(tmp_path)
    assert failed.info.status == "FAILED"
    assert failed.data.metrics["rejects_teacher"] == n and failed.data.metrics["rejects_content"] == 3
    committed = {k: v for k, v in file_hashes(out).items() if not k.startswith("rejects/")}

    # the teacher is healthy again: the same command asks again for just those rows
    healthy.control(p500=0.0)
    assert cli.main(args) == 0
    rows, rejects = assert_exactly_once(str(tmp_path / "in"), out)
    assert len(rows) == 57 and reasons(out) == content  # content rejects stay, with their reasons
    assert set(teacher_ids) <= set(rows)
    after = file_hashes(out)
    assert {k: after[k] for k in committed} == committed  # committed shards untouched
    manifest = schema.read_manifest(out)
    assert (manifest["rejects"], manifest["rejects_content"], manifest["rejects_teacher"]) == (3, 3, 0)
    assert manifest["counts"] == {"train": 45, "dev": 6, "test": 6}
    retry = runs(tmp_path)[-1].data.metrics
    assert retry["rows_retried"] == n and retry["rows_processed"] == n and retry["rows_skipped"] == 60 - n
    assert retry["rejects_teacher"] == 0 and retry["rejects_content"] == 3
    assert not os.path.exists(os.path.join(out, pipeline.LEASE_FILE))
    # complete now: a third run does nothing
    assert cli.main(args) == 0 and "is complete" in capsys.readouterr().out


@pytest.mark.slow
def test_allow_rejects_finishes_with_them_counted(ray_cluster, healthy, tmp_path):
    write_input(str(tmp_path / "in"), size=30, bad_rows=False)
    healthy.control(fail_if="Analyze the sentiment", answer=NEGATIVE)  # every pass-1 prompt fails: 5xx
    cfg = config.load(
        OPENAI_JOB, openai_overrides(tmp_path, healthy, max_error_fraction=1.0, max_retries=0, allow_rejects=True)
    )
    summary = stages.run_stage(cfg)
    m = summary["manifest"]
    assert (m["rejects_teacher"], m["rejects_content"], m["teacher_reject_causes"]) == (30, 0, {"HTTP 5xx": 30})
    assert sum(m["counts"].values()) == 0 and schema.is_complete(str(tmp_path / "out"))


# ----------------------------------------------------------------------------- pass 2


@pytest.mark.slow
def test_pass2_disagreeing_is_flagged_and_left_out_of_training(ray_cluster, healthy, tmp_path):
    """A teacher that always answers "negative": every other train row gets a pass-2 chain that still
    reads negative."""
    write_input(str(tmp_path / "in"), size=60)
    healthy.control(answer=NEGATIVE)
    stages.run_stage(config.load(OPENAI_JOB, openai_overrides(tmp_path, healthy)))
    out = str(tmp_path / "out")
    train = schema.read_rows(out, "train")
    wrong = [r for r in train if r["label"] != "negative"]
    assert 0 < len(wrong) < len(train)
    for r in train:
        if r["label"] == "negative":
            assert (r["rationale_pass"], r["rationale_correct"], r["rationale_note"], r["use_for_training"]) == (
                1,
                True,
                None,
                True,
            )
        else:
            assert (r["rationale_pass"], r["rationale_correct"], r["use_for_training"]) == (2, False, False)
            assert r["rationale_note"] == f"pass 2 disagrees: its chain reads negative, the gold label is {r['label']}"
    for split in ("dev", "test"):  # no pass 2 there: references only, nothing flagged
        assert all(r["rationale_pass"] == 1 and r["use_for_training"] for r in schema.read_rows(out, split))
    manifest = schema.read_manifest(out)
    assert (manifest["pass2_disagreeing"], manifest["excluded_from_training"], manifest["pass2_failed"]) == (
        len(wrong),
        len(wrong),
        0,
    )
    assert runs(tmp_path)[-1].data.metrics["excluded_from_training"] == len(wrong)

    # teacher.keep_disagreeing_pass2: the same chains, kept for training
    stages.run_stage(
        config.load(OPENAI_JOB, openai_overrides(tmp_path, healthy, output="kept", keep_disagreeing_pass2=True))
    )
    kept = schema.read_rows(str(tmp_path / "kept"), "train")
    assert all(r["use_for_training"] for r in kept)
    assert sum((r["rationale_note"] or "").startswith("pass 2 disagrees") for r in kept) == len(wrong)
    assert schema.read_manifest(str(tmp_path / "kept"))["excluded_from_training"] == 0


@pytest.mark.slow
def test_pass2_failure_keeps_the_pass1_chain_marked(ray_cluster, healthy, tmp_path):
    write_input(str(tmp_path / "in"), size=60)
    healthy.control(answer=NEGATIVE, fail_if=PASS2_PROMPT)  # every pass-2 request: HTTP 500
    stages.run_stage(config.load(OPENAI_JOB, openai_overrides(tmp_path, healthy, max_retries=0)))
    out = str(tmp_path / "out")
    train = schema.read_rows(out, "train")
    wrong = [r for r in train if r["label"] != "negative"]
    assert len(train) == 45 and 0 < len(wrong)  # 48 train rows, 3 unreadable: none rejected for its failed pass 2
    assert len(schema.read_rows(out, "rejects")) == 3
    for r in wrong:
        assert r["rationale"] == NEGATIVE and r["rationale_pass"] == 1 and r["teacher_prediction"] == "negative"
        assert r["rationale_note"].startswith("pass 2 failed: teacher error: gave up after 0 retries (last: HTTP 500")
        assert r["use_for_training"] is False and r["rationale_correct"] is False
    manifest = schema.read_manifest(out)
    assert (manifest["pass2_failed"], manifest["excluded_from_training"], manifest["rejects_teacher"]) == (
        len(wrong),
        len(wrong),
        0,
    )


# ----------------------------------------------------------------------------- two runs at once


@pytest.mark.slow
def test_two_runs_at_once_on_one_output(healthy, tmp_path):
    """A resubmitted job: two `sentiray run` processes started together; one writes, the other stops at
    once naming it; every id exactly once."""
    write_input(str(tmp_path / "in"), size=60)
    healthy.control(delay_s=0.05)
    args = [
        sys.executable,
        "-m",
        "sentiray.cli",
        "run",
        OPENAI_JOB,
        *openai_overrides(tmp_path, healthy),
        "ray.num_cpus=2",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    procs, logs = [], []
    for i in range(2):
        logs.append(open(tmp_path / f"run{i}.log", "w+"))
        procs.append(
            subprocess.Popen(
                args, cwd=tmp_path, env=env, stdout=logs[-1], stderr=subprocess.STDOUT, start_new_session=True
            )
        )
    try:
        codes = [p.wait(timeout=400) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    text = [(tmp_path / f"run{i}.log").read_text() for i in range(2)]
    assert sorted(codes) == [0, 1], text
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    assert f"error: rationales: {tmp_path / 'out'} is being written by another run (run " in text[loser]
    assert f"of pid {procs[winner].pid} on " in text[loser]
    assert "rationales: wrote" not in text[loser] and "rows to do" not in text[loser]  # it touched nothing
    _, rejects = assert_exactly_once(str(tmp_path / "in"), str(tmp_path / "out"))
    assert len(rejects) == 3 and schema.is_complete(str(tmp_path / "out"))
    assert not (tmp_path / "out" / pipeline.LEASE_FILE).exists()


# ----------------------------------------------------------------------------- a killed actor


def _teacher_actors() -> list[psutil.Process]:
    """Our Ray Data teacher actors: processes this test process started (via its Ray cluster)."""
    found = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "TeacherActor" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found


@pytest.mark.slow
def test_killed_actor_the_run_completes_every_id_once(ray_cluster, tiny_models, tmp_path):
    write_input(str(tmp_path / "in"), size=80)
    cfg = job(tmp_path, "in", "out", model={"path": tiny_models["vlm"]}, shard_rows=8, lrsa_rationales=False)
    train_dir = tmp_path / "out" / "train"
    killed, restarted, problems = [], threading.Event(), []

    def kill_the_actor():
        try:
            deadline = time.time() + 300
            while not list(train_dir.glob("part-*.parquet")):  # mid-run: one shard in, more to come
                assert time.time() < deadline, "no shard committed"
                time.sleep(0.05)
            [actor] = _teacher_actors()
            killed.append(actor.pid)
            os.kill(actor.pid, signal.SIGKILL)
            while not restarted.is_set() and time.time() < deadline:
                if any(p.pid != actor.pid for p in _teacher_actors()):
                    restarted.set()
                time.sleep(0.1)
        except Exception as exc:  # noqa: BLE001 - reported by the test, not lost in the thread
            problems.append(exc)

    chaos = threading.Thread(target=kill_the_actor, daemon=True)
    chaos.start()
    summary = stages.run_stage(cfg)
    chaos.join(timeout=60)
    assert not problems, problems
    assert killed and restarted.is_set()  # the actor died and Ray brought it back
    out = str(tmp_path / "out")
    rows, rejects = assert_exactly_once(str(tmp_path / "in"), out)
    assert len(rows) == 77 and len(rejects) == 3
    assert summary["manifest"]["rejects_teacher"] == 0
