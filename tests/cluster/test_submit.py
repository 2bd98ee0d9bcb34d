"""`sentiray submit` and `sentiray jobs` against a real `ray start --head`, and the README's
plain `ray job submit` route with the entrypoint of k8s/rayjob-data.yaml.

The head node does not inherit the session's AWS_* / MLFLOW_* variables (tests.cluster.helpers):
a job that writes to the loopback S3 server and to the test's MLflow store got them from its
submission's runtime environment.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from sentiray import cli
from sentiray.cluster import submit as sj
from sentiray.data import schema
from tests.cluster.helpers import BIN, user_env
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
DATA_JOB = str(REPO / "jobs" / "data.yaml")
SECRET = "sr-test-secret-7f3a9c"  # the AWS secret key the jobs get: must never be printed


@pytest.fixture
def job_env(s3_server, tmp_path, monkeypatch):
    """What a user has in their shell: S3 keys (moto accepts any) and an MLflow store."""
    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    return store


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def wait_for_status(address: str, submission_id: str, wanted: str, timeout: float = 120) -> None:
    client = sj.connect(address)
    deadline = time.time() + timeout
    while (status := sj.status_of(client.get_job_status(submission_id))) != wanted:
        assert status not in sj.TERMINAL, f"{submission_id} ended {status} while waiting for {wanted}"
        assert time.time() < deadline, f"{submission_id} still {status} after {timeout}s"
        time.sleep(0.5)


@pytest.mark.slow
def test_submit_follow_runs_a_stage_with_the_environment_passed_through(head, job_env, s3_uri, capsys):
    address, _ = head
    args = [
        "submit",
        DATA_JOB,
        f"storage.root={s3_uri}",
        "data.size=40",
        "data.seed=1",
        "--address",
        address,
        "--working-dir",
        str(REPO),
    ]
    code, out, err = run_cli(capsys, *args, "--follow")
    assert code == 0, out[-3000:] + err[-3000:]
    submission_id = out.splitlines()[0]
    assert submission_id.startswith("sentiray-data-") and len(submission_id) == len("sentiray-data-") + 10
    assert "data: wrote s3://" in out  # the job's own log, streamed
    assert "AWS_SECRET_ACCESS_KEY" in err and "MLFLOW_TRACKING_URI" in err  # names are shown ...
    assert SECRET not in out + err  # ... values never
    assert f"{submission_id}: SUCCEEDED" in err

    # the stage really ran on the cluster with those variables: S3 output and MLflow run
    manifest = schema.read_manifest(f"{s3_uri}/data/msc")
    assert sum(manifest["counts"].values()) == 40
    with sqlite3.connect(job_env) as db:
        params = dict(db.execute("select key, value from params").fetchall())
    assert params["data.size"] == "40" and params["storage.root"] == s3_uri

    # the logs (whole, and followed: a finished job streams its log and gives its exit code), the list
    code, out, _ = run_cli(capsys, "jobs", "logs", submission_id, "--address", address)
    assert code == 0 and "data: wrote s3://" in out and SECRET not in out
    code, out, err = run_cli(capsys, "jobs", "logs", submission_id, "--address", address, "--follow")
    assert code == 0 and "data: wrote s3://" in out and f"{submission_id}: SUCCEEDED" in err
    code, out, _ = run_cli(capsys, "jobs", "list", "--address", address, "--json")
    (row,) = [r for r in json.loads(out) if r["submission_id"] == submission_id]
    assert row["status"] == "SUCCEEDED" and row["stage"] == "data" and row["config"] == "jobs/data.yaml"
    assert "AWS_SECRET_ACCESS_KEY" in row["env_vars"] and SECRET not in out

    # the same config again (overrides in another order): recognised, not run twice
    code, out, err = run_cli(
        capsys,
        "submit",
        DATA_JOB,
        "data.seed=1",
        "data.size=40",
        f"storage.root={s3_uri}",
        "--address",
        address,
        "--working-dir",
        str(REPO),
        "--wait",
    )
    assert code == 0 and out.splitlines()[0] == submission_id
    assert f"already submitted as {submission_id}: SUCCEEDED" in err
    jobs = [j for j in sj.list_jobs(sj.connect(address)) if (j.submission_id or "").startswith(submission_id)]
    assert len(jobs) == 1


@pytest.mark.slow
def test_a_failing_job_ends_failed_and_submit_wait_shows_its_error(head, job_env, tmp_path, capsys):
    address, _ = head
    # Valid config, fails at run time: the input folder does not exist on the cluster.
    code, out, err = run_cli(
        capsys,
        "submit",
        DATA_JOB,
        "data.format=mvsa_single",
        f"data.input={tmp_path}/missing",
        f"data.output={tmp_path}/out",
        "--address",
        address,
        "--working-dir",
        str(REPO),
        "--wait",
    )
    submission_id = out.splitlines()[0]
    assert code == sj.EXIT_CODES["FAILED"] == 1
    assert f"job {submission_id} FAILED" in err
    assert "failed with exit code 2" in err
    assert f"error: data.input {tmp_path}/missing does not exist" in err  # the job's own error, from its log tail
    assert SECRET not in out + err
    assert sj.status_of(sj.connect(address).get_job_status(submission_id)) == "FAILED"


@pytest.mark.slow
def test_jobs_stop_stops_a_running_job_and_a_resubmit_is_a_new_attempt(head, job_env, tmp_path, capsys):
    address, _ = head
    # A data set big enough to run for an hour.
    args = [
        "submit",
        DATA_JOB,
        "data.size=5000000",
        f"data.output={tmp_path}/big",
        "--address",
        address,
        "--working-dir",
        str(REPO),
    ]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0
    submission_id = out.splitlines()[0]
    wait_for_status(address, submission_id, "RUNNING")

    # submitting it again while it runs finds it
    code, out, err = run_cli(capsys, *args)
    assert code == 0 and out.splitlines()[0] == submission_id and "RUNNING" in err

    code, out, _ = run_cli(capsys, "jobs", "stop", submission_id, "--address", address)
    assert code == 0 and f"{submission_id}: STOPPED" in out
    code, out, _ = run_cli(capsys, "jobs", "list", "--address", address)
    assert any(line.startswith(submission_id + " ") and " STOPPED " in line for line in out.splitlines())

    # after a stop, the same config is a second attempt
    code, out, err = run_cli(capsys, *args)
    assert code == 0 and out.splitlines()[0] == f"{submission_id}-2" and "attempt 2" in err
    wait_for_status(address, f"{submission_id}-2", "RUNNING")
    code, out, _ = run_cli(capsys, "jobs", "stop", f"{submission_id}-2", "--address", address)
    assert code == 0 and "STOPPED" in out
    # stopping an ended job says so
    code, out, _ = run_cli(capsys, "jobs", "stop", submission_id, "--address", address)
    assert code == 0 and "had already ended: STOPPED" in out


@pytest.mark.slow
def test_plain_ray_job_submit_runs_the_rayjob_manifest_entrypoint(head, s3_server, s3_uri, tmp_path, capsys):
    """The README's route: `ray job submit --working-dir . -- sentiray run jobs/X.yaml`, here with
    exactly the entrypoint, runtime env and driver CPUs that KubeRay takes from k8s/rayjob-data.yaml."""
    address, env = head
    (rayjob,) = [d for d in yaml.safe_load_all((REPO / "k8s" / "rayjob-data.yaml").read_text()) if d]
    spec = rayjob["spec"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    # The image's working directory is this checkout here; the pods' Secrets are env_vars here.
    runtime_env["working_dir"] = str(REPO)
    runtime_env["env_vars"] = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    submission_id = f"rayjob-data-{time.time_ns()}"
    # Later overrides win: the bucket of this test's S3 server, a small data set.
    entrypoint = shlex.split(spec["entrypoint"]) + [f"storage.root={s3_uri}", "data.size=30"]
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        f"--address={address}",
        f"--submission-id={submission_id}",
        f"--runtime-env-json={json.dumps(runtime_env)}",
        f"--metadata-json={json.dumps(spec['metadata'])}",
        f"--entrypoint-num-cpus={spec['entrypointNumCpus']}",
        "--",
        *entrypoint,
    ]
    # Ray's CLI sends the token (~/.ray/auth_token here) only with RAY_AUTH_MODE=token: the README's line.
    proc = subprocess.run(
        cmd, check=False, env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "data: wrote s3://" in proc.stdout

    manifest = schema.read_manifest(f"{s3_uri}/data/msc")
    assert sum(manifest["counts"].values()) == 30
    code, out, _ = run_cli(capsys, "jobs", "logs", submission_id, "--address", address, "--tail", "5")
    assert code == 0 and "data: wrote s3://" in out
    code, out, _ = run_cli(capsys, "jobs", "list", "--address", address, "--json")
    (row,) = [r for r in json.loads(out) if r["submission_id"] == submission_id]
    assert row["status"] == "SUCCEEDED" and row["config"] == "jobs/data.yaml"


def sentiray(*argv: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """The `sentiray` command a user runs, in its own process: nothing of this session's Ray state."""
    return subprocess.run(
        [str(BIN / "sentiray"), *argv], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.slow
def test_submit_wait_under_token_authentication_needs_nothing_set_by_hand(head, s3_server, s3_uri, tmp_path):
    """The README's cluster path on a machine where a local Ray has run: `ray start --head` turned
    token authentication on by itself, and `sentiray submit --wait` finds ~/.ray/auth_token."""
    address, _ = head
    with pytest.raises(urllib.error.HTTPError) as refused:  # the head really requires the token
        urllib.request.urlopen(f"{address}/api/version", timeout=10)
    assert refused.value.code == 401
    with urllib.request.urlopen(f"{address}/api/authentication_mode", timeout=10) as resp:
        assert json.load(resp) == {"authentication_mode": "token"}

    env = {**user_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    assert not any(k.startswith("RAY_AUTH_") for k in env)
    proc = sentiray(
        "submit",
        DATA_JOB,
        f"storage.root={s3_uri}",
        "data.size=20",
        "data.seed=3",
        "--address",
        address,
        "--working-dir",
        str(REPO),
        "--wait",
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    submission_id = proc.stdout.splitlines()[0]
    assert f"{submission_id}: SUCCEEDED" in proc.stderr
    assert sum(schema.read_manifest(f"{s3_uri}/data/msc")["counts"].values()) == 20


@pytest.mark.slow
def test_a_refused_token_is_one_line_that_says_what_to_set(head, tmp_path):
    address, _ = head
    env = {**user_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    pipe = tmp_path / "p.yaml"
    pipe.write_text(
        yaml.safe_dump(
            {
                "name": "refused",
                "storage": {"root": "s3://sentiray-test/refused"},
                "stages": [{"name": "data", "config": "jobs/data.yaml"}],
            }
        )
    )
    cases = [  # (command, extra environment, what the line says)
        (
            ["submit", DATA_JOB, "data.output=s3://b/x", "--address", address, "--wait"],
            {"RAY_AUTH_TOKEN": "not-the-token"},
            f"error: the Ray cluster at {address} refused the authentication token from RAY_AUTH_TOKEN; set RAY_AUTH_TOKEN",
        ),
        (
            ["jobs", "list", "--address", address],
            {"RAY_AUTH_MODE": "disabled"},
            f"error: the Ray cluster at {address} requires an authentication token and none was sent (RAY_AUTH_MODE=disabled)",
        ),
        (
            ["pipeline", str(pipe), "--address", address, "--quiet"],
            {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")},
            f"error: RAY_AUTH_TOKEN_PATH={tmp_path / 'none'} cannot be read",
        ),
    ]
    for argv, extra, line in cases:
        proc = sentiray(*argv, env={**env, **extra}, timeout=120)
        errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
        assert proc.returncode == 2, (argv, proc.stderr[-2000:])
        assert len(errors) == 1 and errors[0].startswith(line), (argv, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and "AuthenticationError" not in proc.stderr
        assert "RAY_AUTH_TOKEN_PATH to a file holding it" in errors[0]


def test_the_token_is_looked_up_where_ray_looks(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert sj.auth_token({})[0] is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    (tmp_path / "t").write_text(" from-path ")
    assert sj.auth_token({}) == ("from-home", str(tmp_path / ".ray" / "auth_token"))
    assert sj.auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "t")})[0] == "from-path"
    assert sj.auth_token({"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "t")})[0] == "from-env"
    assert sj.auth_token({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "from-env"})[0] is None
    (tmp_path / "empty").write_text("")
    with pytest.raises(sj.ClusterError, match="RAY_AUTH_TOKEN_PATH=.*empty is empty"):
        sj.auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "empty")})


def test_node_local_outputs_fail_on_more_than_one_node(tmp_path, monkeypatch):
    from sentiray import runtime
    from sentiray.config import ConfigError

    local = sj.config.load(DATA_JOB, [f"storage.root={tmp_path}"])
    runtime.check_shared_storage(local, alive_nodes=1)  # one node: every path is shared
    with pytest.raises(
        ConfigError,
        match=r"data.output is '.*/data/msc': a path on one node's own disk, but this Ray "
        r"cluster has 2 nodes.*storage.root=s3://",
    ):
        runtime.check_shared_storage(local, alive_nodes=2)
    runtime.check_shared_storage(sj.config.load(DATA_JOB, ["storage.root=s3://b/run"]), alive_nodes=3)
    # a filesystem mounted on every node, named as such
    monkeypatch.setenv(runtime.SHARED_PATHS_ENV, f"/elsewhere:{tmp_path}")
    runtime.check_shared_storage(local, alive_nodes=2)
    assert runtime.node_local_outputs(local, {runtime.SHARED_PATHS_ENV: f"{tmp_path}-other"}) == {
        "data.output": f"{tmp_path}/data/msc"
    }
    # outside a Ray job, with no cluster address, nothing is asked (a local Ray is one node)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(runtime.JOB_CONFIG_ENV, raising=False)
    monkeypatch.delenv(runtime.SHARED_PATHS_ENV)
    runtime.require_shared_storage(local)


def test_submit_errors_are_clear(tmp_path, capsys):
    """No cluster needed: config errors, unknown --env names, unreachable dashboards."""
    code, _, err = run_cli(capsys, "submit", DATA_JOB, "data.size=-1", "--working-dir", str(REPO), "--dry-run")
    assert code == 2 and "data.size" in err
    code, _, err = run_cli(capsys, "submit", DATA_JOB, "--working-dir", str(tmp_path), "--dry-run")
    assert code == 2 and "outside the working directory" in err
    code, _, err = run_cli(
        capsys, "submit", DATA_JOB, "--working-dir", str(REPO), "--env", "SENTIRAY_TEST_UNSET_VAR", "--dry-run"
    )
    assert code == 2 and "SENTIRAY_TEST_UNSET_VAR: not set" in err
    code, _, err = run_cli(capsys, "jobs", "list", "--address", f"http://127.0.0.1:{free_port()}")
    assert code == 2 and "cannot reach a Ray dashboard at http://127.0.0.1:" in err


def test_the_cli_has_the_cluster_commands():
    assert "sentiray.cluster.commands" in cli.COMMAND_MODULES, "register it in sentiray/cli.py's COMMAND_MODULES"
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    assert {"submit", "jobs", "k8s"} <= set(commands)


def test_the_submission_id_is_the_stage_and_a_hash_of_the_resolved_config():
    def sub(*overrides):
        return sj.prepare(DATA_JOB, list(overrides), working_dir=REPO, environ={})[1]

    first = sub("data.size=40", "data.seed=1")
    assert re.fullmatch(r"sentiray-data-[0-9a-f]{10}", first.base_id)
    assert sub("data.seed=1", "data.size=40").base_id == first.base_id  # spelling and order do not matter
    assert sub("data.size=40", "data.seed=1", "data.task=msc").base_id == first.base_id  # nor restating a value
    assert sub("data.size=41", "data.seed=1").base_id != first.base_id
    assert first.entrypoint == "sentiray run jobs/data.yaml data.size=40 data.seed=1"
    assert first.metadata["sentiray_config_hash"] == first.base_id.rsplit("-", 1)[1]
    assert [
        sj.attempt_number(i, first.base_id)
        for i in (first.base_id, first.base_id + "-3", first.base_id + "-x", "other")
    ] == [1, 3, None, None]


def test_only_allowlisted_variables_pass_and_their_values_stay_hidden():
    environ = {
        "MLFLOW_TRACKING_URI": "http://user:pw-12345@mlflow:5000",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_ENDPOINT_URL": "http://s3:9000",
        "AWS_PROFILE": "mine",
        "AWS_SHARED_CREDENTIALS_FILE": "/home/me/.aws/c",
        "SENTIRAY_PARENT_RUN_ID": "abc123",
        "HF_TOKEN": "hf_token_value",
        "HOME": "/home/me",
        "PATH": "/usr/bin",
        "GITHUB_TOKEN": "ghp_not_for_the_cluster",
        "MY_TEACHER_KEY": "teacher-key-value",
    }
    cfg, sub = sj.prepare(DATA_JOB, [], working_dir=REPO, environ=environ)
    assert sub.env_names == [
        "AWS_ENDPOINT_URL",
        "AWS_SECRET_ACCESS_KEY",
        "HF_TOKEN",
        "MLFLOW_TRACKING_URI",
        "SENTIRAY_PARENT_RUN_ID",
    ]
    assert SECRET not in repr(sub)  # the runtime env is kept out of repr
    shown = sj.redact(f"failed: {environ['MLFLOW_TRACKING_URI']} {SECRET} hf_token_value http://s3:9000", sub.secrets)
    assert shown == "failed: *** *** *** http://s3:9000"
    # a key variable the config names passes too; --no-env passes only what --env names
    teacher_cfg = cfg.model_copy(
        update={"teacher": sj.config.TeacherConfig.model_construct(api_key_env="MY_TEACHER_KEY")}
    )
    assert "MY_TEACHER_KEY" in sj.passthrough_env(teacher_cfg, environ=environ)
    assert sj.passthrough_env(cfg, ["HOME"], environ, allowlist=False) == {"HOME": "/home/me"}


def test_dry_run_and_warnings_name_what_would_be_lost(capsys, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, out, err = run_cli(capsys, "submit", DATA_JOB, "data.size=10", "--working-dir", str(REPO), "--dry-run")
    assert code == 0
    shown = json.loads(out)
    assert shown["entrypoint"] == "sentiray run jobs/data.yaml data.size=10"
    assert shown["working_dir"] == str(REPO) and "AWS_SECRET_ACCESS_KEY" in shown["env_vars"]
    assert SECRET not in out + err
    assert "data.output resolves to 'runs/data/msc', a relative local path" in err
    assert "no MLFLOW_TRACKING_URI here" in err
    # --no-env: the cluster's own environment decides about MLflow
    code, out, err = run_cli(
        capsys, "submit", DATA_JOB, "data.output=s3://b/x", "--working-dir", str(REPO), "--dry-run", "--no-env"
    )
    assert code == 0 and json.loads(out)["env_vars"] == [] and err == ""
