"""`sentiray pipeline`: the chain in order, inputs wired, finished stages skipped, failures
stopping the chain, a killed run picked up where it stopped.

The kill test runs the shipped job YAMLs (jobs/*.yaml) through a pipeline file shaped like
jobs/pipeline.yaml, at tiny sizes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from sentiray import cli, pipeline
from sentiray.data import schema, storage

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs"


def write_pipeline(path: Path, root: Path, stages: list[dict], name: str = "p") -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "storage": {"root": str(root)},
                "tracking": {"experiment": "pipeline-test", "tracking_uri": f"sqlite:///{root}/mlflow.db"},
                "stages": stages,
            },
            sort_keys=False,
        )
    )
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def state(root: Path, name: str = "p") -> dict:
    return storage.read_json(str(root / pipeline.STATE_DIR / f"{name}.json"))


# --------------------------------------------------------------------------- before anything runs


def test_a_shipped_pipeline_loads_from_any_directory(tmp_path, monkeypatch):
    """jobs/pipeline.yaml names its stages' files from the project root (jobs/data.yaml): found
    from elsewhere too, beside or above the pipeline file; from the root they stay as written."""
    monkeypatch.chdir(tmp_path)
    _, steps = pipeline.load(JOBS / "pipeline.yaml", [f"storage.root={tmp_path}"])
    assert [s.config_path for s in steps][:2] == [str(JOBS / "data.yaml"), str(JOBS / "rationales.yaml")]
    monkeypatch.chdir(REPO)
    _, steps = pipeline.load("jobs/pipeline.yaml", [f"storage.root={tmp_path}"])
    assert steps[0].config_path == "jobs/data.yaml"


def test_a_bad_stage_config_fails_before_the_first_stage_runs(tmp_path, capsys):
    root = tmp_path / "out"
    p = write_pipeline(
        tmp_path / "p.yaml",
        root,
        [
            {"name": "data", "config": str(JOBS / "data.yaml"), "overrides": ["data.size=20"]},
            {
                "name": "evaluate",
                "config": str(JOBS / "evaluate.yaml"),
                "inputs": {"data.input": "data"},
                "overrides": ["evaluate.splitt=test"],
            },
        ],
    )
    code, _, err = run_cli(capsys, "pipeline", str(p))
    assert code == 2
    assert "stage 'evaluate'" in err and "evaluate.splitt: unknown key" in err
    assert not root.exists()  # nothing ran, not even the valid first stage


@pytest.mark.parametrize(
    "stages, overrides, message",
    [
        (
            [
                {"name": "a", "config": str(JOBS / "data.yaml")},
                {"name": "b", "config": str(JOBS / "evaluate.yaml"), "inputs": {"data.input": "c"}},
            ],
            [],
            "input data.input takes 'c', which is not an earlier stage",
        ),
        (
            [{"name": "a", "config": str(JOBS / "data.yaml")}, {"name": "a", "config": str(JOBS / "data.yaml")}],
            [],
            "stage name 'a' is used twice",
        ),
        ([{"name": "a", "config": str(JOBS / "data.yaml")}], ["nosuch:data.size=3"], "no stage named 'nosuch'"),
        (
            [{"name": "a", "config": str(JOBS / "data.yaml")}],
            ["a:data.size=-3"],
            "data.size: Input should be greater than 0",
        ),
        ([{"name": "a", "config": str(tmp := "/nonexistent/job.yaml")}], [], f"config file {tmp} does not exist"),
        ([], [], "stages: List should have at least 1 item"),
    ],
)
def test_wiring_and_override_errors_name_what_is_wrong(tmp_path, capsys, stages, overrides, message):
    p = write_pipeline(tmp_path / "p.yaml", tmp_path / "out", stages)
    code, _, err = run_cli(capsys, "pipeline", str(p), *overrides)
    assert code == 2 and message in err, err


def test_outputs_are_wired_and_overrides_reach_their_stage(tmp_path):
    root = tmp_path / "out"
    p = write_pipeline(
        tmp_path / "p.yaml",
        root,
        [
            {"name": "data", "config": str(JOBS / "data.yaml")},
            {"name": "assistant", "config": str(JOBS / "assistant.yaml"), "inputs": {"data.input": "data"}},
            {
                "name": "evaluate",
                "config": str(JOBS / "evaluate.yaml"),
                "inputs": {"data.input": "data", "model.path": "assistant"},
            },
        ],
    )
    _, steps = pipeline.load(p, ["data:data.size=33", "ray.num_cpus=2"])
    data, assistant, evaluate = (s.cfg for s in steps)
    assert data.data.size == 33 and assistant.data.size != 33  # `name:` overrides one stage only
    assert {c.ray.num_cpus for c in (data, assistant, evaluate)} == {2}  # plain ones reach every stage
    assert {c.storage.root for c in (data, assistant, evaluate)} == {str(root)}
    assert assistant.data.input == data.resolve(data.data.output) == steps[0].output
    assert evaluate.model.path == str(root / "checkpoints" / "assistant" / "model") == steps[1].output
    assert {c.tracking.experiment for c in (data, assistant, evaluate)} == {"pipeline-test"}


# --------------------------------------------------------------------------- a failing stage


def test_on_stage_is_called_as_each_stage_that_runs_starts(tmp_path):
    """The hook the demo starts Serve from while the student trains: called before a stage
    runs (the stages before it are done, its own output is not), never for a skipped one."""
    root = tmp_path / "out"
    p = write_pipeline(
        tmp_path / "p.yaml",
        root,
        [
            {"name": "first", "config": str(JOBS / "data.yaml"), "overrides": ["data.size=40", "data.output=data/a"]},
            {"name": "second", "config": str(JOBS / "data.yaml"), "overrides": ["data.size=40", "data.output=data/b"]},
        ],
    )
    pipe, steps = pipeline.load(p)
    seen = []

    def on_stage(step):
        seen.append((step.name, [schema.is_complete(s.output) for s in steps]))

    assert pipeline.run(pipe, steps, summary=False, on_stage=on_stage) == 0
    assert seen == [("first", [False, False]), ("second", [True, False])]
    assert all(schema.is_complete(s.output) for s in steps)
    seen.clear()
    assert pipeline.run(pipe, steps, summary=False, on_stage=on_stage) == 0
    assert seen == []  # both complete: skipped


def test_a_failed_stage_stops_the_chain_and_a_rerun_starts_there(tmp_path, capsys, tiny_models):
    root = tmp_path / "out"
    model = tmp_path / "student"  # not there yet: the evaluate stage fails when it loads it
    p = write_pipeline(
        tmp_path / "p.yaml",
        root,
        [
            {"name": "data", "config": str(JOBS / "data.yaml"), "overrides": ["data.size=40", "data.output=data/msc"]},
            {
                "name": "evaluate",
                "config": str(JOBS / "evaluate.yaml"),
                "inputs": {"data.input": "data"},
                "overrides": [f"model.path={model}", "evaluate.limit=4", "mulcot.chain_max_new_tokens=8"],
            },
            {
                "name": "again",
                "config": str(JOBS / "evaluate.yaml"),
                "inputs": {"data.input": "data"},
                "overrides": [
                    f"model.path={model}",
                    "evaluate.limit=2",
                    "mulcot.generate_chains=false",
                    "evaluate.output=reports/again",
                ],
            },
        ],
    )
    code, out, err = run_cli(capsys, "pipeline", str(p))
    assert code == 1
    assert "stage 'evaluate' failed" in err and str(model) in err
    assert re.search(r"^   data done in \d+ s$", out, re.M)  # what each stage of the chain cost
    first = state(root)
    assert [first["stages"][n]["status"] for n in ("data", "evaluate")] == ["succeeded", "failed"]
    assert "again" not in first["stages"]  # the chain stopped at the failure
    assert schema.is_complete(str(root / "data" / "msc"))

    shutil.copytree(tiny_models["vlm"], model)  # the fix
    code, out, err = run_cli(capsys, "pipeline", str(p))
    assert code == 0, err
    assert "[1/3] data (data" in out and "complete at" in out.split("[2/3]")[0]  # skipped
    second = state(root)
    assert [second["stages"][n]["status"] for n in ("data", "evaluate", "again")] == [
        "skipped",
        "succeeded",
        "succeeded",
    ]
    assert [h["status"] for h in second["history"] if h["stage"] == "evaluate"] == [
        "running",
        "failed",
        "running",
        "succeeded",
    ]
    assert storage.read_json(str(root / "reports" / "student" / "report.json"))["n"] == 4
    assert storage.read_json(str(root / "reports" / "again" / "report.json"))["n"] == 2

    # One MLflow parent across both runs; the data stage ran once, evaluate twice (failed, finished).
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    parent = client.get_run(second["mlflow_run_id"])
    assert (
        second["mlflow_run_id"] == first["mlflow_run_id"]
        and parent.data.tags["sentiray.pipeline.status"] == "succeeded"
    )
    kids = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    stages_run = sorted((k.data.tags.get("sentiray.stage"), k.info.status) for k in kids)
    assert stages_run == [
        ("data", "FINISHED"),
        ("evaluate", "FAILED"),
        ("evaluate", "FINISHED"),
        ("evaluate", "FINISHED"),
    ]


# --------------------------------------------------------------------------- killed mid-chain


def chain(tmp_path: Path, models: dict) -> Path:
    """jobs/pipeline.yaml's chain at tiny sizes: each stage a few seconds of real work."""
    root = tmp_path / "out"
    gen = ["max_new_tokens=24", "batch_size=16"]
    train = ["train.epochs=1", "train.batch_size=8", "train.log_every=2"]
    return write_pipeline(
        tmp_path / "p.yaml",
        root,
        [
            {"name": "data", "config": str(JOBS / "data.yaml"), "overrides": ["data.size=60", "data.output=data/msc"]},
            {
                "name": "rationales",
                "config": str(JOBS / "rationales.yaml"),
                "inputs": {"data.input": "data"},
                "overrides": [
                    "data.output=data/rationales",
                    f"teacher.model.path={models['vlm']}",
                    "teacher.lrsa_rationales=false",
                    # sampled: a random model's greedy answer is often empty (a reject)
                    "teacher.temperature=1.0",
                    # a random teacher's chains never agree with the gold label: train on them anyway
                    "teacher.keep_disagreeing_pass2=true",
                    *(f"teacher.{g}" for g in gen),
                    "teacher.shard_rows=16",
                ],
            },
            {
                "name": "assistant",
                "config": str(JOBS / "assistant.yaml"),
                "inputs": {"data.input": "rationales"},
                "overrides": [f"model.path={models['vlm']}", *train],
            },
            {
                "name": "augment",
                "config": str(JOBS / "augment.yaml"),
                "inputs": {"data.input": "rationales", "model.path": "assistant"},
                "overrides": [f"augment.{g}" for g in gen],
            },
            {
                "name": "student",
                "config": str(JOBS / "student.yaml"),
                "inputs": {"data.input": "augment", "distill.teacher_path": "assistant"},
                "overrides": [f"model.path={models['vlm']}", *train],
            },
            {
                "name": "evaluate",
                "config": str(JOBS / "evaluate.yaml"),
                "inputs": {"data.input": "rationales", "model.path": "student"},
                "overrides": ["mulcot.chain_max_new_tokens=24"],
            },
        ],
    )


def pipeline_process(p: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS")  # its own local Ray, so that killing it kills all of it
    return subprocess.Popen(
        [sys.executable, "-m", "sentiray.cli", "pipeline", str(p)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


@pytest.mark.slow
def test_a_pipeline_killed_mid_chain_is_finished_by_a_rerun_that_skips_the_done_stages(tmp_path, tiny_models):
    p = chain(tmp_path, tiny_models)
    root = tmp_path / "out"
    log = tmp_path / "first.log"
    proc = pipeline_process(p, log)
    deadline = time.time() + 600
    # Kill it (and its Ray) once the assistant is training: a checkpoint-less, half-done stage.
    while "== [3/6] assistant" not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "the assistant stage never started"
        time.sleep(0.5)
    time.sleep(8)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = state(root)
    assert [killed["stages"][n]["status"] for n in ("data", "rationales", "assistant")] == [
        "succeeded",
        "succeeded",
        "running",
    ]
    assert not (root / "checkpoints" / "assistant" / "_SUCCESS.json").exists()

    log2 = tmp_path / "second.log"
    proc = pipeline_process(p, log2)
    assert proc.wait(timeout=1200) == 0, log2.read_text()[-5000:]
    out = log2.read_text()
    assert f"[1/6] data (data, {JOBS / 'data.yaml'}): complete at {root / 'data' / 'msc'}; skipped" in out
    assert f"[2/6] rationales (rationales, {JOBS / 'rationales.yaml'}): complete at" in out
    assert f"== [3/6] assistant (train, {JOBS / 'assistant.yaml'})\n" in out  # ran again, not skipped
    done = state(root)
    assert [
        done["stages"][n]["status"] for n in ("data", "rationales", "assistant", "augment", "student", "evaluate")
    ] == ["skipped", "skipped", "succeeded", "succeeded", "succeeded", "succeeded"]

    # The outputs are complete, each id once.
    rationales = schema.read_manifest(str(root / "data" / "rationales"))["counts"]
    # every input id exactly once: with its chain, or among the rejects with a reason
    ids = [
        r["id"]
        for split in ("train", "dev", "test")
        for r in schema.read_rows(str(root / "data" / "rationales"), split)
    ]
    ids += [r["id"] for r in schema.read_rows(str(root / "data" / "rationales"), "rejects")]
    inputs = [
        r["id"] for split in ("train", "dev", "test") for r in schema.read_rows(str(root / "data" / "msc"), split)
    ]
    assert sorted(ids) == sorted(inputs) and rationales["test"] > 0
    for role in ("assistant", "student"):
        assert storage.read_json(str(root / "checkpoints" / role / "_SUCCESS.json"))["model"] == str(
            root / "checkpoints" / role / "model"
        )
    assert schema.is_complete(str(root / "data" / "augmented"))
    assert storage.read_json(str(root / "reports" / "student" / "report.json"))["n"] == rationales["test"]

    # A third run has nothing left to do.
    log3 = tmp_path / "third.log"
    assert pipeline_process(p, log3).wait(timeout=300) == 0
    assert log3.read_text().count("; skipped") == 6
