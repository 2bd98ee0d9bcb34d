"""The ablation table from finished sweeps (mean and std over seeds), and LRSA's sweep files."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from sentiray import config
from sentiray.sweep import ablation, space
from sentiray.sweep.driver import SUCCESS

REPO = Path(__file__).resolve().parents[2]


def test_variants_group_seeds_with_mean_and_sample_std():
    assert ablation.variant_of({"lrsa.rationales": "none", "train.seed": 2}) == "rationales=none"
    assert ablation.variant_of({"train.seed": 0}) == "base"
    rows = [{"variant": "full", "seed": s, "f1": v} for s, v in enumerate((0.70, 0.74, 0.78))]
    rows += [{"variant": "none", "seed": 0, "f1": 0.40}]
    table = ablation.aggregate(rows, ["f1"])
    assert [r["variant"] for r in table] == ["full", "none"]
    assert table[0]["n"] == 3 and table[0]["f1_mean"] == pytest.approx(0.74)
    assert table[0]["f1_std"] == pytest.approx(statistics.stdev([0.70, 0.74, 0.78]))  # sample std: 0.04
    assert table[1]["f1_std"] == 0.0  # one seed
    text = ablation.markdown(table, ["f1"])
    assert "| full | 3 | 74.00 ± 4.00 |" in text and "| none | 1 | 40.00 ± 0.00 |" in text


def test_rows_from_a_finished_sweep_summary(tmp_path):
    trials = [
        {
            "trial": f"t{i}",
            "status": status,
            "best": best,
            "output": str(tmp_path / f"t{i}"),
            "hp": {"lrsa.rationales": rat, "train.seed": seed},
        }
        for i, (status, best, rat, seed) in enumerate(
            [
                ("completed", 0.8, "both", 0),
                ("completed", 0.6, "both", 1),
                ("completed", 0.3, "none", 0),
                ("error", None, "none", 1),
            ]
        )
    ]
    (tmp_path / SUCCESS).write_text(json.dumps({"metric": "dev_jmasa_f1", "table": trials, "mlflow_run_id": None}))
    rows, run_id = ablation.sweep_rows(str(tmp_path))
    assert run_id is None and len(rows) == 3  # the failed trial is left out
    table = ablation.aggregate(rows, ["dev_jmasa_f1"])
    assert {r["variant"]: (r["n"], round(r["dev_jmasa_f1_mean"], 6)) for r in table} == {
        "rationales=both": (2, 0.7),
        "rationales=none": (1, 0.3),
    }


@pytest.mark.parametrize("name", ["lrsa.yaml", "lrsa_ablation.yaml"])
def test_lrsa_sweeps_vary_real_fields(name):
    raw = config.load_raw(REPO / "tune" / name)
    cfg = config.validate(raw)
    assert cfg.train.family == "lrsa"
    space.check_fields(cfg.tune.search_space, cfg.model_dump(mode="json"))  # each value trains as a job
