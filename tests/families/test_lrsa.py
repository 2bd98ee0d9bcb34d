"""The LRSA family end to end on Ray Train + DeepSpeed with tiny models: JMASA (mabsa) and MASC
(masc) well above their trivial baselines, the test score of the best dev epoch, the report
and its rescoring, MLflow (plots, registered pyfunc), and config errors before Ray starts.

The rationales are the ones a perfect teacher writes (:func:`sentiray.data.synthetic.
aspect_rationales`); tests/teacher/test_demo_teacher_lrsa.py checks the demo teacher's own.
One model per task is trained for the module and shared by its tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import mlflow
import pandas as pd
import pytest

from sentiray import config, families, stages
from sentiray.data import schema, storage, synthetic
from sentiray.models.tiny import build_tiny_vision
from sentiray.train import loop

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_models, ray_cluster):
    root = tmp_path_factory.mktemp("lrsa")
    store = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", store)
        for task, size in (("mabsa", 420), ("masc", 420)):
            data = synthetic.generate(task, size, seed=0)
            for rows in data.splits.values():
                for row in rows:
                    row.update(synthetic.aspect_rationales(row))
            schema.write_dataset(data, str(root / "data" / task))
        plain = synthetic.generate("mabsa", 40, seed=1)  # no rationale columns
        schema.write_dataset(plain, str(root / "data" / "plain"))
        vision = build_tiny_vision(str(root / "vision"))
        yield {"root": root, "store": store, "encoder": tiny_models["encoder"], "vision": vision}


def job(ws, task="mabsa", stage="train", **overrides) -> config.JobConfig:
    raw = {
        "stage": stage,
        "storage": {"root": str(ws["root"])},
        "tracking": {"experiment": "lrsa-tests"},
        "data": {"format": "canonical", "input": f"data/{task}"},
        "model": {"path": ws["encoder"], "kind": "encoder"},
        "lrsa": {"vision_model": ws["vision"], "rationale_dropout": 0.3},
        "train": {
            "family": "lrsa",
            "output": f"ckpt/{task}",
            "epochs": 4,
            "lr": 3e-3,
            "batch_size": 8,
            "eval_batch_size": 32,
            "param_groups": {"encoders": {"lr": 1.5e-3}},
            "scheduler": "linear",
            "num_workers": 2,
            "zero_stage": 2,
            "log_every": 4,
            "keep_checkpoints": 1,
        },
    }
    if stage == "evaluate":
        raw.pop("train")
        raw["evaluate"] = {"split": "test", "output": f"reports/{task}"}
    return config.validate(config.apply_overrides(raw, [f"{k}={v}" for k, v in overrides.items()]))


def history(store, run_id, key):
    return [m.value for m in sorted(mlflow.MlflowClient(store).get_metric_history(run_id, key), key=lambda m: m.step)]


def run_named(store, name):
    client = mlflow.MlflowClient(store)
    exp = client.get_experiment_by_name("lrsa-tests")
    return client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{name}'")[0]


@pytest.fixture(scope="module")
def mabsa(ws):
    summary = stages.run_stage(job(ws, "mabsa"))
    report = stages.run_stage(
        job(ws, "mabsa", stage="evaluate", **{"model.path": summary["model"], "tracking.run_name": "evaluate-mabsa"})
    )
    return summary, report


@pytest.fixture(scope="module")
def masc(ws):
    # ZeRO-3 on one worker, rows in memory (the mabsa run streams them through Ray Data)
    summary = stages.run_stage(
        job(
            ws,
            "masc",
            **{
                "train.num_workers": 1,
                "train.zero_stage": 3,
                "train.stream": False,
                "lrsa.fusion": "gate",
                "train.epochs": 3,
            },
        )
    )
    report = stages.run_stage(
        job(ws, "masc", stage="evaluate", **{"model.path": summary["model"], "tracking.run_name": "evaluate-masc"})
    )
    return summary, report


def test_jmasa_learns_far_above_the_no_aspect_baseline(ws, mabsa):
    summary, report = mabsa
    run = run_named(ws["store"], "train-lrsa")
    losses = history(ws["store"], run.info.run_id, "loss")
    assert losses[-1] < 0.5 * losses[0], losses
    f1 = history(ws["store"], run.info.run_id, "dev_jmasa_f1")
    assert len(f1) == 4 and summary["metric"] == "dev_jmasa_f1" and summary["best"] == max(f1)
    m = report["metrics"]
    # predicting no aspect scores 0 on every span metric; tagging every name POS scores ~1/3 F1
    assert m["jmasa_f1"] > 0.6 and m["mate_f1"] > 0.8 and m["masc_acc"] > 0.7, m
    # the test score is the best dev epoch's model: its manifest says which epoch it is
    manifest = families.read_manifest(summary["model"])
    assert manifest["epoch"] == summary["best_epoch"] and manifest["family"] == "lrsa"
    # trained with rationale dropout, it still answers without rationales, above the baseline
    assert m["norat_jmasa_f1"] > 0.2 and m["norat_mate_f1"] > 0.6, m
    print(f"mabsa: test {m}")


def test_report_rescores_to_the_same_numbers_and_lands_in_mlflow(ws, mabsa):
    summary, report = mabsa
    out = str(ws["root"] / "reports" / "mabsa")
    lines = [json.loads(x) for x in storage.read_text(f"{out}/predictions.jsonl").splitlines()]
    assert len(lines) == len(schema.read_rows(str(ws["root"] / "data" / "mabsa"), "test"))
    assert all(isinstance(x["pred"], list) and isinstance(x["gold"], list) for x in lines)
    printed = subprocess.run(
        [sys.executable, "-m", "sentiray.cli", "score", "--task", "mabsa", f"{out}/predictions.jsonl", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rescored = json.loads(printed.strip().splitlines()[-1])
    for key in ("jmasa_p", "jmasa_r", "jmasa_f1", "mate_p", "mate_r", "mate_f1", "masc_acc", "masc_f1"):
        assert rescored[key] == pytest.approx(report["metrics"][key], abs=1e-12)
    client = mlflow.MlflowClient(ws["store"])
    run = run_named(ws["store"], "evaluate-mabsa")
    assert {"plots/spans.png", "plots/confusion.png"} <= {
        a.path for a in client.list_artifacts(run.info.run_id, "plots")
    }
    assert run.data.metrics["jmasa_f1"] == pytest.approx(report["metrics"]["jmasa_f1"])
    assert "JMASA F1" in storage.read_text(f"{out}/report.md")
    # registered as a pyfunc of its family: a DataFrame in, spans out
    assert summary["registered_model"] == "models:/sentiray-lrsa/1"
    model = mlflow.pyfunc.load_model(summary["registered_model"])
    rows = schema.read_rows(str(ws["root"] / "data" / "mabsa"), "test")[:4]
    frame = pd.DataFrame(
        [
            {
                "text": r["text"],
                "words": r["words"],
                "text_explanation": r["text_explanation"],
                "image_description": r["image_description"],
            }
            for r in rows
        ]
    )
    out_frame = model.predict(frame)
    direct = families.load_predictor(summary["model"]).predict(frame.to_dict(orient="records"))
    assert len(out_frame) == 4 and list(out_frame["spans"]) == [p["spans"] for p in direct]
    assert sum(len(p["spans"]) for p in direct) > 0


def test_masc_learns_well_above_the_majority_and_reads_the_picture(ws, masc):
    summary, report = masc
    rows = schema.read_rows(str(ws["root"] / "data" / "masc"), "test")
    majority = Counter(r["label"] for r in rows).most_common(1)[0][1] / len(rows)
    m = report["metrics"]
    assert summary["metric"] == "dev_accuracy"
    assert m["accuracy"] > majority + 0.2 and m["masc_acc"] == pytest.approx(m["accuracy"], abs=1e-9), (m, majority)
    # aspects whose polarity only the picture gives (text-only models are at 1/3 there), on dev + test
    held_out = rows + schema.read_rows(str(ws["root"] / "data" / "masc"), "dev")
    implicit = [r for r in held_out if json.loads(r["meta"])["aspects"][json.loads(r["meta"])["target"]]["implicit"]]
    assert len(implicit) >= 15
    predictor = families.load_predictor(summary["model"])
    preds = predictor.predict(implicit)
    right = sum(p["label"] == r["label"] for p, r in zip(preds, implicit)) / len(implicit)
    bare = predictor.predict(implicit, {"rationales": False})
    print(
        f"masc: test {m}, majority {majority:.3f}; image-decided aspects: {right:.3f} with rationales, "
        f"{sum(p['label'] == r['label'] for p, r in zip(bare, implicit)) / len(implicit):.3f} without"
    )
    assert right > 0.6, right


def test_parameter_groups_give_the_encoders_their_own_rate(ws):
    cfg = job(ws, "masc", **{"train.param_groups.encoders.lr": 1e-4, "train.lr": 2e-3})
    family = families.create(cfg)
    model = family.build_model()
    groups = {g["name"]: g for g in loop.optimizer_groups(family, model, cfg.train)}
    assert set(groups) == {"encoders", "new"}
    assert groups["encoders"]["lr"] == 1e-4 and groups["new"]["lr"] == 2e-3
    encoder_ids = {id(p) for p in model.text_encoder.parameters()} | {id(p) for p in model.vision.parameters()}
    assert {id(p) for p in groups["encoders"]["params"]} <= encoder_ids
    assert not {id(p) for p in groups["new"]["params"]} & encoder_ids
    # LoRA on the encoder: only its adapters train there, the new layers as before
    lora = families.create(
        job(ws, "masc", **{"model.lora.enabled": True, "model.lora.target_modules": "[query,value]"})
    )
    lmodel = lora.build_model()
    trainable = [n for n, p in lmodel.text_encoder.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert lora.param_groups(lmodel)["new"] and all(p.requires_grad for p in lora.param_groups(lmodel)["encoders"])


@pytest.mark.parametrize(
    "overrides,expected",
    [
        ({"data.input": "data/plain"}, "lrsa.text_rationale_column: "),
        ({"data.input": "data/plain", "lrsa.rationales": "image"}, "lrsa.image_rationale_column: "),
        ({"model.kind": "vlm"}, "model.kind: the lrsa family"),
        ({"lrsa.vision_model": "/nowhere"}, "lrsa.vision_model: no model at /nowhere"),
        ({"lrsa.vision_model": "null"}, "lrsa.vision_model: required"),
        ({"train.param_groups.backbone.lr": 1e-4}, "train.param_groups: the lrsa family has the groups"),
        ({"model.lora.enabled": True}, "model.lora.target_modules: none of"),
        ({"lrsa.image": "regions"}, "lrsa.region_column: "),
        ({"data.input": "data/masc", "lrsa.cross_heads": 5}, "lrsa.cross_heads"),
    ],
)
def test_bad_config_fails_before_ray_naming_the_field(ws, overrides, expected):
    with pytest.raises(config.ConfigError, match=expected.replace(".", r"\.")):
        stages.run_stage(job(ws, **{"train.output": "ckpt/never", "tracking.enabled": False, **overrides}))
    assert not storage.exists(str(ws["root"] / "ckpt" / "never"))  # no Ray Train run began
