"""Submit a stage's job YAML to a Ray cluster as a Ray job, and look after it.

    sentiray submit jobs/data.yaml data.size=2000 --address http://head:8265 --follow

does what

    ray job submit --address http://head:8265 --working-dir . -- sentiray run jobs/data.yaml data.size=2000

does, plus:

* the config is validated here first, so a wrong field fails before anything is uploaded;
* a fixed allowlist of environment variables (MLflow, S3, Hugging Face, sentiray's own)
  travels in the job's runtime environment: their names are printed, their values never;
* the submission id is derived from the stage and the resolved config, so submitting the
  same config again finds the job that is running or has succeeded instead of starting a
  duplicate; after a failed or stopped attempt the next one gets a suffix (``-2``, ``-3``);
* the exit code follows the job's final state (see :data:`EXIT_CODES`).

Only the JobSubmissionClient (HTTP to the dashboard) is used: nothing here joins the cluster.
Under Ray's token authentication (on by default in Ray 2.60 once ``~/.ray/auth_token`` exists)
the token is found where Ray's own clients look (:func:`auth_token`) and sent with every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shlex
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from sentiray import config
from sentiray.config import ConfigError, JobConfig

# Variables a stage needs on the cluster: where MLflow is, how to reach S3, model hub tokens,
# the teacher's endpoint key, and sentiray's own settings (e.g. SENTIRAY_PARENT_RUN_ID, which
# nests the job's MLflow run under a pipeline's parent run).
PASSTHROUGH_NAMES = frozenset(
    {
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
        "MLFLOW_TRACKING_INSECURE_TLS",
        "MLFLOW_S3_ENDPOINT_URL",
        "MLFLOW_EXPERIMENT_NAME",
        "HF_TOKEN",
        "HF_ENDPOINT",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
    }
)
PASSTHROUGH_PREFIXES = ("AWS_", "SENTIRAY_")
# These name files or profiles on *this* machine. On the cluster they would point at nothing
# and make botocore fail, so they stay here.
PASSTHROUGH_EXCLUDED = frozenset(
    {
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CA_BUNDLE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    }
)
# Values of variables whose names look like these are replaced by *** in anything this module
# prints (error messages, log tails), in case Ray or a stage echoes them.
_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL|SESSION|TRACKING_URI", re.IGNORECASE)

# Never uploaded with the working directory (Ray also honours .gitignore): local outputs,
# virtual environments and caches can be gigabytes, and the job must not read stale outputs.
WORKING_DIR_EXCLUDES = [
    ".git",
    ".venv*",
    "runs",
    "mlruns",
    "mlartifacts",
    "**/__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    ".ray",
]

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# The CLI's exit code for a job's final state. 2 stays what it is everywhere in sentiray: a
# config or usage error found before anything ran.
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}

METADATA_PREFIX = "sentiray_"


class ClusterError(RuntimeError):
    """Talking to the cluster failed, or a job does not exist; the message says which and why."""


# --------------------------------------------------------------------------- building a submission


def config_hash(cfg: JobConfig) -> str:
    """A short hash of the resolved config: same settings, same hash, whatever file or
    override spelling they came from."""
    text = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def attempt_number(submission_id: str | None, base_id: str) -> int | None:
    """``base`` -> 1, ``base-3`` -> 3, anything else -> None."""
    if not submission_id:
        return None
    if submission_id == base_id:
        return 1
    suffix = submission_id[len(base_id) + 1 :]
    if submission_id.startswith(base_id + "-") and suffix.isdigit():
        return int(suffix)
    return None


def passthrough_env(
    cfg: JobConfig, extra_names: Iterable[str] = (), environ: Mapping[str, str] | None = None, *, allowlist: bool = True
) -> dict[str, str]:
    """The variables of ``environ`` that the job gets: ``extra_names`` and, with ``allowlist``,
    the allowlist and the key variables the config itself names (``teacher.api_key_env``,
    ``serve.api_key_env``). Without it the cluster's own environment (e.g. Kubernetes Secrets)
    is all the job sees, besides ``extra_names``."""
    environ = os.environ if environ is None else environ
    extra_names = list(extra_names)
    missing = sorted(n for n in extra_names if n not in environ)
    if missing:
        raise ConfigError(f"--env {', '.join(missing)}: not set in this environment (values are taken from here)")
    named = set(extra_names)
    if not allowlist:
        return {name: environ[name] for name in sorted(named)}
    for section in (cfg.teacher, cfg.serve):
        key_env = getattr(section, "api_key_env", None)
        if key_env:
            named.add(key_env)
    return {
        name: value
        for name, value in sorted(environ.items())
        if name in named
        or (name not in PASSTHROUGH_EXCLUDED and (name in PASSTHROUGH_NAMES or name.startswith(PASSTHROUGH_PREFIXES)))
    }


def secret_values(env: Mapping[str, str]) -> list[str]:
    """The values to hide when printing: those of variables whose names look secret."""
    return [v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= 4]


def redact(text: str, secrets: Iterable[str]) -> str:
    for value in sorted(secrets, key=len, reverse=True):  # longest first: one may contain another
        text = text.replace(value, "***")
    return text


def _path_in_working_dir(config_path: str | Path, working_dir: str | Path) -> str:
    """The config's path as the job sees it: relative to the uploaded working directory."""
    path, wd = Path(config_path).resolve(), Path(working_dir).resolve()
    try:
        return path.relative_to(wd).as_posix()
    except ValueError:
        raise ConfigError(
            f"{config_path} is outside the working directory {wd}: the job reads its config from the "
            "uploaded working directory, so put the file inside it or choose another --working-dir"
        ) from None


def lost_output_warnings(cfg: JobConfig, env: Mapping[str, str] | None) -> list[str]:
    """Inside a Ray job the working directory is a temporary copy: a relative local output or a
    relative SQLite MLflow store is written there and lost when the job ends."""
    from sentiray import runtime
    from sentiray.data import storage

    warnings = []
    for key, uri in runtime.output_uris(cfg).items():
        if not storage.is_remote(uri) and not uri.startswith("file://") and not os.path.isabs(uri):
            warnings.append(
                f"{key} resolves to {uri!r}, a relative local path: the job writes it into its temporary "
                "working directory, where it is lost. Use an s3:// or shared absolute storage.root."
            )
    if cfg.tracking.enabled and (env is not None or cfg.tracking.tracking_uri):
        uri = cfg.tracking.tracking_uri or (env or {}).get("MLFLOW_TRACKING_URI")
        if uri is None:
            warnings.append(
                "no MLFLOW_TRACKING_URI here and no tracking.tracking_uri: unless the cluster sets one (then pass "
                "--no-env), the job's MLflow runs land in its temporary working directory (runs/mlflow)"
            )
        elif uri.startswith("sqlite:///") and not os.path.isabs(uri[len("sqlite:///") :]):
            warnings.append(
                f"the MLflow store {uri!r} is relative: the job writes it into its temporary working directory"
            )
    return warnings


@dataclass
class Submission:
    """Everything ``submit_job`` gets. ``runtime_env`` holds secret values: kept out of repr."""

    base_id: str
    entrypoint: str
    metadata: dict[str, str]
    runtime_env: dict[str, Any] = field(repr=False)
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None
    entrypoint_memory: int | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def env_names(self) -> list[str]:
        return sorted(self.runtime_env.get("env_vars", {}))

    @property
    def secrets(self) -> list[str]:
        return secret_values(self.runtime_env.get("env_vars", {}))


def prepare(
    config_path: str | Path,
    overrides: list[str] | None = None,
    *,
    working_dir: str | Path = ".",
    env_names: Iterable[str] = (),
    env_allowlist: bool = True,
    entrypoint_num_cpus: float | None = None,
    entrypoint_num_gpus: float | None = None,
    entrypoint_memory: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[JobConfig, Submission]:
    """Validate the config and build the submission; nothing is sent yet."""
    overrides = list(overrides or [])
    environ = os.environ if environ is None else environ
    cfg = config.load(config_path, overrides)  # a wrong config fails here, before any upload
    rel = _path_in_working_dir(config_path, working_dir)
    env = passthrough_env(cfg, env_names, environ, allowlist=env_allowlist)
    runtime_env: dict[str, Any] = {"working_dir": str(Path(working_dir).resolve()), "excludes": WORKING_DIR_EXCLUDES}
    if env:
        runtime_env["env_vars"] = env
    digest = config_hash(cfg)
    metadata = {
        f"{METADATA_PREFIX}stage": cfg.stage,
        f"{METADATA_PREFIX}name": cfg.name or "",
        f"{METADATA_PREFIX}config": rel,
        f"{METADATA_PREFIX}config_hash": digest,
    }
    return cfg, Submission(
        base_id=f"sentiray-{cfg.stage}-{digest}",
        # The job runs exactly what `sentiray run` runs locally, on the uploaded copy of the file.
        entrypoint=shlex.join(["sentiray", "run", rel, *overrides]),
        metadata=metadata,
        runtime_env=runtime_env,
        entrypoint_num_cpus=entrypoint_num_cpus,
        entrypoint_num_gpus=entrypoint_num_gpus,
        entrypoint_memory=entrypoint_memory,
        # With --no-env the cluster's environment decides where MLflow is: nothing to check here.
        warnings=lost_output_warnings(cfg, env if env_allowlist else None),
    )


# --------------------------------------------------------------------------- talking to the cluster


def describe_address(address: str | None) -> str:
    return address or os.environ.get("RAY_ADDRESS") or "auto (a local cluster)"


DEFAULT_TOKEN_PATH = Path("~/.ray/auth_token")
TOKEN_HELP = (
    "set RAY_AUTH_TOKEN to the cluster's token, or RAY_AUTH_TOKEN_PATH to a file holding it "
    "(`ray get-auth-token` on the head node prints it)"
)


def auth_token(environ: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """The Ray authentication token of this machine and where it came from, looked up as Ray's
    own clients do: ``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH`` names, else
    ``~/.ray/auth_token`` (which any local ``ray.init()`` writes). ``RAY_AUTH_MODE=disabled``
    means: send none.

    Ray's JobSubmissionClient sends the token only when ``RAY_AUTH_MODE=token`` is set in the
    client's environment, which a user who ran ``ray start --head`` has no reason to know; so
    sentiray sends it whenever there is one, like ``ray.init()`` does for a local cluster."""
    environ = os.environ if environ is None else environ
    if environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None, "RAY_AUTH_MODE=disabled"
    if environ.get("RAY_AUTH_TOKEN", "").strip():
        return environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    if environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ClusterError(f"RAY_AUTH_TOKEN_PATH={path} cannot be read ({exc.strerror}); {TOKEN_HELP}") from None
        if not token:
            raise ClusterError(f"RAY_AUTH_TOKEN_PATH={path} is empty; {TOKEN_HELP}")
        return token, f"RAY_AUTH_TOKEN_PATH={path}"
    path = Path(os.path.expanduser(str(DEFAULT_TOKEN_PATH)))
    with contextlib.suppress(OSError):
        token = path.read_text().strip()
        if token:
            return token, str(path)
    return None, "no RAY_AUTH_TOKEN, no RAY_AUTH_TOKEN_PATH and no ~/.ray/auth_token"


def auth_refused(address: str | None, source: str, exc: Exception) -> ClusterError:
    """Ray's AuthenticationError (a paragraph) as one line that says what to set."""
    where = describe_address(address)
    if "Forbidden" in str(exc) or "invalid" in str(exc).lower():
        return ClusterError(f"the Ray cluster at {where} refused the authentication token from {source}; {TOKEN_HELP}")
    return ClusterError(
        f"the Ray cluster at {where} requires an authentication token and none was sent ({source}); {TOKEN_HELP}"
    )


def connect(address: str | None):
    """A JobSubmissionClient for the dashboard at ``address`` (None: RAY_ADDRESS, else a local
    cluster), sending this machine's Ray token if it has one. Unreachable addresses and refused
    tokens become a ClusterError that names the address and what to do."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    _, source = auth_token()
    try:
        return JobSubmissionClient(address, headers=auth_headers())  # its version check is already authenticated
    except AuthenticationError as exc:
        raise auth_refused(address, source, exc) from None
    except (OSError, RuntimeError, ValueError) as exc:  # refused, not a dashboard, bad address: no cluster there
        raise ClusterError(f"cannot reach a Ray dashboard at {describe_address(address)}: {exc}") from None


def auth_headers() -> dict[str, str]:
    token, _ = auth_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def state_client(address: str | None):
    """Ray's state API client (nodes, actors, tasks) for the dashboard at ``address``, with the token."""
    from ray.util.state import StateApiClient

    return StateApiClient(address, headers={"Content-Type": "application/json", **auth_headers()})


def alive_nodes(address: str | None) -> int:
    """How many nodes of the cluster are alive, from its dashboard (Ray's state API)."""
    from ray.util.state.common import ListApiOptions, StateResource

    try:
        nodes = state_client(address).list(
            StateResource.NODES,
            options=ListApiOptions(filters=[("state", "=", "ALIVE")]),
            raise_on_missing_output=False,
        )
    except Exception as exc:  # noqa: BLE001 (the state API raises its own error types, and requests')
        raise ClusterError(f"cannot list the nodes of the cluster at {describe_address(address)}: {exc}") from None
    return len(nodes)


MAX_STATE_ROWS = 10_000  # the most rows Ray's state API returns by default


@dataclass
class Retries:
    """What a job's Ray tasks went through: attempts after the first (a task re-run because its
    worker, actor or node was lost, or because it raised and was retried), and actor restarts."""

    tasks: int
    actor_restarts: int

    def line(self) -> str | None:
        if not (self.tasks or self.actor_restarts):
            return None
        return (
            f"{self.tasks} task(s) retried, {self.actor_restarts} actor restart(s): a worker, an actor or a node "
            "was lost on the way and Ray ran the work again"
        )


def job_retries(client, submission_id: str) -> Retries | None:
    """Counted from Ray's state API (task attempts, actor restarts) for the job's Ray job id;
    None when the cluster keeps no record of it."""
    from ray.util.state.common import ListApiOptions, StateResource

    job = job_info(client, submission_id)
    if not job.job_id:  # the driver never started
        return None
    state = state_client(client.get_address())
    try:
        tasks = state.list(
            StateResource.TASKS,
            options=ListApiOptions(
                filters=[("job_id", "=", job.job_id), ("attempt_number", "!=", 0)], limit=MAX_STATE_ROWS, detail=True
            ),
            raise_on_missing_output=False,
        )
        actors = state.list(
            StateResource.ACTORS,
            options=ListApiOptions(filters=[("job_id", "=", job.job_id)], limit=MAX_STATE_ROWS, detail=True),
            raise_on_missing_output=False,
        )
    except Exception:  # noqa: BLE001 (a best-effort report: the state API may be off or have dropped old events)
        return None
    return Retries(
        tasks=len({_field(t, "task_id") for t in tasks}),
        actor_restarts=sum(_field(a, "num_restarts") or 0 for a in actors),
    )


def _field(item: Any, name: str) -> Any:
    """A field of a state API row (a dataclass, or a dict in some Ray versions)."""
    return item[name] if isinstance(item, dict) else getattr(item, name)


def check_shared_storage(cfg: JobConfig, address: str | None) -> None:
    """Before anything is uploaded: on a multi-node cluster, outputs on one node's disk fail here
    (the same check the stage makes when it starts, see ``sentiray.runtime.check_shared_storage``)."""
    from sentiray import runtime

    if runtime.node_local_outputs(cfg):  # else no need to ask the cluster
        runtime.check_shared_storage(cfg, alive_nodes(address))


def status_of(job_or_status: Any) -> str:
    """``"RUNNING"`` etc. from a JobDetails or a JobStatus."""
    status = getattr(job_or_status, "status", job_or_status)
    return str(getattr(status, "value", status))


def job_info(client, submission_id: str):
    try:
        return client.get_job_info(submission_id)
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            raise ClusterError(f"no job {submission_id!r} on this cluster (see `sentiray jobs list`)") from None
        raise ClusterError(f"cannot read job {submission_id!r}: {exc}") from None


def list_jobs(client) -> list:
    """Every job the cluster knows, oldest first."""
    try:
        jobs = client.list_jobs()
    except (OSError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"cannot list jobs: {exc}") from None
    return sorted(jobs, key=lambda j: (j.start_time or 0, j.submission_id or ""))


def find_attempts(client, base_id: str) -> list[tuple[int, Any]]:
    """The earlier attempts of one submission, ``(attempt number, JobDetails)``, oldest first."""
    found = []
    for job in list_jobs(client):
        n = attempt_number(job.submission_id, base_id)
        if n is not None:
            found.append((n, job))
    return sorted(found, key=lambda pair: pair[0])


@contextlib.contextmanager
def _quiet_ray_logs() -> Iterator[None]:
    """Ray logs every file it skips and every package it uploads at INFO (and a warning for each
    folder it excludes by default); the caller prints one line about the submission instead.
    Failures still surface, as exceptions."""
    # Ray's SDK modules set their own levels, so each of Ray's loggers is raised, then restored.
    names = [n for n in list(logging.root.manager.loggerDict) if n == "ray" or n.startswith("ray.")]
    loggers = {name: logging.getLogger(name) for name in names}
    levels = {name: lg.level for name, lg in loggers.items()}
    for lg in loggers.values():
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, lg in loggers.items():
            lg.setLevel(levels[name])


@dataclass
class SubmitResult:
    submission_id: str
    created: bool  # False: an identical config's job was found and reused
    status: str  # the job's status right after submitting (or as found)
    attempt: int


def submit(client, sub: Submission, *, rerun: bool = False) -> SubmitResult:
    """Submit, unless an identical config's latest attempt is pending, running or succeeded
    (then that job is the answer). ``rerun`` always starts a new attempt."""
    attempts = find_attempts(client, sub.base_id)
    attempt = 1
    if attempts:
        number, latest = attempts[-1]
        status = status_of(latest)
        if status in ("PENDING", "RUNNING", "SUCCEEDED") and not rerun:
            return SubmitResult(latest.submission_id, created=False, status=status, attempt=number)
        attempt = number + 1
    submission_id = sub.base_id if attempt == 1 else f"{sub.base_id}-{attempt}"
    try:
        with _quiet_ray_logs():
            client.submit_job(
                entrypoint=sub.entrypoint,
                submission_id=submission_id,
                runtime_env=sub.runtime_env,
                metadata=sub.metadata,
                entrypoint_num_cpus=sub.entrypoint_num_cpus,
                entrypoint_num_gpus=sub.entrypoint_num_gpus,
                entrypoint_memory=sub.entrypoint_memory,
            )
    except (OSError, RuntimeError, ValueError) as exc:
        message = redact(str(exc), sub.secrets)
        if "already exists" in message:  # the same config submitted at the same moment: that job is the answer
            return SubmitResult(
                submission_id, created=False, status=status_of(job_info(client, submission_id)), attempt=attempt
            )
        raise ClusterError(f"submitting {submission_id} failed: {message}") from None
    return SubmitResult(
        submission_id, created=True, status=status_of(client.get_job_status(submission_id)), attempt=attempt
    )


def wait(
    client,
    submission_id: str,
    *,
    poll_s: float = 1.0,
    timeout_s: float | None = None,
    on_status: Callable[[str], None] | None = None,
) -> str:
    """Poll until the job ends; returns its final status (or the current one at ``timeout_s``)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last = None
    while True:
        try:
            status = status_of(client.get_job_status(submission_id))
        except (OSError, RuntimeError) as exc:  # the dashboard went away or restarted
            raise ClusterError(f"lost track of {submission_id} while waiting (the job may go on): {exc}") from None
        if status != last and on_status is not None:
            on_status(status)
        last = status
        if status in TERMINAL or (deadline is not None and time.monotonic() > deadline):
            return status
        time.sleep(poll_s)


def follow(client, submission_id: str, out: TextIO, secrets: Iterable[str] = ()) -> str:
    """Stream the job's logs to ``out`` from the beginning until the job ends; returns its final status."""
    secrets = list(secrets)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            out.write(redact(chunk, secrets))
            out.flush()

    with _quiet_ray_logs():
        asyncio.run(tail())
    # The stream closes when the job ends; the final status may settle a moment later.
    return wait(client, submission_id, poll_s=0.2)


def logs(client, submission_id: str, secrets: Iterable[str] = ()) -> str:
    try:
        text = client.get_job_logs(submission_id)
    except RuntimeError as exc:
        job_info(client, submission_id)  # a missing job gets its own clear message
        raise ClusterError(f"cannot read the logs of {submission_id}: {exc}") from None
    return redact(text, secrets)


def job_secrets(job) -> list[str]:
    """The secret-looking values in a job's own runtime environment, to hide from its logs."""
    env = (getattr(job, "runtime_env", None) or {}).get("env_vars") or {}
    return secret_values(env)


def error_tail(client, submission_id: str, lines: int = 40, secrets: Iterable[str] = ()) -> str:
    """Why a job failed: Ray's one-line reason and the last ``lines`` of its log."""
    job = job_info(client, submission_id)
    secrets = list(secrets) + job_secrets(job)
    # Ray's message repeats the log after its first clause; the tail below shows that once.
    reason = (job.message or "").strip().split("\n", 1)[0].split(", last available logs", 1)[0] or "(no message)"
    tail = logs(client, submission_id, secrets).rstrip().splitlines()[-lines:]
    parts = [f"job {submission_id} {status_of(job)}: {redact(reason, secrets)}"]
    if job.driver_exit_code is not None and "exit code" not in reason:
        parts.append(f"entrypoint exit code: {job.driver_exit_code}")
    parts.append(f"--- last {len(tail)} lines of its log ---")
    parts.extend(tail)
    return "\n".join(parts)


def stop(client, submission_id: str, *, wait_s: float = 60) -> tuple[bool, str]:
    """Ask the job to stop; returns (whether a stop was sent, its status afterwards). A job that
    already ended is left as it is."""
    job = job_info(client, submission_id)
    if status_of(job) in TERMINAL:
        return False, status_of(job)
    try:
        sent = client.stop_job(submission_id)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"stopping {submission_id} failed: {exc}") from None
    status = (
        wait(client, submission_id, poll_s=0.5, timeout_s=wait_s)
        if wait_s
        else status_of(client.get_job_status(submission_id))
    )
    return sent, status


# --------------------------------------------------------------------------- showing jobs


def _time(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")


def summary(job) -> dict[str, Any]:
    """What `jobs list` shows of a job: never the values of its runtime environment."""
    meta = job.metadata or {}
    env = (job.runtime_env or {}).get("env_vars") or {}
    duration = None
    if job.start_time:
        end = job.end_time or time.time() * 1000
        duration = round((end - job.start_time) / 1000, 1)
    return {
        "submission_id": job.submission_id,
        "status": status_of(job),
        "stage": meta.get(f"{METADATA_PREFIX}stage"),
        "name": meta.get(f"{METADATA_PREFIX}name") or None,
        "config": meta.get(f"{METADATA_PREFIX}config"),
        "config_hash": meta.get(f"{METADATA_PREFIX}config_hash"),
        "entrypoint": redact(job.entrypoint or "", secret_values(env)),
        "start_time": _time(job.start_time),
        "end_time": _time(job.end_time),
        "duration_s": duration,
        "message": redact((job.message or "").strip().split("\n", 1)[0], secret_values(env)) or None,
        "env_vars": sorted(env),  # names only
    }
