"""Stage `rationales` end to end: Ray Data actor pool, exactly-once shards, resume after a kill,
an OpenAI-compatible endpoint with faults and a restart, clear errors for bad jobs."""

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from sentiray import config, stages
from sentiray.config import ConfigError
from sentiray.data import schema, storage, synthetic
from sentiray.prompts.parsing import parse_label
from sentiray.teacher import backends, pipeline
from tests.conftest import free_port
from tests.teacher.openai_server import ServerProcess

REPO = Path(__file__).resolve().parents[2]


def write_input(uri: str, size: int = 60, seed: int = 0, bad_rows: bool = True, task: str = "msc") -> dict:
    """A synthetic canonical data set; with ``bad_rows`` three train rows the teacher cannot take."""
    data = synthetic.generate(task, size, seed=seed)
    if bad_rows:
        train = data.splits["train"]
        train[0] = {**train[0], "text": "   "}
        train[1] = {**train[1], "image": b"\x89PNG garbage"}
        train[2] = {**train[2], "image": None, "image_uri": "/nonexistent/picture.png"}
    return schema.write_dataset(data, uri)


def job(tmp_path, input_uri, output_uri, **teacher):
    t = {"backend": "hf", "temperature": 1.0, "max_new_tokens": 24, "batch_size": 4, "shard_rows": 10}
    t.update(teacher)
    raw = {
        "stage": "rationales",
        "storage": {"root": str(tmp_path)},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "rationales-test"},
        "data": {"format": "canonical", "input": input_uri, "output": output_uri},
        "teacher": t,
    }
    return config.validate(raw, "test")


def all_ids(uri: str, splits=schema.SPLITS) -> tuple[list[str], list[str]]:
    """(ids in the rows of every split, ids in rejects), with repeats kept."""
    rows = [i for s in splits for i in schema.read_table(uri, s, columns=["id"]).column("id").to_pylist()]
    rejects = schema.read_table(uri, "rejects", columns=["id"]).column("id").to_pylist()
    return rows, rejects


def input_ids(uri: str) -> list[str]:
    return [i for s in schema.SPLITS for i in schema.read_table(uri, s, columns=["id"]).column("id").to_pylist()]


def file_hashes(uri: str) -> dict[str, str]:
    out = {}
    for folder in ("train", "dev", "test", "rejects"):
        d = Path(uri) / folder
        for f in sorted(d.glob("*.parquet")) if d.exists() else []:
            out[f"{folder}/{f.name}"] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def assert_exactly_once(input_uri: str, output_uri: str) -> tuple[list[str], list[str]]:
    rows, rejects = all_ids(output_uri)
    assert len(rows) == len(set(rows)), f"duplicate ids: {[i for i, n in Counter(rows).items() if n > 1][:5]}"
    assert not set(rows) & set(rejects)
    assert len(rejects) == len(set(rejects))
    assert sorted(rows + rejects) == sorted(input_ids(input_uri))  # nothing missing
    return rows, rejects


# ----------------------------------------------------------------------------- fast: bad jobs


def test_bad_jobs_fail_early_with_the_reason(tmp_path, tiny_models):
    write_input(str(tmp_path / "in"), size=20, bad_rows=False)
    with pytest.raises(ConfigError, match="data.format must be 'canonical'"):
        raw = job(tmp_path, "in", "out", model={"path": tiny_models["vlm"]}).model_dump()
        raw["data"]["format"] = "synthetic"
        pipeline.run(config.validate(raw))
    with pytest.raises(schema.DataError, match="not a complete sentiray data set"):
        pipeline.run(job(tmp_path, "missing", "out", model={"path": tiny_models["vlm"]}))
    with pytest.raises(ConfigError, match="teacher.model.path: no model at"):
        pipeline.run(job(tmp_path, "in", "out", model={"path": str(tmp_path / "no-model")}))
    schema.write_dataset(synthetic.generate("msa", 20, seed=0), str(tmp_path / "msa"))
    with pytest.raises(ConfigError, match="'msa' data set.*supported tasks are msc, masc, mabsa"):
        pipeline.run(job(tmp_path, "msa", "out", model={"path": tiny_models["vlm"]}))
    if not backends.vllm_installed():
        with pytest.raises(backends.BackendUnavailable, match="vllm is not installed|pip install vllm"):
            pipeline.run(job(tmp_path, "in", "out", backend="vllm", model={"path": tiny_models["vlm"]}))
    assert not (tmp_path / "out").exists()  # nothing written by any of them


# ----------------------------------------------------------------------------- hf through Ray Data


@pytest.mark.slow
def test_hf_stage_writes_every_id_exactly_once_with_its_fields(ray_cluster, tiny_models, tmp_path, s3_uri):
    """Input on local disk, output on S3 (a loopback S3 server)."""
    import mlflow

    write_input(str(tmp_path / "in"))
    out = s3_uri
    cfg = job(
        tmp_path,
        "in",
        out,
        name="tiny-vlm",
        model={"path": tiny_models["vlm"]},
        concurrency=2,
        lrsa_rationales=True,
        lrsa_max_new_tokens=12,
    )
    summary = stages.run_stage(cfg)
    assert schema.is_complete(out) and not summary["skipped"]
    rows, rejects = assert_exactly_once(str(tmp_path / "in"), out)
    assert len(rows) == 57 and len(rejects) == 3
    manifest = schema.read_manifest(out)
    assert manifest["counts"] == {"train": 45, "dev": 6, "test": 6}
    assert manifest["reject_reasons"] == {"empty text": 1, "unreadable image": 2}
    reasons = {r["id"]: r["reason"] for r in schema.read_rows(out, "rejects")}
    assert "does not exist" in reasons["synthetic-msc-train-000002"]
    # train: 48 rows in shards of at most 10, committed as they finished
    train_files = [n for n in storage.listdir(storage.join(out, "train")) if n.startswith("part-")]
    assert len(train_files) == 5
    # rows in input order whatever the number of actors (2 here): the same rows give the same shards
    train_ids = [r["id"] for r in schema.read_rows(out, "train")]
    assert train_ids == sorted(train_ids)

    for split in schema.SPLITS:
        for r in schema.read_rows(out, split):
            assert r["teacher"] == "tiny-vlm" and r["rationale"]
            assert r["teacher_correct"] == (r["teacher_prediction"] == r["label"])
            assert r["rationale_correct"] == (parse_label(r["rationale"]) == r["label"])
            # pass 2 exactly for the wrong train rows; dev/test never see their label
            assert r["rationale_pass"] == (2 if split == "train" and not r["teacher_correct"] else 1)
            assert 0 < r["rationale_tokens"] <= 24
            assert r["teacher_tokens"] >= r["rationale_tokens"] + 1  # plus the LRSA rationales
            assert r["text_explanation"] and r["image_description"]
            assert r["image"] and r["gold_chain"]  # canonical columns kept
    # MLflow: the run's metrics and a sample of chains
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    [run] = mlflow.search_runs(experiment_names=["rationales-test"], output_format="list")
    m = run.data.metrics
    assert m["rejects"] == 3 and m["rows_processed"] == 60 and m["tokens_generated"] > 0
    assert m["rows_per_s"] > 0 and 0 <= m["pass1_accuracy"] <= 1 and 0 <= m["parse_failure_rate"] <= 1
    sample = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/rationales/sample_chains.md")
    assert "synthetic-msc-train-000003" in sample

    # complete: a rerun does nothing
    assert stages.run_stage(cfg)["skipped"] is True
    # resuming into this output with other settings is refused, naming the change
    storage.remove(storage.join(out, "_manifest.json"))
    with pytest.raises(ConfigError, match=r"max_new_tokens: 24 -> 25"):
        stages.run_stage(
            job(
                tmp_path,
                "in",
                out,
                name="tiny-vlm",
                model={"path": tiny_models["vlm"]},
                concurrency=2,
                lrsa_rationales=True,
                lrsa_max_new_tokens=12,
                max_new_tokens=25,
            )
        )


# ----------------------------------------------------------------------------- kill and resume


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates_or_recomputing(ray_cluster, tiny_models, tmp_path):
    write_input(str(tmp_path / "in"), size=80)  # 64 train rows: 8 shards of 8
    overrides = [
        f"storage.root={tmp_path}",
        "data.input=in",
        "data.output=out",
        f"teacher.model.path={tiny_models['vlm']}",
        "teacher.temperature=1.0",
        "teacher.max_new_tokens=24",
        "teacher.lrsa_rationales=false",
        "teacher.shard_rows=8",
        "teacher.batch_size=4",
        "ray.num_cpus=2",
        f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        "tracking.experiment=rationales-test",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sentiray.cli", "run", str(REPO / "jobs" / "rationales.yaml"), *overrides],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    train_dir = tmp_path / "out" / "train"
    try:
        deadline = time.time() + 240
        while len(list(train_dir.glob("part-*.parquet"))) < 2:
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.time() < deadline, "no shard committed in time"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        proc.wait(timeout=30)
    out = str(tmp_path / "out")
    assert not schema.is_complete(out)
    committed = file_hashes(out)
    done_rows, done_rejects = [], []
    for name in committed:
        ids = pipeline._read_ids(os.path.join(out, name))
        (done_rejects if name.startswith("rejects/") else done_rows).extend(ids)
    assert 16 <= len(done_rows) + len(done_rejects) < 80

    # rerun (here, in this process's Ray cluster): only the rest is done
    summary = stages.run_stage(config.load(REPO / "jobs" / "rationales.yaml", overrides))
    _, rejects = assert_exactly_once(str(tmp_path / "in"), out)
    assert len(rejects) == 3
    assert summary["metrics"]["rows_skipped"] == len(done_rows) + len(done_rejects)
    assert summary["metrics"]["rows_processed"] == 80 - len(done_rows) - len(done_rejects)
    after = file_hashes(out)
    assert {k: after[k] for k in committed} == committed  # finished shards untouched
    assert not list(Path(out).rglob("*.tmp-*"))  # no half-written leftovers


# ----------------------------------------------------------------------------- openai endpoint with faults


@pytest.mark.slow
def test_openai_stage_survives_faults_and_a_server_restart(ray_cluster, tiny_models, tmp_path):
    write_input(str(tmp_path / "in"), size=60)
    port = free_port()
    server = ServerProcess(
        tiny_models["vlm"],
        port,
        faults_log=str(tmp_path / "faults.txt"),
        max_tokens_cap=24,
        p429=0.1,
        p500=0.1,
        pslow=0.04,
        slow_s=1.5,
        seed=1,
    )
    teacher = {
        "backend": "openai",
        "endpoint": server.url,
        "endpoint_model": "tiny-teacher",
        "concurrency": 4,
        "batch_size": 8,
        "shard_rows": 10,
        "timeout_s": 1.0,
        "backoff_s": 0.2,
        "backoff_max_s": 1.5,
        "lrsa_rationales": True,
        "lrsa_max_new_tokens": 12,
    }

    # the endpoint is down from the start: the run stops, commits nothing, says why
    with pytest.raises(pipeline.TeacherFailing, match="teacher errors.*cannot connect"):
        stages.run_stage(job(tmp_path, "in", "out", max_retries=1, **teacher))
    assert not list((tmp_path / "out").rglob("part-*.parquet"))

    server.start()
    restarted = threading.Event()

    def kill_and_restart():  # once a shard is in, the server dies mid-run and comes back
        while not list((tmp_path / "out" / "train").glob("part-*.parquet")):
            time.sleep(0.05)
        server.kill()
        time.sleep(1.0)
        server.start()
        restarted.set()

    chaos = threading.Thread(target=kill_and_restart, daemon=True)
    chaos.start()
    try:
        summary = stages.run_stage(job(tmp_path, "in", "out", max_retries=40, **teacher))
        chaos.join(timeout=120)
        assert restarted.is_set()
        faults = server.faults()
    finally:
        server.kill()
    out = str(tmp_path / "out")
    _, rejects = assert_exactly_once(str(tmp_path / "in"), out)
    assert len(rejects) == 3  # only the three bad rows: every teacher fault was retried away
    m = summary["metrics"]
    assert m["retries_connection"] >= 1  # the restart
    assert faults["429"] >= 1 and faults["500"] >= 1
    # each injected 429/500 cost one retry; the kill may cut a few answers mid-flight
    assert abs(m["retries_429"] - faults["429"]) <= 4 and abs(m["retries_5xx"] - faults["500"]) <= 4
    if faults["slow"]:
        assert m["retries_timeout"] >= 1
    assert m["retries"] == sum(v for k, v in m.items() if k.startswith("retries_"))
    for r in schema.read_rows(out, "train"):
        assert r["teacher"] == "tiny-teacher" and r["rationale"] and r["text_explanation"] is not None
