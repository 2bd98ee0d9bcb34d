"""A family defined here, in the test, runs through training, evaluate and the MLflow pyfunc
without any change to the loop or the stages: the seam is the whole interface.

The toy family is a bag-of-words classifier on synthetic posts. It is also the instrument
for the shared loop's contract, because it can record what the loop did to it:

- every rank appends the ids it trained on to a file per epoch (every row of every epoch
  trains, also when the micro-batches do not divide by gradient accumulation);
- the model counts its micro-batches in a buffer, and its dev "peak" metric is highest at
  the end of epoch 2, so the exported best model must be epoch 2's, whatever mid-epoch
  checkpoints came later;
- each step logs the mean text length of its rows, which the test recomputes for every
  rank (the logged value is the mean over ranks, not rank 0's).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from typing import Any

import mlflow
import pandas as pd
import pytest
import torch

from sentiray import config, families, stages
from sentiray.data import schema, storage
from sentiray.data.prepare import run as prepare
from sentiray.families.base import Family, Predictor, Selection
from sentiray.train import loop

pytestmark = pytest.mark.slow

TOY = f"{__name__}:ToyFamily"
LABELS = schema.SENTIMENT_LABELS
TRAIN_ROWS, WORKERS, BATCH, ACCUM, EPOCHS = 160, 2, 8, 3, 3
MICRO_PER_EPOCH = math.ceil(math.ceil(TRAIN_ROWS / WORKERS) / BATCH)  # per rank: 10
STEPS_PER_EPOCH = math.ceil(MICRO_PER_EPOCH / ACCUM)  # 4: the last step of an epoch has one micro-batch
PEAK_AT = 2 * MICRO_PER_EPOCH  # the model's micro-batch count at the end of epoch 2


def words(text: str) -> list[str]:
    return text.lower().split()


class ToyNet(torch.nn.Module):
    def __init__(self, vocab: dict[str, int], dim: int = 16):
        super().__init__()
        self.vocab = vocab
        self.embed = torch.nn.EmbeddingBag(len(vocab) + 1, dim, mode="mean")
        self.out = torch.nn.Linear(dim, len(LABELS))
        self.register_buffer("micro_batches", torch.zeros((), dtype=torch.long))

    def ids(self, text: str) -> list[int]:
        return [self.vocab.get(w, len(self.vocab)) for w in words(text)] or [len(self.vocab)]

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(ids, offsets))


def encode(net: ToyNet, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    pieces = [net.ids(t) for t in texts]
    offsets = torch.tensor([0] + [len(p) for p in pieces[:-1]]).cumsum(0)
    return torch.tensor([i for p in pieces for i in p]), offsets


class ToyPredictor(Predictor):
    def __init__(self, manifest: dict[str, Any], net: ToyNet):
        super().__init__(manifest)
        self.net = net

    @classmethod
    def load(cls, folder: str, manifest: dict[str, Any], device: str | None = None) -> ToyPredictor:
        with open(os.path.join(folder, "vocab.json")) as f:
            net = ToyNet(json.load(f))
        net.load_state_dict(torch.load(os.path.join(folder, "toy.pt")))
        return cls(manifest, net.eval())

    @torch.no_grad()
    def predict(self, rows, options=None):
        was = self.net.training
        self.net.eval()
        probs = torch.softmax(self.net(*encode(self.net, [r["text"] for r in rows])), -1)
        self.net.train(was)
        return [{"label": LABELS[int(p.argmax())], "probs": dict(zip(LABELS, p.tolist()))} for p in probs]

    def metrics(self, rows, predictions):
        values = super().metrics(rows, predictions)  # accuracy, macro_f1, weighted_f1 via `sentiray score`
        values["peak"] = -abs(int(self.net.micro_batches) - PEAK_AT)
        return values


class ToyFamily(Family):
    name = "toy"
    tasks = ("msc",)
    predictor_class = ToyPredictor
    columns = ("id", "task", "text", "label")

    def build_model(self) -> torch.nn.Module:
        vocab: dict[str, int] = {}
        for row in schema.read_rows(self.data_uri(), "train", ["text"]):
            for w in words(row["text"]):
                vocab.setdefault(w, len(vocab))
        self.net = ToyNet(vocab)
        return self.net

    def transform(self, row):
        return {"id": row["id"], "text": row["text"], "y": LABELS.index(row["label"])}

    def collate(self, examples):
        return {
            "ids": [e["id"] for e in examples],
            "texts": [e["text"] for e in examples],
            "y": torch.tensor([e["y"] for e in examples]),
        }

    def loss(self, model, batch):
        import ray.train

        net = getattr(model, "module", model)
        net.micro_batches += 1
        logits = model(*encode(net, batch["texts"]))
        loss = torch.nn.functional.cross_entropy(logits, batch["y"])
        epoch = int(net.micro_batches - 1) // MICRO_PER_EPOCH  # (within one attempt, or after resume)
        seen = storage.join(self.job.train.output, f"_seen/rank{ray.train.get_context().get_world_rank()}.jsonl")
        with open(seen, "a") as f:
            f.write(json.dumps({"epoch": epoch, "ids": batch["ids"]}) + "\n")
        return loss, {"loss": float(loss.detach()), "text_len": sum(map(len, batch["texts"])) / len(batch["texts"])}

    def selection(self) -> Selection:
        return Selection((("dev_peak", "max"), ("dev_accuracy", "max")))

    def predictor(self, model):
        return ToyPredictor(self.manifest(), getattr(model, "module", model))

    def export(self, model, out_dir):
        net = getattr(model, "module", model)
        torch.save(net.state_dict(), os.path.join(out_dir, "toy.pt"))
        with open(os.path.join(out_dir, "vocab.json"), "w") as f:
            json.dump(net.vocab, f)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ws(tmp_path_factory, ray_cluster):
    root = tmp_path_factory.mktemp("toy")
    store = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", store)
        # dev: 21 rows, an odd number, so the ranks' shares differ (11 and 10)
        prepare(
            config.validate(
                {
                    "stage": "data",
                    "storage": {"root": str(root)},
                    "data": {
                        "format": "synthetic",
                        "task": "msc",
                        "size": 200,
                        "output": "data",
                        "split_ratios": [0.8, 0.105, 0.095],
                    },
                }
            )
        )
        yield {"root": root, "store": store}


def job(ws, **overrides) -> config.JobConfig:
    raw = {
        "stage": "train",
        "storage": {"root": str(ws["root"])},
        "tracking": {"experiment": "toy"},
        "data": {"format": "canonical", "input": "data"},
        "model": {"path": "unused-by-the-toy"},
        "train": {
            "family": TOY,
            "epochs": EPOCHS,
            "lr": 0.05,
            "batch_size": BATCH,
            "grad_accum": ACCUM,
            "num_workers": WORKERS,
            "zero_stage": 2,
            "log_every": 1,
            "scheduler": "linear",
            "grad_clip": None,
        },
    }
    return config.validate(config.apply_overrides(raw, [f"{k}={v}" for k, v in overrides.items()]))


def run_train(ws, name: str, **overrides) -> dict[str, Any]:
    cfg = job(ws, **{"train.output": f"ckpt/{name}", "tracking.run_name": name, **overrides})
    os.makedirs(ws["root"] / "ckpt" / name / "_seen", exist_ok=True)
    return stages.run_stage(cfg)


def history(ws, run_name: str, key: str) -> list[tuple[int, float]]:
    client = mlflow.MlflowClient(ws["store"])
    exp = client.get_experiment_by_name("toy")
    run = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")[0]
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


@pytest.fixture(scope="module")
def resumed(ws):
    """ZeRO-2 with uneven accumulation, a checkpoint every step keeping one, a fault at step 6."""
    return run_train(
        ws,
        "resumed",
        **{
            "train.checkpoint_every": 1,
            "train.keep_checkpoints": 1,
            "train.inject_fault_at_step": 6,
            "train.max_failures": 1,
        },
    )


# --------------------------------------------------------------------------- the loop's contract


def test_every_row_of_every_epoch_trains_and_the_schedule_has_the_real_length(ws, resumed):
    total = STEPS_PER_EPOCH * EPOCHS
    assert resumed["final"]["step"] == total
    assert resumed["final"]["resumed_from_step"] == 5  # the checkpoint before the fault
    # linear decay to zero over the real number of steps: the last logged rate is 0
    assert history(ws, "resumed", "lr")[-1] == (total, pytest.approx(0.0, abs=1e-12))
    train_ids = {r["id"] for r in schema.read_rows(str(ws["root"] / "data"), "train", ["id"])}
    seen: dict[int, Counter] = {}
    for rank in range(WORKERS):
        for line in (ws["root"] / "ckpt" / "resumed" / "_seen" / f"rank{rank}.jsonl").read_text().splitlines():
            entry = json.loads(line)
            seen.setdefault(entry["epoch"], Counter()).update(entry["ids"])
    assert sorted(seen) == list(range(EPOCHS))
    for epoch, ids in seen.items():
        assert set(ids) == train_ids, f"epoch {epoch} left out {len(train_ids - set(ids))} rows"


def test_the_best_epoch_is_exported_whatever_mid_epoch_checkpoints_follow(ws, resumed):
    assert resumed["best_epoch"] == 2 and resumed["best"] == 0
    predictor = families.load_predictor(resumed["model"])
    assert int(predictor.net.micro_batches) == PEAK_AT  # the weights are epoch 2's, not a later state
    manifest = families.read_manifest(resumed["model"])
    assert manifest["family"] == "toy" and manifest["family_class"] == TOY and manifest["epoch"] == 2


def test_a_streamed_run_resumes_at_the_right_row(ws, resumed):
    """The resumed run (streamed rows, fault at step 6, resumed from step 5) logs the same loss
    at every step as an uninterrupted run: it went on with the very micro-batches it had left."""
    run_train(ws, "uninterrupted")
    expected = dict(history(ws, "uninterrupted", "loss"))
    got = dict(history(ws, "resumed", "loss"))
    assert sorted(got) == sorted(expected) == list(range(1, STEPS_PER_EPOCH * EPOCHS + 1))
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=1e-4), step


def test_zero3_with_uneven_dev_shards_and_the_loss_is_the_mean_over_ranks(ws):
    # in memory: the rows of each rank come from loop.micro_batches, which the test recomputes
    summary = run_train(
        ws, "zero3", **{"train.zero_stage": 3, "train.eval_batch_size": 2, "train.epochs": 1, "train.stream": "false"}
    )
    assert summary["final"]["step"] == STEPS_PER_EPOCH  # finished: no rank waited on the other's gathers
    rows = schema.read_rows(str(ws["root"] / "data"), "train", ["text"])
    batches = [loop.micro_batches(len(rows), r, WORKERS, BATCH, 0, 0) for r in range(WORKERS)]
    logged = dict(history(ws, "zero3", "text_len"))
    for step in range(1, STEPS_PER_EPOCH + 1):
        micro = range((step - 1) * ACCUM, min(step * ACCUM, MICRO_PER_EPOCH))
        per_batch = [
            sum(len(rows[i]["text"]) for i in batches[r][m]) / len(batches[r][m]) for r in range(WORKERS) for m in micro
        ]
        assert logged[step] == pytest.approx(sum(per_batch) / len(per_batch))
        rank0 = per_batch[: len(micro)]
        assert logged[step] != pytest.approx(sum(rank0) / len(rank0))  # not rank 0's alone


# --------------------------------------------------------------------------- the same model everywhere


def test_evaluate_and_the_pyfunc_predict_through_the_family(ws, resumed):
    root = ws["root"]
    summary = stages.run_stage(
        config.validate(
            {
                "stage": "evaluate",
                "storage": {"root": str(root)},
                "tracking": {"experiment": "toy"},
                "data": {"format": "canonical", "input": "data"},
                "model": {"path": resumed["model"]},
                "evaluate": {"split": "test", "output": "report"},
            }
        )
    )
    assert summary["metrics"]["accuracy"] > 0.5  # three classes: chance is 1/3
    lines = [json.loads(x) for x in (root / "report" / "predictions.jsonl").read_text().splitlines()]
    test_rows = schema.read_rows(str(root / "data"), "test")
    assert [x["id"] for x in lines] == [r["id"] for r in test_rows]
    assert summary["metrics"]["accuracy"] == pytest.approx(sum(x["pred"] == x["label"] for x in lines) / len(lines))
    # the registered pyfunc answers with the same predictor
    model = mlflow.pyfunc.load_model(resumed["registered_model"])
    frame = model.predict(pd.DataFrame([{"text": r["text"]} for r in test_rows]))
    assert list(frame["label"]) == [x["pred"] for x in lines]
    assert resumed["registered_model"] == "models:/sentiray-toy/1"
