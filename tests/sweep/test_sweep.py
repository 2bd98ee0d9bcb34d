"""Sweeps on the session's local Ray cluster (4 CPUs): real Tune trials, each a real Ray
Train run of the tiny VLM on 100 synthetic posts, tracked in a real MLflow SQLite store.

Every trial holds 2 CPUs (its driver + 1 Train worker), so the sweeps run 2 trials at a
time unless they say otherwise.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import yaml

from sentiray import config, stages
from sentiray.data import storage
from sentiray.data.prepare import run as prepare
from sentiray.sweep import driver

pytestmark = pytest.mark.slow

EXPERIMENT = "sweep-tests"


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_models, ray_cluster):
    root = tmp_path_factory.mktemp("sweep")
    store = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", store)
        prepare(
            config.validate(
                {
                    "stage": "data",
                    "storage": {"root": str(root)},
                    "tracking": {"enabled": False},
                    "data": {"format": "synthetic", "task": "msc", "size": 100, "output": "data/msc"},
                }
            )
        )
        yield {"root": root, "store": store, "model": tiny_models["vlm"]}


def sweep_raw(ws, name: str, **tune) -> dict:
    return {
        "stage": "tune",
        "name": name,
        "storage": {"root": str(ws["root"])},
        "tracking": {"experiment": EXPERIMENT},
        "data": {"format": "canonical", "input": "data/msc"},
        "model": {"path": ws["model"], "kind": "vlm"},
        "mulcot": {"role": "assistant", "chain_column": "gold_chain", "max_length": 256},
        "train": {
            "output": f"ckpt/{name}-best",
            "epochs": 3,
            "batch_size": 8,
            "zero_stage": 0,
            "num_workers": 1,
            "keep_checkpoints": 1,
            "log_every": 5,
        },
        "tune": {"output": f"tune/{name}", **tune},
    }


def client(ws) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(ws["store"])


def children(ws, parent_run_id: str) -> dict:
    exp = client(ws).get_experiment_by_name(EXPERIMENT)
    runs = client(ws).search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {r.data.tags[driver.TRIAL_TAG]: r for r in runs}


def history(ws, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client(ws).get_metric_history(run_id, key), key=lambda m: m.step)]


def check_asha_sweep(ws, summary: dict, trials: int, max_t: int, metric: str, mode: str) -> None:
    """What every ASHA sweep must show, in the summary, on disk and in MLflow."""
    table = summary["table"]
    assert summary["metric"] == metric
    assert summary["trials"] == len(table) == trials
    assert summary["error"] == 0 and summary["not_run"] == 0
    assert summary["completed"] + summary["early_stopped"] == trials
    assert summary["early_stopped"] >= 1, driver.format_table(table, metric, list(table[0]["hp"]))
    rung = {}  # each trial's metric after its first epoch (ASHA's first rung)
    for row in table:
        # the history on disk is the trial's epochs, each reported once, with the metric
        epochs = storage.read_json(os.path.join(row["output"], driver.EPOCHS))
        assert [r["epoch"] for r in epochs] == list(range(1, row["epochs"] + 1))
        rung[row["trial"]] = epochs[0][metric]
        if row["status"] == "completed":
            assert row["epochs"] == max_t
            assert storage.exists(os.path.join(row["output"], "model", "config.json"))
        else:
            assert row["epochs"] < max_t  # stopped at a rung
    assert summary["trial_epochs"] == sum(r["epochs"] for r in table) < trials * max_t
    # a stopped trial was behind at the rung: worse than the best trial that went on
    better = max if mode == "max" else min
    for row in table:
        epochs = storage.read_json(os.path.join(row["output"], driver.EPOCHS))
        assert row["best"] == better(r[metric] for r in epochs) and row["final"] == epochs[-1][metric]
    went_on = better(rung[r["trial"]] for r in table if r["status"] == "completed")
    for row in table:
        if row["status"] == "early_stopped":
            assert better(rung[row["trial"]], went_on) == went_on != rung[row["trial"]]
    bests = [r["best"] for r in table]
    assert bests == sorted(bests, reverse=mode == "max") and summary["best"] == bests[0]

    # MLflow: the sweep's run, one child per trial with its values and its metric history
    parent = client(ws).get_run(summary["mlflow_run_id"])
    assert parent.data.tags["sentiray.stage"] == "tune"
    assert parent.data.metrics["trials"] == trials
    assert parent.data.metrics["early_stopped"] == summary["early_stopped"]
    assert parent.data.metrics[f"best_{metric}"] == pytest.approx(summary["best"])
    artifacts = {a.path for a in client(ws).list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/metric_vs_params.png", "plots/learning_curves.png"} <= artifacts
    with open(client(ws).download_artifacts(parent.info.run_id, "plots/learning_curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    csv_rows = client(ws).download_artifacts(parent.info.run_id, "tune/trials.csv")
    assert len(open(csv_rows).read().strip().splitlines()) == trials + 1
    kids = children(ws, parent.info.run_id)
    assert set(kids) == {r["trial"] for r in table}
    for row in table:
        child = kids[row["trial"]]
        for key, value in row["hp"].items():
            assert float(child.data.params[key]) == pytest.approx(value)
        assert len(history(ws, child.info.run_id, "dev_accuracy")) == row["epochs"]
        assert child.data.tags["sentiray.tune.status"] == row["status"]
        assert child.info.status == ("FINISHED" if row["status"] == "completed" else "KILLED")
    best_child = kids[summary["best_trial"]]
    assert best_child.data.tags["sentiray.tune.best"] == "true"
    assert parent.data.tags["sentiray.tune.best_run_id"] == best_child.info.run_id


# ASHA needs trials that differ after an epoch or two. The tiny models' dev accuracy on 10
# dev posts is still a constant-class guess there (every trial ties), so these sweeps
# compare trials by the epoch's label-stream training loss, which separates them.
ASHA = {"scheduler": "asha", "metric": "train_ce_l", "mode": "min", "grace_period": 1, "reduction_factor": 2}


def test_random_search_with_asha(ws):
    cfg = config.validate(
        sweep_raw(
            ws,
            "random",
            searcher="random",
            num_samples=6,
            **ASHA,
            search_space={"train.lr": {"loguniform": [1e-5, 3e-2]}, "mulcot.w_chain": {"uniform": [0.5, 1.5]}},
        )
    )
    started = time.perf_counter()
    summary = stages.run_stage(cfg)
    print(f"random+asha sweep: {time.perf_counter() - started:.0f}s")
    check_asha_sweep(ws, summary, trials=6, max_t=3, metric="train_ce_l", mode="min")
    for row in summary["table"]:
        assert 1e-5 <= row["hp"]["train.lr"] <= 3e-2 and 0.5 <= row["hp"]["mulcot.w_chain"] <= 1.5

    # the best trial's config: a complete train job with the best values, tagged in MLflow
    best = summary["best_config"]
    assert best == str(ws["root"] / "tune" / "random" / "best.yaml")
    best_row = summary["table"][0]
    job = config.load(best)
    assert job.stage == "train" and job.tune is None and job.train.epochs == 3
    assert job.train.lr == pytest.approx(best_row["hp"]["train.lr"])
    assert job.mulcot.w_chain == pytest.approx(best_row["hp"]["mulcot.w_chain"])
    assert job.train.output == "ckpt/random-best"
    logged = client(ws).download_artifacts(summary["mlflow_run_id"], "best/train.yaml")
    assert open(logged).read() == open(best).read()
    parent = client(ws).get_run(summary["mlflow_run_id"])
    assert parent.data.tags["sentiray.tune.best_trial"] == summary["best_trial"]
    assert parent.data.tags["sentiray.tune.best_config"] == best
    # ... and it trains (one epoch here, to keep the test short)
    trained = stages.run_stage(config.load(best, ["train.epochs=1"]))
    assert trained["best_epoch"] == 1 and 0 <= trained["best"] <= 1
    assert storage.exists(str(ws["root"] / "ckpt" / "random-best" / "model" / "config.json"))

    # rerunning a finished sweep does nothing
    again = stages.run_stage(cfg)
    assert again["skipped"] is True and again["best_trial"] == summary["best_trial"]
    assert len(children(ws, summary["mlflow_run_id"])) == 6


def test_optuna_search_with_asha(ws):
    cfg = config.validate(
        sweep_raw(
            ws,
            "optuna",
            searcher="optuna",
            num_samples=6,
            max_t=2,
            seed=1,
            **ASHA,
            search_space={"train.lr": {"loguniform": [1e-5, 3e-2]}, "mulcot.w_chain": {"choice": [0.5, 1.0, 1.5]}},
        )
    )
    started = time.perf_counter()
    summary = stages.run_stage(cfg)
    print(f"optuna+asha sweep: {time.perf_counter() - started:.0f}s")
    check_asha_sweep(ws, summary, trials=6, max_t=2, metric="train_ce_l", mode="min")
    assert {row["hp"]["mulcot.w_chain"] for row in summary["table"]} <= {0.5, 1.0, 1.5}
    # Optuna proposed distinct learning rates (TPE samples, it does not repeat a point)
    assert len({row["hp"]["train.lr"] for row in summary["table"]}) == 6


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(ws, ray_cluster, tmp_path):
    """The sweep's driver (a `sentiray tune` process on the same Ray cluster) is killed
    after the first epoch of its second trial; rerunning the same command finishes the
    sweep: the first trial is not trained again, the second continues from its epoch-1
    checkpoint, in its own MLflow run."""
    raw = sweep_raw(
        ws,
        "resume",
        searcher="grid",
        scheduler="fifo",
        max_t=2,
        max_concurrent_trials=1,
        search_space={"train.lr": {"grid": [1e-3, 1e-2]}},
    )
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = ws["root"] / "tune" / "resume"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentiray.cli", "tune", str(path)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while not glob.glob(str(out / "trials" / "*_00001" / driver.EPOCHS)):  # trial 2 finished epoch 1
            assert proc.poll() is None, open(tmp_path / "driver.log").read()[-3000:]
            assert time.time() < deadline, "the sweep did not get to its second trial"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies; Ray ends its job's trials
        proc.wait()
    first, second = (glob.glob(str(out / "trials" / f"*_0000{i}"))[0] for i in (0, 1))
    first_done = os.path.join(first, driver.launcher.SUCCESS)
    assert os.path.exists(first_done) and not os.path.exists(os.path.join(second, driver.launcher.SUCCESS))
    done_mtime = os.stat(first_done).st_mtime_ns
    checkpoints = sorted(glob.glob(os.path.join(first, "ray", "checkpoint_*")))
    parent_id = storage.read_json(str(out / driver.STATE))["mlflow_run_id"]
    # the killed job's trials release the cluster
    deadline = time.time() + 60
    while ray_cluster.available_resources().get("CPU", 0) < 4:
        assert time.time() < deadline, ray_cluster.available_resources()
        time.sleep(1)

    summary = stages.run_stage(config.load(path))  # the same command again: resumes

    assert summary["trials"] == 2 and summary["completed"] == 2 and summary["trial_epochs"] == 4
    assert sorted(r["hp"]["train.lr"] for r in summary["table"]) == [1e-3, 1e-2]
    # the finished trial was not trained again
    assert os.stat(first_done).st_mtime_ns == done_mtime
    assert sorted(glob.glob(os.path.join(first, "ray", "checkpoint_*"))) == checkpoints
    # the interrupted one went on from its epoch-1 checkpoint (10 steps of 8 of the 80 posts)
    epochs = storage.read_json(os.path.join(second, driver.EPOCHS))
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[0]["resumed_from_step"] == -1 and epochs[1]["resumed_from_step"] == 10
    # one sweep run, reopened; one child run per trial, the interrupted trial's continued
    assert summary["mlflow_run_id"] == parent_id
    kids = children(ws, parent_id)
    assert set(kids) == {os.path.basename(first), os.path.basename(second)}
    for trial in (first, second):
        assert len(history(ws, kids[os.path.basename(trial)].info.run_id, "dev_accuracy")) == 2
    exp = client(ws).get_experiment_by_name(EXPERIMENT)
    assert len(client(ws).search_runs([exp.experiment_id], filter_string="attributes.run_name = 'resume'")) == 1
    assert json.loads(open(client(ws).download_artifacts(parent_id, "tune/summary.json")).read())["completed"] == 2
