"""Config: YAML + overrides, validation errors that name the field."""

import pytest

from sentiray import config
from sentiray.config import ConfigError


def write(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_load_with_overrides(tmp_path):
    path = write(tmp_path, "stage: data\ndata:\n  format: synthetic\n  size: 10\n")
    cfg = config.load(
        path, ["data.size=42", "data.task=msa", "tracking.experiment=x", "data.split_ratios=[0.5,0.25,0.25]"]
    )
    assert cfg.data.size == 42
    assert cfg.data.task == "msa"
    assert cfg.tracking.experiment == "x"
    assert cfg.data.split_ratios == (0.5, 0.25, 0.25)
    # defaults filled in
    assert cfg.storage.root == "runs"
    assert cfg.resolve("data/x") == "runs/data/x"
    assert cfg.resolve("s3://b/k") == "s3://b/k"


def test_repo_job_files_validate(monkeypatch):
    from pathlib import Path

    from sentiray import pipeline

    repo = Path(__file__).parents[1]
    monkeypatch.chdir(repo)  # a pipeline names its job YAMLs relative to the project root
    paths = sorted(repo.joinpath("jobs").glob("*.yaml"))
    assert len(paths) >= 8
    for path in paths:
        if "stages" in config.load_raw(path):
            _, steps = pipeline.load(path)  # every stage of it, inputs wired
            chains = {
                "pipeline_lrsa.yaml": ["data", "rationales", "train", "evaluate"],
                "pipeline_mse.yaml": ["data", "train", "evaluate"],
            }
            expected = chains.get(path.name, ["data", "rationales", "train", "augment", "train", "evaluate"])
            assert [s.cfg.stage for s in steps] == expected
        else:
            config.load(path)


@pytest.mark.parametrize(
    "text, overrides, expected",
    [
        ("stage: data\ndata: {format: synthetic, sizee: 3}\n", [], "data.sizee: unknown key"),
        ("stage: data\ndata: {format: synthetic}\n", ["data.size=-1"], "data.size: Input should be greater than 0"),
        ("stage: data\ndata: {format: synthetic}\n", ["data.size=abc"], "data.size: Input should be a valid integer"),
        ("stage: data\ndata: {format: nope}\n", [], "data.format: Input should be"),
        ("stage: data\ndata: {format: twitter2015}\n", [], "set data.input"),
        ("stage: train\ndata: {format: synthetic}\n", [], "needs the section(s) ['model', 'train']"),
        ("stage: fly\n", [], "stage: Input should be"),
        (
            "stage: train\ndata: {format: canonical, input: d}\nmodel: {path: m}\ntrain: {}\n",
            ["train.cache_mb=-1"],
            "train.cache_mb: Input should be greater than or equal to 0",
        ),
        ("stage: data\ndata: {format: synthetic, split_ratios: [0.5, 0.5, 0.5]}\n", [], "data.split_ratios"),
        ("stage: data\nbogus: 1\ndata: {format: synthetic}\n", [], "bogus: unknown key"),
        ("stage: data\ndata: {format: synthetic}\n", ["data.format.x=1"], "data.format is not a section"),
        ("stage: data\ndata: {format: synthetic}\n", ["nonsense"], "not of the form key.sub=value"),
        (
            "stage: serve\nserve: {model: m, min_replicas: 3, max_replicas: 1}\n",
            [],
            "min_replicas (3) > max_replicas (1)",
        ),
        ("stage: rationales\ndata: {format: synthetic}\nteacher: {backend: openai}\n", [], "needs teacher.endpoint"),
        ("- a\n- b\n", [], "top level must be a mapping"),
        ("stage: [unclosed\n", [], "not valid YAML"),
    ],
)
def test_bad_config_names_field(tmp_path, text, overrides, expected):
    with pytest.raises(ConfigError) as err:
        config.load(write(tmp_path, text), overrides)
    assert expected in str(err.value), str(err.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        config.load("/nonexistent/job.yaml")


def test_flatten_and_roundtrip(tmp_path):
    cfg = config.load(write(tmp_path, "stage: data\ndata: {format: synthetic}\n"))
    flat = config.flatten(cfg.model_dump(mode="json"))
    assert flat["data.format"] == "synthetic"
    assert flat["ray.address"] is None
    # the printed YAML validates back to the same config
    again = config.load(write(tmp_path, config.to_yaml(cfg)))
    assert again == cfg
