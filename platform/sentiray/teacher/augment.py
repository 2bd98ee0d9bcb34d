"""Stage ``augment``: the trained assistant writes its own chains; the correct ones join the
teacher's (MulCoT-RD, method.md section 1).

The assistant runs through the very same rationale pipeline as any teacher (hf backend on
Ray Data, exactly-once shards, rejects), label-free and sampled (``augment.temperature``,
0.7 in the paper), on the train split only. Its chains whose parsed label equals the gold
label are added as extra training rows (id ``<id>#assistant``, ``rationale_source``
``assistant``) beside the teacher's; dev and test are copied unchanged.
"""

from __future__ import annotations

from typing import Any

from sentiray import config as config_mod
from sentiray import tracking
from sentiray.config import AugmentConfig, JobConfig
from sentiray.data import schema
from sentiray.teacher import pipeline


def chains_uri(output: str) -> str:
    """Where the assistant's raw chains go: beside the output, resumable on their own."""
    return output.rstrip("/") + "-assistant-chains"


def _generation_job(cfg: JobConfig, aug: AugmentConfig, teacher_data: str, output: str) -> JobConfig:
    raw = {
        "stage": "rationales",
        "name": f"{cfg.name or 'augment'}-generate",
        "storage": cfg.storage.model_dump(mode="json"),
        "ray": cfg.ray.model_dump(mode="json"),
        "tracking": {**cfg.tracking.model_dump(mode="json"), "run_name": "augment-generate"},
        "data": {"format": "canonical", "input": teacher_data, "output": chains_uri(output)},
        "teacher": {
            "backend": "hf",
            "name": "assistant",
            "model": cfg.model.model_dump(mode="json"),
            "temperature": aug.temperature,
            "seed": aug.seed,
            "max_new_tokens": aug.max_new_tokens,
            "batch_size": aug.batch_size,
            "concurrency": aug.concurrency,
            "num_cpus": aug.num_cpus,
            "num_gpus": aug.num_gpus,
            "shard_rows": aug.shard_rows,
            "splits": ["train"],
            "rationalize_splits": [],
            "lrsa_rationales": False,
        },
    }
    return config_mod.validate(raw, source="augment (generation)")


def merge(teacher_rows: list[dict[str, Any]], assistant_rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Teacher rows plus a copy of each row whose assistant chain got the label right."""
    merged = [{**r, "rationale_source": "teacher"} for r in teacher_rows]
    added = 0
    for row in sorted(assistant_rows, key=lambda r: r["id"]):
        if row.get("teacher_correct") and row.get("rationale"):
            merged.append({**row, "id": f"{row['id']}#assistant", "rationale_source": "assistant"})
            added += 1
    return merged, added


def run(cfg: JobConfig) -> dict[str, Any]:
    aug = cfg.augment or AugmentConfig()
    if not cfg.data.input:
        raise config_mod.ConfigError("augment: set data.input to the teacher's rationale data set")
    teacher_data = cfg.resolve(cfg.data.input)
    output = cfg.resolve(cfg.data.output)
    manifest = schema.read_manifest(teacher_data)  # fails clearly when the input is not complete
    if schema.is_complete(output) and not cfg.data.overwrite:
        done = schema.read_manifest(output)
        print(f"augment: {output} is complete ({done['counts']}); skipped")
        return {"output": output, "skipped": True, "manifest": done}
    with tracking.stage_run(cfg, "augment"):
        generated = pipeline.run(_generation_job(cfg, aug, teacher_data, output))
        assistant_rows = schema.read_rows(generated["output"], "train")
        splits = {
            split: schema.read_rows(teacher_data, split) for split in schema.SPLITS if split in manifest["counts"]
        }
        splits["train"], added = merge(splits.get("train", []), assistant_rows)
        for split in ("dev", "test"):
            if split in splits:
                splits[split] = [{**r, "rationale_source": "teacher"} for r in splits[split]]
        judged = [r for r in assistant_rows if r.get("teacher_correct") is not None]
        accuracy = sum(bool(r["teacher_correct"]) for r in judged) / len(judged) if judged else 0.0
        prepared = schema.PreparedDataset(
            source=manifest["source"],
            task=manifest["task"],
            splits=splits,
            notes={
                "stage": "augment",
                "teacher_data": teacher_data,
                "assistant_chains": generated["output"],
                "assistant_rows_added": added,
                "assistant_train_accuracy": accuracy,
                "temperature": aug.temperature,
            },
        )
        written = schema.write_dataset(prepared, output)
        tracking.log_metrics(
            {
                "assistant_train_accuracy": accuracy,
                "assistant_rows_added": added,
                "train_rows": written["counts"].get("train", 0),
            }
        )
        tracking.log_json(written, "augment/manifest.json")
    print(
        f"augment: assistant chains correct on {accuracy:.1%} of train; added {added} rows; wrote {output}: "
        f"{written['counts']}"
    )
    return {"output": output, "skipped": False, "manifest": written, "added": added, "assistant_accuracy": accuracy}
