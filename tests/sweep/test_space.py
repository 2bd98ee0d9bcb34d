"""Search spaces and sweep planning: everything that must fail (or hold) before Ray starts."""

from pathlib import Path

import pytest

from sentiray import config
from sentiray.config import ConfigError
from sentiray.sweep import driver, space

ROOT = Path(__file__).resolve().parents[2]


def sweep_raw(**tune) -> dict:
    return {
        "stage": "tune",
        "storage": {"root": "/nonexistent/sweep-root"},
        "data": {"format": "canonical", "input": "data/msc"},
        "model": {"path": "models/vlm"},
        "train": {"epochs": 3, "num_workers": 1},
        "tune": {"search_space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}, **tune},
    }


def with_space(search_space: dict, **tune) -> dict:
    return sweep_raw(search_space=search_space, **tune)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"train.lr": {"choice": []}}, r"'train.lr': choice needs at least one value, got an empty list"),
        ({"train.lr": {"grid": []}}, r"'train.lr': grid needs at least one value"),
        ({"train.lr": {"loguniform": [1e-2, 1e-4]}}, r"'train.lr': loguniform low \(0.01\) > high \(0.0001\)"),
        ({"mulcot.w_chain": {"uniform": [2, 1]}}, r"'mulcot.w_chain': uniform low \(2\) > high \(1\)"),
        ({"model.lora.r": {"randint": [32, 4]}}, r"'model.lora.r': randint low \(32\) > high \(4\)"),
        ({"model.lora.r": {"randint": [4.5, 8]}}, r"randint takes integers"),
        ({"train.lr": {"loguniform": [0, 1e-2]}}, r"loguniform needs 0 < low"),
        ({"train.lr": {"uniform": [1e-3]}}, r"uniform takes \[low, high\]"),
        ({"train.lr": {"normal": [0, 1]}}, r"unknown distribution 'normal'"),
        ({"train.lr": 0.001}, r"'train.lr': must be one of"),
        ({"train.lr": {"choice": [1], "grid": [2]}}, r"'train.lr': must be one of"),
        ({}, r"tune.search_space: Dictionary should have at least 1 item"),
    ],
)
def test_malformed_space_fails_when_the_config_is_read(entry, message):
    with pytest.raises(ConfigError, match=message) as err:
        config.validate(with_space(entry), source="tune/x.yaml")
    assert "invalid config tune/x.yaml" in str(err.value) and "tune.search_space" in str(err.value)


def test_searcher_must_fit_the_space():
    with pytest.raises(ConfigError, match=r"searcher 'grid' needs finite values .*\['train.lr'\]"):
        config.validate(sweep_raw(searcher="grid"))
    with pytest.raises(ConfigError, match=r"searcher 'optuna' .* use choice for \['distill.tau'\]"):
        config.validate(with_space({"distill.tau": {"grid": [1.0, 2.0]}}, searcher="optuna"))
    with pytest.raises(ConfigError, match=r"grace_period \(3\) > max_t \(2\)"):
        config.validate(sweep_raw(grace_period=3, max_t=2))
    # a grid of choices is fine for the grid searcher, which passes over it once by default
    grid = config.validate(
        with_space({"train.lr": {"choice": [1e-3, 1e-2]}, "distill.tau": {"grid": [1.0]}}, searcher="grid")
    )
    assert grid.tune.num_samples == 1
    assert config.validate(sweep_raw()).tune.num_samples == 4


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"train.lrr": {"choice": [1e-3]}}, r"train.lrr: unknown key \(not a field of this section\)"),
        ({"model.lora.rank": {"randint": [4, 32]}}, r"model.lora.rank: unknown key"),
        ({"train.scheduler": {"choice": ["cosine", "bogus"]}}, r"train.scheduler: Input should be"),
        ({"model.lora.r": {"randint": [0, 8]}}, r"model.lora.r: Input should be greater than 0 \(got 0\)"),
        (
            {"train.warmup_ratio": {"uniform": [0.5, 1.5]}},
            r"train.warmup_ratio: Input should be less than 1 \(got 1.5\)",
        ),
        # distill fields need the distill section (its teacher) in the base job
        ({"distill.lambda_kd": {"choice": [0.1, 0.3]}}, r"distill.teacher_path: Field required"),
        ({"train.output": {"choice": ["a"]}}, r"'train.output' cannot be tuned"),
        ({"train.epochs": {"choice": [1, 2]}}, r"'train.epochs' cannot be tuned: .*tune.max_t"),
        ({"tune.num_samples": {"choice": [1]}}, r"'tune.num_samples' is not a training hyperparameter"),
    ],
)
def test_every_key_must_be_a_config_field_that_accepts_every_value(entry, message):
    cfg = config.validate(with_space(entry))  # well formed: only the base job can tell
    with pytest.raises(ConfigError, match=message):
        space.check_fields(cfg.tune.search_space, cfg.model_dump(mode="json"))
    # the stage itself refuses before doing anything (no data, no Ray, no output folder)
    with pytest.raises(ConfigError, match=message):
        driver.run(cfg)
    assert not Path("/nonexistent/sweep-root").exists()


def test_metric_must_be_reported_at_epoch_ends():
    with pytest.raises(ConfigError, match=r"tune.metric 'accuracy' is not reported at epoch ends"):
        driver.run(config.validate(sweep_raw(metric="accuracy")))


def test_valid_fields_pass_across_sections():
    raw = with_space(
        {
            "train.lr": {"loguniform": [1e-4, 1e-2]},
            "mulcot.w_chain": {"uniform": [0.5, 1.5]},
            "model.lora.r": {"randint": [4, 32]},
            "model.lora.dropout": {"choice": [0.05, 0.2]},
            "model.lora.target_modules": {"choice": [["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"]]},
            "distill.lambda_kd": {"choice": [0.1, 0.3, 0.5]},
            "distill.tau": {"grid": [1.0, 2.0]},
        }
    )
    raw["distill"] = {"teacher_path": "ckpt/assistant/model"}
    cfg = config.validate(raw)
    space.check_fields(cfg.tune.search_space, cfg.model_dump(mode="json"))


def test_domains_and_overrides():
    from ray.tune.search.sample import Categorical, Float, Integer

    tune_space = space.to_tune(
        {
            "train.lr": {"loguniform": [1e-4, 1e-2]},
            "model.lora.r": {"randint": [4, 6]},
            "distill.tau": {"grid": [1.0, 2.0]},
            "train.scheduler": {"choice": ["cosine", "plateau"]},
        },
        searcher="random",
    )
    assert isinstance(tune_space["train.lr"], Float)
    assert tune_space["distill.tau"] == {"grid_search": [1.0, 2.0]}
    assert isinstance(tune_space["train.scheduler"], Categorical)
    r = tune_space["model.lora.r"]
    assert isinstance(r, Integer)
    assert set(r.sample(size=300, random_state=0)) == {4, 5, 6}  # both ends included
    lrs = tune_space["train.lr"].sample(size=300, random_state=0)
    assert 1e-4 <= min(lrs) and max(lrs) <= 1e-2
    # with the grid searcher a choice is enumerated too
    assert space.to_tune({"train.scheduler": {"choice": ["cosine", "plateau"]}}, "grid")["train.scheduler"] == {
        "grid_search": ["cosine", "plateau"]
    }
    # sampled values become overrides that apply_overrides reads back exactly
    import numpy as np

    overrides = space.overrides(
        {
            "train.lr": np.float64(0.0012345678901234),
            "model.lora.r": np.int64(8),
            "model.lora.target_modules": ["q_proj", "v_proj"],
        }
    )
    applied = config.apply_overrides({}, overrides)
    assert applied == {
        "train": {"lr": 0.0012345678901234},
        "model": {"lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]}},
    }


def test_concurrency_follows_cluster_and_trial_needs():
    cfg = config.validate(sweep_raw())
    # the trial's driver (0.5) + Train's trainer bundle (1) + 1 Train worker + the streamed input:
    # a 0.25-CPU transform actor and a read task
    assert driver.trial_resources(cfg) == {"CPU": 3.0}
    assert driver.max_concurrent(cfg, {"CPU": 4.0}) == 1
    assert driver.max_concurrent(cfg, {"CPU": 6.0}) == 2
    in_memory = config.validate(config.apply_overrides(sweep_raw(), ["train.stream=false"]))
    assert driver.trial_resources(in_memory) == {"CPU": 2.5}
    wide = config.validate(
        config.apply_overrides(
            sweep_raw(),
            ["train.num_workers=2", "train.cpus_per_worker=1.5", "tune.trial_cpus=1", "train.data_workers=2"],
        )
    )
    assert driver.trial_resources(wide) == {"CPU": 5.75}
    assert driver.max_concurrent(wide, {"CPU": 11.5}) == 2
    gpu = config.validate(config.apply_overrides(sweep_raw(), ["train.use_gpu=true", "train.num_workers=2"]))
    assert driver.max_concurrent(gpu, {"CPU": 64.0, "GPU": 4.0}) == 2  # GPUs bound it
    explicit = config.validate(sweep_raw(max_concurrent_trials=3))
    assert driver.max_concurrent(explicit, {"CPU": 4.0}) == 3
    with pytest.raises(ConfigError, match=r"one trial needs \{'CPU': 3.0\} .* the cluster has \{'CPU': 1.0\}"):
        driver.max_concurrent(cfg, {"CPU": 1.0})


def test_trial_job_applies_values_and_isolates_output():
    cfg = config.validate(sweep_raw())
    job = driver.trial_job(
        cfg.model_dump(mode="json"),
        {"train.lr": 0.002, "mulcot.w_chain": 0.7},
        "abc_00001",
        {"output": "/sweeps/s1", "max_t": 4, "mlflow": {"tracking_uri": "sqlite:////x.db", "run_id": "P"}},
    )
    assert job.stage == "train" and job.tune is None
    assert (job.train.lr, job.mulcot.w_chain, job.train.epochs) == (0.002, 0.7, 4)
    assert job.train.output == "/sweeps/s1/trials/abc_00001"
    assert job.tracking.parent_run_id == "P" and job.tracking.tags[driver.TRIAL_TAG] == "abc_00001"


def test_table_is_sorted_by_metric():
    rows = [
        {
            "trial": "a",
            "status": "early_stopped",
            "epochs": 1,
            "best": 0.3,
            "best_epoch": 1,
            "final": 0.3,
            "hp": {"train.lr": 0.01},
        },
        {
            "trial": "b",
            "status": "completed",
            "epochs": 3,
            "best": 0.7,
            "best_epoch": 3,
            "final": 0.7,
            "hp": {"train.lr": 0.001},
        },
    ]
    rows.sort(key=lambda r: -r["best"])
    table = driver.format_table(rows, "dev_accuracy", ["train.lr"]).splitlines()
    assert table[0].split() == ["trial", "status", "epochs", "best", "dev_accuracy", "at", "epoch", "final", "train.lr"]
    assert table[2].split()[:4] == ["b", "completed", "3", "0.7000"]
    assert table[3].split()[:2] == ["a", "early_stopped"]


@pytest.mark.parametrize("name", ["distill.yaml", "demo.yaml"])
def test_shipped_sweeps_are_valid(name):
    cfg = config.load(ROOT / "tune" / name)
    assert cfg.stage == "tune"
    space.check_fields(cfg.tune.search_space, cfg.model_dump(mode="json"))
