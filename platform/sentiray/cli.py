"""The ``sentiray`` command line.

sentiray demo                          the three chains on CPU with tiny models
sentiray run jobs/X.yaml [a.b=c ...]   run the stage a job YAML names
sentiray pipeline jobs/pipeline.yaml [--address URL]   the stages in order, finished ones skipped
sentiray data prepare ... / stats URI  canonical data sets
sentiray models tiny OUT               tiny HF models for tests and the demo
sentiray config show FILE [a.b=c ...]  print the resolved, validated config
sentiray submit jobs/X.yaml [a.b=c ...] --address URL [--wait|--follow]   a stage as a Ray job
sentiray jobs list | logs ID [--follow] | stop ID                         the cluster's jobs
sentiray k8s render serve/X.yaml | jobs/X.yaml [a.b=c ...] [-o FILE]      KubeRay manifests
sentiray serve serve/student.yaml [a.b=c ...]    the student behind an autoscaled endpoint
sentiray loadtest URL --concurrency N --duration S   requests/s and latency percentiles
sentiray score --task TASK FILE [--json]          the field's metrics of a predictions file
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

from sentiray.config import ConfigError
from sentiray.stages import STAGES


def _print_yaml(obj: Any) -> None:
    import yaml

    print(yaml.safe_dump(obj, sort_keys=False).rstrip())


def _warn_if_lost_in_ray_job(cfg) -> None:
    """Inside a Ray job the working directory is a temporary copy: relative outputs vanish."""
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        return
    from sentiray.cluster.submit import lost_output_warnings

    for warning in lost_output_warnings(cfg, os.environ):
        print(f"warning: {warning}", file=sys.stderr)


# --------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    from sentiray import config, stages

    cfg = config.load(args.config, args.overrides)
    if args.expect_stage and cfg.stage != args.expect_stage:
        raise ConfigError(f"{args.config} is a {cfg.stage!r} job, not {args.expect_stage!r}: use `sentiray run`")
    stages.stage_function(cfg.stage)  # unknown stage fails before any work starts
    _warn_if_lost_in_ray_job(cfg)
    summary = stages.run_stage(cfg)
    if args.json:
        print(json.dumps(summary, default=str, indent=2))
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from sentiray import config

    print(config.to_yaml(config.load(args.config, args.overrides)).rstrip())
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from sentiray import config, stages
    from sentiray.data import storage

    def path_arg(uri: str | None) -> str | None:
        # Paths typed on the command line are relative to the current directory (in a YAML
        # they are relative to storage.root).
        return uri if uri is None or storage.is_remote(uri) else os.path.abspath(uri)

    data: dict[str, Any] = {"format": args.format, "output": path_arg(args.output)}
    args.input, args.features = path_arg(args.input), path_arg(args.features)
    for key in ("input", "task", "size", "seed", "image_mode", "features"):
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    if args.overwrite:
        data["overwrite"] = True
    raw = config.apply_overrides({"stage": "data", "data": data}, args.overrides)
    cfg = config.validate(raw, source="sentiray data prepare")
    stages.run_stage(cfg)
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from sentiray.data.schema import dataset_stats

    stats = dataset_stats(args.uri)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"{stats['uri']}  source={stats['source']}  task={stats['task']}  rejects={stats['rejects']}")
    for split, entry in stats["splits"].items():
        labels = ", ".join(f"{k}={v}" for k, v in entry["labels"].items())
        cov = ", ".join(f"{k}={v}" for k, v in entry["coverage"].items() if v)
        print(f"  {split:<5} rows={entry['rows']:<6} labels: {labels or '-'}")
        print(f"        with: {cov}")
        if "score" in entry:
            s = entry["score"]
            print(f"        score: min={s['min']:.2f} max={s['max']:.2f} mean={s['mean']:.2f}")
    if stats["reject_reasons"]:
        print(f"  reject reasons: {stats['reject_reasons']}")
    return 0


def cmd_models_tiny(args: argparse.Namespace) -> int:
    from sentiray.models.tiny import build_tiny_models

    paths = build_tiny_models(args.out, seed=args.seed)
    for kind, path in paths.items():
        print(f"{kind:<10} {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from sentiray.demo import FAMILIES, DemoFailed, run_demo

    families = tuple(args.family) if args.family else FAMILIES
    try:
        run_demo(
            workdir=args.workdir,
            fresh=args.fresh,
            families=families,
            size=args.size,
            epochs=args.epochs,
            teacher_steps=args.teacher_steps,
            serve=not args.no_serve,
            verbose=args.verbose,
        )
    except DemoFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- parser


# Stage commands, shown only for stages this version implements.
_STAGE_HELP = {
    "rationales": "have the teacher write reasoning chains for a data set (Ray Data)",
    "train": "train an assistant or a student (Ray Train + DeepSpeed)",
    "augment": "have the trained assistant write chains; merge the correct ones",
    "evaluate": "classification and reasoning metrics, report and plots",
    "tune": "sweep hyperparameters (Ray Tune)",
}
STAGE_COMMANDS = {k: v for k, v in _STAGE_HELP.items() if k in STAGES}
COMMAND_MODULES: list[str] = [
    "sentiray.pipeline",
    "sentiray.cluster.commands",
    "sentiray.serving.app",
    "sentiray.clients.loadtest",
    "sentiray.evaluate.score",
]


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="override config fields (values parsed as YAML)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sentiray", description="Multimodal sentiment reasoning distillation on Ray.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the three methods' chains on CPU with tiny models and synthetic data")
    p.add_argument(
        "--family",
        action="append",
        choices=["mulcot", "lrsa", "mse"],
        help="run this chain only (repeatable; default: mulcot, lrsa and mse)",
    )
    p.add_argument("--workdir", default="runs/demo", help="where the demo writes (default runs/demo)")
    p.add_argument("--fresh", action="store_true", help="delete the workdir first instead of reusing finished stages")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's, DeepSpeed's and torch's own output live (by default it goes to WORKDIR/demo.log)",
    )
    p.add_argument("--no-serve", dest="no_serve", action="store_true", help="skip serving the MulCoT student")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="synthetic samples of every chain's data (default: the demo's sizes, see sentiray/demo.py)",
    )
    p.add_argument("--epochs", type=int, default=None, help="training epochs of every trained model")
    p.add_argument(
        "--teacher-steps",
        dest="teacher_steps",
        type=int,
        default=None,
        help="optimizer steps fitting the demo's stand-in models (teachers, MSE backbone); with it, the "
        "chains a weaker teacher gets wrong are trained on too (teacher.keep_disagreeing_pass2)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run the stage that a job YAML names (locally or inside a Ray job)")
    p.add_argument("config", help="job YAML, e.g. jobs/data.yaml")
    _add_overrides(p)
    p.add_argument("--json", action="store_true", help="print the stage summary as JSON")
    p.set_defaults(func=cmd_run, expect_stage=None)

    # `sentiray <stage> FILE` = `sentiray run FILE`, checking that FILE is that stage's job.
    for stage, text in STAGE_COMMANDS.items():
        p = sub.add_parser(stage, help=text)
        p.add_argument("config", help=f"a {stage} job YAML")
        _add_overrides(p)
        p.add_argument("--json", action="store_true", help="print the stage summary as JSON")
        p.set_defaults(func=cmd_run, expect_stage=stage)

    p = sub.add_parser("config", help="inspect configs")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = csub.add_parser("show", help="print the resolved, validated config")
    c.add_argument("config")
    _add_overrides(c)
    c.set_defaults(func=cmd_config_show)

    p = sub.add_parser("data", help="prepare and inspect canonical data sets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    d = dsub.add_parser("prepare", help="read a public data set (or generate one) into the canonical Parquet form")
    d.add_argument(
        "--format",
        required=True,
        help="synthetic, twitter2015, twitter2017, mabsa_json, mvsa_single, "
        "mvsa_multiple, mosi, mosei, sims, simsv2, meld",
    )
    d.add_argument("--input", help="folder of the public data set (not for synthetic)")
    d.add_argument("--output", required=True, help="URI of the canonical data set (local path or s3://)")
    d.add_argument("--task", help="synthetic: msc, masc, mabsa, msa or erc")
    d.add_argument("--size", type=int, help="synthetic: number of samples")
    d.add_argument("--seed", type=int)
    d.add_argument("--image-mode", dest="image_mode", choices=["bytes", "uri"])
    d.add_argument("--features", help="meld: pickle of audio/video features")
    d.add_argument("--overwrite", action="store_true", help="rewrite a complete output")
    _add_overrides(d)
    d.set_defaults(func=cmd_data_prepare)
    d = dsub.add_parser("stats", help="counts per split and label, modality coverage")
    d.add_argument("uri")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_data_stats)

    p = sub.add_parser("models", help="model utilities")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    m = msub.add_parser("tiny", help="build tiny models (VLM, causal LM, encoder) in HF format")
    m.add_argument("out")
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=cmd_models_tiny)

    # Commands that live beside their feature: each module has add_commands(subparsers)
    # and imports its heavy dependencies inside the handlers, so --help stays fast.
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)

    return parser


def main(argv: list[str] | None = None) -> int:
    from sentiray.data.schema import DataError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # Imported here, not above: the teacher pipeline is heavy and most commands never raise it.
        from sentiray.teacher.pipeline import RationalesIncomplete

        if not isinstance(exc, RationalesIncomplete):
            raise
        print(f"error: {exc}", file=sys.stderr)  # work left (teacher rejects, a busy output): a rerun continues
        return 1


if __name__ == "__main__":
    sys.exit(main())
