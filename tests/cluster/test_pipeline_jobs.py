"""`sentiray pipeline --address`: one Ray job per stage on a `ray start --head` node, the MLflow
parent run handed to each job, and a rerun that submits nothing because everything is done."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
import pytest
import yaml

from sentiray import cli, pipeline
from sentiray.cluster import submit as sj
from sentiray.data import schema, storage, synthetic

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_each_stage_runs_as_a_ray_job_and_a_rerun_submits_nothing(head, tiny_models, tmp_path, monkeypatch, capsys):
    address, _ = head
    monkeypatch.chdir(REPO)  # the working directory uploaded with each job: it holds jobs/
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # passed through to the jobs
    root = tmp_path / "out"  # absolute and on this machine: the node's jobs write where we read
    p = tmp_path / "p.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "name": "on-cluster",
                "storage": {"root": str(root)},
                "tracking": {"experiment": "pipeline-jobs"},
                "stages": [
                    {"name": "data", "config": "jobs/data.yaml", "overrides": ["data.size=30", "data.output=data/msc"]},
                    {
                        "name": "evaluate",
                        "config": "jobs/evaluate.yaml",
                        "inputs": {"data.input": "data"},
                        "overrides": [
                            f"model.path={tiny_models['vlm']}",
                            "evaluate.limit=3",
                            "mulcot.chain_max_new_tokens=8",
                        ],
                    },
                ],
            }
        )
    )
    capsys.readouterr()
    code = cli.main(["pipeline", str(p), "--address", address, "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    st = storage.read_json(str(root / pipeline.STATE_DIR / "on-cluster.json"))
    jobs = {name: st["stages"][name]["job_id"] for name in ("data", "evaluate")}
    client = sj.connect(address)
    for name, job_id in jobs.items():
        info = client.get_job_info(job_id)
        assert sj.status_of(info) == "SUCCEEDED"
        assert info.metadata["sentiray_stage"] == name and info.metadata["sentiray_config"] == f"jobs/{name}.yaml"
        assert "SENTIRAY_PARENT_RUN_ID" in info.runtime_env["env_vars"]
    assert schema.read_manifest(str(root / "data" / "msc"))["counts"]["test"] > 0
    assert storage.read_json(str(root / "reports" / "student" / "report.json"))["n"] == 3

    # The jobs' MLflow runs nest under the pipeline's parent run, made here.
    ml = mlflow.MlflowClient(store)
    parent = ml.get_run(st["mlflow_run_id"])
    kids = ml.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(k.data.tags["sentiray.stage"] for k in kids) == ["data", "evaluate"]

    # Rerun: both outputs complete, so no job is submitted.
    before = len(sj.list_jobs(client))
    code = cli.main(["pipeline", str(p), "--address", address, "--quiet"])
    out, _ = capsys.readouterr()
    assert code == 0 and out.count("; skipped") == 2
    assert len(sj.list_jobs(client)) == before


@pytest.mark.slow
def test_a_failing_job_stops_the_pipeline_with_its_error(head, tmp_path, monkeypatch, capsys):
    address, _ = head
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    root = tmp_path / "out"
    p = tmp_path / "p.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "name": "fails",
                "storage": {"root": str(root)},
                "stages": [
                    {
                        "name": "prepare",
                        "config": "jobs/data.yaml",  # a folder that is not there: the job fails
                        "overrides": ["data.format=twitter2015", f"data.input={tmp_path / 'no-such-folder'}"],
                    },
                    {
                        "name": "after",
                        "config": "jobs/data.yaml",
                        "inputs": {"data.input": "prepare"},
                        "overrides": ["data.output=x"],
                    },
                ],
            }
        )
    )
    capsys.readouterr()
    code = cli.main(["pipeline", str(p), "--address", address, "--quiet"])
    _, err = capsys.readouterr()
    assert code == 1
    assert "stage 'prepare' failed: job sentiray-data-" in err and "FAILED" in err
    assert "no-such-folder" in err  # the job's own error, from its log tail
    st = storage.read_json(str(root / pipeline.STATE_DIR / "fails.json"))
    assert st["stages"]["prepare"]["status"] == "failed" and "after" not in st["stages"]


@pytest.mark.slow
def test_a_job_that_fails_after_its_output_is_complete_is_taken_as_done(head, tmp_path, monkeypatch, capsys):
    """A stage's job can fail after the stage wrote the marker it writes last: once seen as a
    SIGABRT at interpreter exit right after a data stage's "wrote ..." line. A rerun would skip
    that stage, so the run goes on as the rerun would, with a warning and the job's log tail.

    Here a real job fails (it redoes the data set, ``data.overwrite``, from an input that is not
    there) while the output from before is complete; the step as checked is the one without
    ``overwrite`` (with it, nothing counts as complete, and the failure stops the stage)."""
    address, _ = head
    monkeypatch.chdir(REPO)
    p = tmp_path / "p.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "name": "late-failure",
                "storage": {"root": str(tmp_path / "out")},
                "tracking": {"enabled": False},
                "stages": [
                    {
                        "name": "prepare",
                        "config": "jobs/data.yaml",
                        "overrides": [
                            "data.format=twitter2015",
                            f"data.input={tmp_path / 'no-such-folder'}",
                            "data.output=data/msc",
                            "data.overwrite=true",
                        ],
                    }
                ],
            }
        )
    )
    _, (redo,) = pipeline.load(p)
    schema.write_dataset(synthetic.generate("msc", 20, seed=0), redo.output)  # complete, from before
    data = redo.cfg.data.model_copy(update={"overwrite": False})
    written = dataclasses.replace(redo, cfg=redo.cfg.model_copy(update={"data": data}))
    assert pipeline.is_complete(written.cfg) and not pipeline.is_complete(redo.cfg)
    client = sj.connect(address)
    capsys.readouterr()
    done = pipeline._run_job(written, client, address, None, follow=False)
    _, err = capsys.readouterr()
    assert done["failed_after_output"] and done["job_id"].startswith("sentiray-data-")
    assert sj.status_of(client.get_job_info(done["job_id"])) == "FAILED"
    assert "FAILED after its output was complete" in err and "no-such-folder" in err  # the job's own error

    with pytest.raises(pipeline.StageFailed, match="FAILED"):
        pipeline._run_job(redo, client, address, None, follow=False)
