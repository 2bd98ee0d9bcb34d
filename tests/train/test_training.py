"""Training on Ray Train + DeepSpeed (2 CPU workers over gloo) with the tiny models.

One assistant is trained for the module and reused: the student distils from it, the
evaluation and registry checks read it.
"""

import mlflow
import pytest

from sentiray import config, stages
from sentiray.data import storage
from sentiray.data.prepare import run as prepare
from sentiray.models.tiny import build_tiny_vlm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_models, ray_cluster):
    root = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        prepare(
            config.validate(
                {
                    "stage": "data",
                    "storage": {"root": str(root)},
                    "data": {"format": "synthetic", "task": "msc", "size": 500, "output": "data/msc"},
                }
            )
        )
        student = build_tiny_vlm(str(root / "student-init"), seed=7)
        yield {
            "root": root,
            "models": tiny_models,
            "student": student,
            "store": f"sqlite:///{root / 'mlflow.db'}",
            "mp": mp,
        }


def job(ws, **overrides) -> config.JobConfig:
    raw = {
        "stage": "train",
        "storage": {"root": str(ws["root"])},
        "tracking": {"experiment": "train-tests"},
        "data": {"format": "canonical", "input": "data/msc"},
        "model": {"path": ws["models"]["vlm"], "kind": "vlm"},
        "mulcot": {"role": "assistant", "chain_column": "gold_chain"},
        # 8 epochs: a 2-layer tiny model needs 4-5 before the label "clicks" (the label is one token
        # of each target), and the moment moves with the random init, i.e. with the tokenizer.
        "train": {
            "output": "ckpt/assistant",
            "epochs": 8,
            "lr": 5e-3,
            "batch_size": 8,
            "num_workers": 2,
            "zero_stage": 2,
            "log_every": 2,
        },
    }
    return config.validate(config.apply_overrides(raw, [f"{k}={v}" for k, v in overrides.items()]))


def history(store, run_id, key):
    return [m.value for m in sorted(mlflow.MlflowClient(store).get_metric_history(run_id, key), key=lambda m: m.step)]


def stage_runs(store, name):
    client = mlflow.MlflowClient(store)
    exp = client.get_experiment_by_name("train-tests")
    return client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{name}'")


@pytest.fixture(scope="module")
def assistant(workspace):
    summary = stages.run_stage(job(workspace))
    return summary


def test_assistant_zero2_learns(workspace, assistant):
    store = workspace["store"]
    run = stage_runs(store, "train-assistant")[0]
    losses = history(store, run.info.run_id, "loss")
    assert len(losses) >= 10
    assert losses[-1] < 0.5 * losses[0], losses
    acc = history(store, run.info.run_id, "dev_accuracy")
    assert len(acc) == 8  # one dev evaluation per epoch
    assert assistant["best"] == max(acc)
    assert assistant["best"] > 0.5  # three classes: chance is 1/3
    # the last epoch's report (Ray Train's result) carries its mean training losses, unweighted
    # per stream, below the first logged steps' (the loop reports to Ray at checkpoints only)
    final = assistant["final"]
    assert {"train_loss", "train_ce_c", "train_ce_l"} <= set(final), final
    assert final["train_loss"] == pytest.approx(final["train_ce_c"] + final["train_ce_l"], rel=1e-6)
    assert final["train_loss"] < 0.5 * losses[0]
    # the exported model is HF format, registered, and predicts
    assert storage.exists(storage.join(assistant["model"], "config.json"))
    assert assistant["registered_model"] == "models:/sentiray-assistant/1"
    artifacts = {a.path for a in mlflow.MlflowClient(store).list_artifacts(run.info.run_id, "plots")}
    assert {"plots/loss.png", "plots/dev.png"} <= artifacts


def test_rerun_of_finished_training_is_skipped(workspace, assistant):
    again = stages.run_stage(job(workspace))
    assert again["skipped"] is True and again["best"] == assistant["best"]
    assert len(stage_runs(workspace["store"], "train-assistant")) == 1  # no second run started


def test_student_zero3_distills_from_assistant(workspace, assistant):
    summary = stages.run_stage(
        job(
            workspace,
            **{
                "mulcot.role": "student",
                "train.output": "ckpt/student",
                "model.path": workspace["student"],
                "train.zero_stage": 3,
                "distill.teacher_path": assistant["model"],
                "distill.lambda_kd": 0.3,
                "distill.tau": 2.0,
                "train.epochs": 8,
            },
        )
    )
    store = workspace["store"]
    run = stage_runs(store, "train-student")[0]
    kl = history(store, run.info.run_id, "kl_l")
    ce = history(store, run.info.run_id, "ce_c")
    assert kl and ce[-1] < 0.5 * ce[0]
    assert kl[-1] < kl[0]  # the student moves toward the assistant's distributions
    assert summary["best"] > 0.5, summary
    assert summary["registered_model"] == "models:/sentiray-student/1"


def test_worker_failure_resumes_from_last_checkpoint(workspace):
    out = "ckpt/fault"
    summary = stages.run_stage(
        job(
            workspace,
            **{
                "train.output": out,
                "train.epochs": 1,
                "train.max_steps": 8,
                "train.checkpoint_every": 3,
                "train.inject_fault_at_step": 5,
                "train.max_failures": 1,
                "tracking.run_name": "fault",
            },
        )
    )
    root = workspace["root"]
    assert storage.exists(str(root / out / "_fault_injected_at_step_5"))
    # the final report comes from the resumed attempt, which started at the step-3 checkpoint
    assert summary["final"]["resumed_from_step"] == 3
    assert summary["final"]["step"] == 8
    steps = history(workspace["store"], stage_runs(workspace["store"], "fault")[0].info.run_id, "lr")
    assert len(steps) >= 4


def test_training_with_storage_on_s3(workspace, s3_uri):
    summary = stages.run_stage(
        job(
            workspace,
            **{
                "train.output": f"{s3_uri}/assistant",
                "train.num_workers": 1,
                "train.epochs": 1,
                "train.max_steps": 4,
                "tracking.run_name": "s3",
            },
        )
    )
    assert summary["model"] == f"{s3_uri}/assistant/model"
    assert storage.exists(f"{s3_uri}/assistant/model/config.json")
    assert storage.read_json(f"{s3_uri}/assistant/_SUCCESS.json")["best_step"] == 4
    assert any(name.startswith("checkpoint") for name in storage.listdir(f"{s3_uri}/assistant/ray"))


def test_bad_training_config_fails_before_ray(workspace):
    with pytest.raises(config.ConfigError, match="needs a distill section"):
        stages.run_stage(job(workspace, **{"mulcot.role": "student", "train.output": "ckpt/x"}))
    with pytest.raises(config.ConfigError, match="unknown family"):
        stages.run_stage(job(workspace, **{"train.family": "nope", "train.output": "ckpt/y"}))
