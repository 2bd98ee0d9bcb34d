"""Commands for clusters: ``sentiray submit``, ``sentiray jobs {list,logs,stop}``, ``sentiray k8s render``.

Registered by ``sentiray.cli`` through ``COMMAND_MODULES``; Ray and the renderers are imported
inside the handlers so that ``sentiray --help`` stays fast.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable


def _cluster_errors(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Cluster and rendering errors become one clear line and exit code 2, like config errors."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from sentiray.cluster.k8s import RenderError
        from sentiray.cluster.submit import ClusterError, auth_refused

        try:
            return handler(args)
        except (ClusterError, RenderError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:
            # A token refused after connect() accepted one (e.g. the cluster restarted with a new one).
            from ray.exceptions import AuthenticationError

            if not isinstance(exc, AuthenticationError):
                raise
            print(f"error: {auth_refused(getattr(args, 'address', None), 'this machine', exc)}", file=sys.stderr)
            return 2

    return run


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- submit


@_cluster_errors
def cmd_submit(args: argparse.Namespace) -> int:
    from sentiray.cluster import submit as sj

    cfg, sub = sj.prepare(
        args.config,
        args.overrides,
        working_dir=args.working_dir,
        env_names=args.env,
        env_allowlist=not args.no_env,
        entrypoint_num_cpus=args.entrypoint_num_cpus,
        entrypoint_num_gpus=args.entrypoint_num_gpus,
        entrypoint_memory=args.entrypoint_memory,
    )
    for warning in sub.warnings:
        _note(f"warning: {warning}")
    names = ", ".join(sub.env_names) or "(none)"
    if args.dry_run:
        print(
            json.dumps(
                {
                    "submission_id": sub.base_id,
                    "entrypoint": sub.entrypoint,
                    "working_dir": sub.runtime_env["working_dir"],
                    "env_vars": sub.env_names,  # names only
                    "metadata": sub.metadata,
                    "entrypoint_num_cpus": sub.entrypoint_num_cpus,
                    "entrypoint_num_gpus": sub.entrypoint_num_gpus,
                },
                indent=2,
            )
        )
        return 0

    client = sj.connect(args.address)
    sj.check_shared_storage(cfg, args.address)
    result = sj.submit(client, sub, rerun=args.rerun)
    print(result.submission_id, flush=True)  # stdout: the id alone, for scripts
    if result.created:
        _note(
            f"submitted {result.submission_id} (attempt {result.attempt}, {cfg.stage} stage) with the working "
            f"directory {sub.runtime_env['working_dir']}: {sub.entrypoint}"
        )
        _note(f"environment passed through (values not shown): {names}")
    else:
        _note(
            f"an identical {cfg.stage} config was already submitted as {result.submission_id}: {result.status}; "
            "not submitted again (--rerun forces a new attempt)"
        )
    address = f" --address {args.address}" if args.address else ""
    if not (args.wait or args.follow):
        _note(f"follow it: sentiray jobs logs {result.submission_id} --follow{address}")
        return 0

    try:
        if args.follow:
            status = sj.follow(client, result.submission_id, sys.stdout, sub.secrets)
        else:
            status = sj.wait(client, result.submission_id, on_status=lambda s: _note(f"{result.submission_id}: {s}"))
    except KeyboardInterrupt:
        _note(f"stopped waiting; the job goes on. Stop it with: sentiray jobs stop {result.submission_id}{address}")
        return 130
    if status != "SUCCEEDED":
        _note(sj.error_tail(client, result.submission_id, secrets=sub.secrets))
    if args.follow:  # --wait has printed each status as it came
        _note(f"{result.submission_id}: {status}")
    retries = sj.job_retries(client, result.submission_id)
    if retries is not None and retries.line():
        _note(f"{result.submission_id}: {retries.line()}")
    return sj.EXIT_CODES.get(status, 1)


# --------------------------------------------------------------------------- jobs


@_cluster_errors
def cmd_jobs_list(args: argparse.Namespace) -> int:
    from sentiray.cluster import submit as sj

    rows = [sj.summary(job) for job in sj.list_jobs(sj.connect(args.address))]
    if not args.all:
        rows = [r for r in rows if r["config"] is not None]  # sentiray submit and its RayJobs set it
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no sentiray jobs on this cluster" + ("" if args.all else " (--all shows every job)"))
        return 0
    header = ("SUBMISSION ID", "STATUS", "STAGE", "NAME", "STARTED", "SECONDS", "ENTRYPOINT")
    table = [header] + [
        (
            r["submission_id"] or "-",
            r["status"],
            r["stage"] or "-",
            r["name"] or "-",
            r["start_time"] or "-",
            "-" if r["duration_s"] is None else f"{r['duration_s']:.0f}",
            r["entrypoint"][:80],
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return 0


@_cluster_errors
def cmd_jobs_logs(args: argparse.Namespace) -> int:
    from sentiray.cluster import submit as sj

    client = sj.connect(args.address)
    secrets = sj.job_secrets(sj.job_info(client, args.submission_id))
    if args.follow:
        try:
            status = sj.follow(client, args.submission_id, sys.stdout, secrets)
        except KeyboardInterrupt:
            return 130
        _note(f"{args.submission_id}: {status}")
        return sj.EXIT_CODES.get(status, 1)
    text = sj.logs(client, args.submission_id, secrets)
    if args.tail:
        text = "\n".join(text.rstrip("\n").splitlines()[-args.tail :]) + "\n"
    sys.stdout.write(text)
    return 0


@_cluster_errors
def cmd_jobs_stop(args: argparse.Namespace) -> int:
    from sentiray.cluster import submit as sj

    sent, status = sj.stop(sj.connect(args.address), args.submission_id, wait_s=0 if args.no_wait else args.timeout)
    if not sent and status in sj.TERMINAL:
        print(f"{args.submission_id} had already ended: {status}")
        return 0
    print(f"{args.submission_id}: {status}")
    if args.no_wait or status in sj.TERMINAL:
        return 0
    _note(f"error: {args.submission_id} is still {status} after {args.timeout:.0f}s")
    return 1


# --------------------------------------------------------------------------- k8s


@_cluster_errors
def cmd_k8s_render(args: argparse.Namespace) -> int:
    from sentiray.cluster import k8s

    text = k8s.render_file(
        args.source,
        args.overrides,
        cluster_config=args.cluster_config,
        name=args.name,
        entrypoint_num_cpus=args.entrypoint_num_cpus,
        entrypoint_num_gpus=args.entrypoint_num_gpus,
    )
    if args.output:
        k8s.write_atomically(args.output, text)
        _note(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


# --------------------------------------------------------------------------- parser


def _address(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address", help="the Ray dashboard, e.g. http://head:8265 (default: RAY_ADDRESS, else a local cluster)"
    )


def _nonneg_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_commands(sub) -> None:
    p = sub.add_parser(
        "submit",
        help="submit a stage's job YAML to a Ray cluster as a Ray job",
        description="Validate the job YAML here, then run `sentiray run CONFIG [overrides]` as a Ray job on the "
        "cluster, with the working directory uploaded and MLflow/S3/token variables passed through (names printed, "
        "values never). Exit code: 0 submitted (or SUCCEEDED with --wait/--follow), 1 FAILED, 3 STOPPED, 2 error.",
    )
    p.add_argument("config", help="job YAML inside the working directory, e.g. jobs/data.yaml")
    p.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="override config fields (values parsed as YAML)"
    )
    _address(p)
    p.add_argument("--working-dir", default=".", help="uploaded as the job's working directory (default .)")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME",
        help="also pass this environment variable (its value is taken from here; repeatable)",
    )
    p.add_argument(
        "--no-env",
        action="store_true",
        help="pass none of the allowlisted variables (MLFLOW_*, AWS_*, SENTIRAY_*, HF_TOKEN, ...): the cluster's "
        "own environment applies, e.g. the Secrets of a KubeRay cluster; --env names still pass",
    )
    p.add_argument("--entrypoint-num-cpus", type=_nonneg_float, help="CPUs reserved for the job's driver (default 0)")
    p.add_argument("--entrypoint-num-gpus", type=_nonneg_float, help="GPUs reserved for the job's driver (default 0)")
    p.add_argument("--entrypoint-memory", type=int, help="memory in bytes reserved for the job's driver")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--wait", action="store_true", help="wait for the job; exit code from its final state")
    mode.add_argument(
        "--follow", action="store_true", help="stream the job's logs until it ends; exit code from its final state"
    )
    p.add_argument(
        "--rerun", action="store_true", help="start a new attempt even if an identical config is running or succeeded"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the submission (id, entrypoint, variable names) and stop"
    )
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="list, read and stop the Ray jobs on a cluster")
    jsub = p.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    j = jsub.add_parser("list", help="jobs, newest last: id, status, stage, start, duration")
    _address(j)
    j.add_argument("--all", action="store_true", help="also jobs that sentiray did not submit")
    j.add_argument("--json", action="store_true")
    j.set_defaults(func=cmd_jobs_list)
    j = jsub.add_parser("logs", help="a job's logs")
    j.add_argument("submission_id")
    _address(j)
    j.add_argument("--follow", action="store_true", help="stream until the job ends; exit code from its final state")
    j.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    j.set_defaults(func=cmd_jobs_logs)
    j = jsub.add_parser("stop", help="stop a running job and wait until it has stopped")
    j.add_argument("submission_id")
    _address(j)
    j.add_argument("--no-wait", action="store_true", help="return once the stop is requested")
    j.add_argument("--timeout", type=float, default=60, help="seconds to wait for STOPPED (default 60)")
    j.set_defaults(func=cmd_jobs_stop)

    p = sub.add_parser("k8s", help="KubeRay manifests rendered from sentiray's own configs")
    ksub = p.add_subparsers(dest="k8s_command", required=True, metavar="ACTION")
    k = ksub.add_parser(
        "render",
        help="a Serve config -> RayService, a job YAML -> RayJob, on the cluster spec of k8s/raycluster.yaml",
        description="serve/X.yaml becomes a RayService whose spec.serveConfigV2 is that file's text; jobs/X.yaml "
        "[overrides] becomes a RayJob running `sentiray run jobs/X.yaml [overrides]` on its own cluster.",
    )
    k.add_argument("source", help="a Ray Serve config (serve/*.yaml) or a job YAML (jobs/*.yaml)")
    k.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="job YAML only: overrides put on the entrypoint"
    )
    k.add_argument(
        "--cluster-config",
        default="k8s/raycluster.yaml",
        help="the RayCluster whose spec is used (default k8s/raycluster.yaml)",
    )
    k.add_argument("--name", help="metadata.name (default sentiray-<file stem>)")
    k.add_argument(
        "--entrypoint-num-cpus",
        type=_nonneg_float,
        default=1.0,
        help="RayJob: CPUs for the driver; >0 keeps it off the head, whose num-cpus is 0 (default 1)",
    )
    k.add_argument(
        "--entrypoint-num-gpus", type=_nonneg_float, default=0.0, help="RayJob: GPUs for the driver (default 0)"
    )
    k.add_argument("-o", "--output", help="write here (atomically) instead of to stdout")
    k.set_defaults(func=cmd_k8s_render)
