"""Stage ``data``: read a public data set (or generate a synthetic one) and write the
canonical Parquet data set (train/dev/test shards, rejects, manifest)."""

from __future__ import annotations

import json
from typing import Any

from sentiray import tracking
from sentiray.config import JobConfig
from sentiray.data import schema, storage


def build(cfg: JobConfig) -> schema.PreparedDataset:
    """The prepared (in-memory) data set that ``cfg.data`` describes."""
    data = cfg.data
    if data.format == "synthetic":
        from sentiray.data import synthetic

        return synthetic.generate(
            data.task or "msc", data.size, seed=data.seed, image_size=data.image_size, split_ratios=data.split_ratios
        )
    if data.format == "canonical":
        raise schema.DataError("format 'canonical' is already prepared: point the next stage at it directly")
    from sentiray.data.readers import read_dataset

    return read_dataset(data)


def run(cfg: JobConfig) -> dict[str, Any]:
    """Prepare the data set; a complete output is kept as is unless ``data.overwrite``."""
    output = cfg.resolve(cfg.data.output)
    if schema.is_complete(output) and not cfg.data.overwrite:
        manifest = schema.read_manifest(output)
        print(f"data: {output} is complete ({manifest['counts']}); skipped (set data.overwrite=true to redo)")
        return {"output": output, "skipped": True, "manifest": manifest}
    if cfg.data.input and not storage.exists(cfg.data.input):
        raise schema.DataError(f"data.input {cfg.data.input} does not exist")
    with tracking.stage_run(cfg, "data"):
        prepared = build(cfg)
        manifest = schema.write_dataset(prepared, output, shard_rows=cfg.data.shard_rows)
        stats = schema.dataset_stats(output)
        if cfg.tracking.enabled:
            tracking.log_metrics(
                {f"rows_{split}": n for split, n in manifest["counts"].items()} | {"rejects": manifest["rejects"]}
            )
            tracking.log_json(manifest, "data/manifest.json")
            tracking.log_json(stats, "data/stats.json")
    print(f"data: wrote {output}: {manifest['counts']}, {manifest['rejects']} rejects")
    if manifest["rejects"]:
        print(f"data: reject reasons {json.dumps(manifest['reject_reasons'])} (see {output}/rejects)")
    return {"output": output, "skipped": False, "manifest": manifest, "stats": stats}
