"""The `sentiray` command line, in process and as a subprocess."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sentiray import cli
from sentiray.data import schema

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def local_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_data_prepare_stats_and_rerun(tmp_path, capsys):
    out = tmp_path / "ds"
    assert (
        cli.main(["data", "prepare", "--format", "synthetic", "--task", "msa", "--size", "50", "--output", str(out)])
        == 0
    )
    manifest = schema.read_manifest(str(out))
    assert manifest["task"] == "msa" and sum(manifest["counts"].values()) == 50
    capsys.readouterr()
    # a rerun finds the complete output and skips it
    assert (
        cli.main(["data", "prepare", "--format", "synthetic", "--task", "msa", "--size", "50", "--output", str(out)])
        == 0
    )
    assert "skipped" in capsys.readouterr().out
    assert cli.main(["data", "stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["splits"]["train"]["rows"] == 40
    assert stats["splits"]["train"]["coverage"]["audio"] == 40
    assert cli.main(["data", "stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "train rows=40" in text and "score:" in text


def test_run_job_yaml_with_overrides(tmp_path, capsys):
    out = tmp_path / "msc"
    code = cli.main(["run", str(REPO / "jobs" / "data.yaml"), f"data.output={out}", "data.size=30", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert summary["manifest"]["counts"] == {"train": 24, "dev": 3, "test": 3}
    assert len(schema.read_rows(str(out), "train")) == 24


def test_config_show_prints_resolved(capsys):
    assert cli.main(["config", "show", str(REPO / "jobs" / "data.yaml"), "data.size=7"]) == 0
    text = capsys.readouterr().out
    assert "size: 7" in text and "experiment: sentiray" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "jobs/data.yaml", "data.size=-3"], "data.size: Input should be greater than 0"),
        (["run", "jobs/data.yaml", "data.formt=x"], "data.formt: unknown key"),
        (["data", "prepare", "--format", "twitter2015", "--output", "/tmp/x"], "set data.input"),
        (
            ["data", "prepare", "--format", "twitter2015", "--input", "/nonexistent/tw", "--output", "/tmp/x"],
            "/nonexistent/tw",
        ),
        (["data", "stats", "/nonexistent/ds"], "not a complete sentiray data set"),
    ],
)
def test_bad_input_exits_2_with_message(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err, err


def test_every_subcommand_has_help():
    for argv in (
        ["--help"],
        ["demo", "--help"],
        ["run", "--help"],
        ["data", "prepare", "--help"],
        ["data", "stats", "--help"],
        ["config", "show", "--help"],
        ["models", "tiny", "--help"],
    ):
        proc = subprocess.run([sys.executable, "-m", "sentiray.cli", *argv], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "usage: sentiray" in proc.stdout, (argv, proc.stderr)


def test_bad_config_fails_before_ray_starts(tmp_path):
    """A wrong config is refused in well under the time Ray needs to start."""
    proc = subprocess.run(
        [sys.executable, "-m", "sentiray.cli", "run", str(REPO / "jobs" / "data.yaml"), "data.size=oops"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "data.size: Input should be a valid integer" in proc.stderr
    assert "ray" not in proc.stderr.lower()
