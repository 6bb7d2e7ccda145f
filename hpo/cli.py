"""Command line: parse, call library functions, map errors to exit codes. Nothing else.

Exit codes: 0 success, 1 user error (one line, no traceback), 2 internal error.
Heavy packages (torch, transformers, ray) are imported only by the commands that train.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import traceback
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpo.errors import UserError


def _overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``--set a.b=value`` pairs; values are read as YAML (numbers, lists, true/false)."""
    from hpo._yaml import YamlError, loads_yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set: expected key=value, got {pair!r}")
        try:
            out[key.strip()] = loads_yaml(value, f"--set {key}")
        except YamlError as e:
            raise UserError(str(e)) from None
    return out


def _tracking(pairs: list[str] | None) -> dict[str, Any] | None:
    """``--tracking mlflow=URI`` / ``mlflow.experiment=NAME`` / ``tensorboard=DIR`` as a mapping."""
    from hpo.config import tracking_flags

    try:
        return tracking_flags(pairs)
    except ValueError as e:
        raise UserError(f"--tracking: {e}") from None


def _storage(args: argparse.Namespace) -> str:
    """The storage URL of a command without a study file (flag > HPO_STORAGE > default)."""
    from hpo.options import resolve_storage

    return resolve_storage(getattr(args, "storage", None))


def _storage_from_file(args: argparse.Namespace) -> None:
    """``--storage-file FILE``: the URL is read from the file, as if given with ``--storage``."""
    path = getattr(args, "storage_file", None)
    if path is None:
        return
    if getattr(args, "storage", None):
        raise UserError("--storage and --storage-file: give one of them")
    from hpo.options import read_storage_file

    args.storage = read_storage_file(path)


def _load(args: argparse.Namespace) -> Any:
    from hpo.api import load_study

    overrides = _overrides(getattr(args, "set", None))
    if getattr(args, "study_name", None):
        overrides["name"] = args.study_name
    return load_study(args.study, overrides)


# --------------------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace) -> int:
    from hpo._yaml import YamlError, load_yaml
    from hpo.config import ConfigError, load_space_file, load_study
    from hpo.data import is_hub_source

    def hub_note(data: Any) -> None:
        if is_hub_source(data):
            print(f"  data: hub dataset {data.source!r} not read (hpo validate does not download)")

    problems: list[str] = []
    for f in args.files:
        try:
            raw = load_yaml(f)
        except YamlError as e:
            problems.append(str(e))
            continue
        try:
            if isinstance(raw, dict) and raw.get("kind") == "retrain":
                from hpo.config import load_retrain_spec

                rspec = load_retrain_spec(f, read_data=True)
                print(f"{f}: ok (retraining spec: {rspec.summary()})")
                hub_note(rspec.data)
            elif isinstance(raw, dict) and "strategy" in raw and "name" not in raw:
                space = load_space_file(f)
                print(f"{f}: ok (search space)\n{space.describe()}")
            else:
                spec = load_study(f, read_data=True)
                print(f"{f}: ok (study {spec.name!r}: {spec.summary()})")
                hub_note(spec.data)
                print(spec.space.describe())
        except ConfigError as e:
            problems.extend(e.problems)
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        print(f"hpo validate: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Optimize; exit 1 (after the summary) when no trial of this run completed or was pruned."""
    from hpo.api import run

    run(
        _load(args),
        storage=args.storage,
        n_trials=args.n_trials,
        workers=args.workers,
        timeout=args.timeout,
        backend=args.backend,
        gpus=args.gpus,
        trials_per_gpu=args.trials_per_gpu,
        address=args.address,
        warm_start=args.warm_start,
        top=args.top,
        tracking=_tracking(args.tracking),
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from hpo.drivers.worker import run_worker
    from hpo.options import resolve_options
    from hpo.storage import ENV_VAR

    spec = _load(args)
    opts = resolve_options(vars(args), spec)
    if not (args.storage or os.environ.get(ENV_VAR) or spec.storage):
        raise UserError(
            "hpo worker joins a shared study: give its storage with --storage URL, "
            f"--storage-file FILE or ${ENV_VAR}"
        )
    run_worker(
        spec,
        opts.storage,
        n_trials=opts.n_trials,
        timeout=opts.timeout,
        create=True,  # every node of an array job runs the same command; the first creates the study
        worker_index=1,
        sampler_salt=f"{socket.gethostname()}:{os.getpid()}",  # no two joining workers sample alike
        threads=args.threads or "auto",
    )
    return 0


def cmd_studies(args: argparse.Namespace) -> int:
    from hpo.compare import list_studies
    from hpo.display import format_table

    rows = list_studies(_storage(args))
    print(format_table(rows) if rows else "no studies")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from hpo.compare import compare

    print(compare(_storage(args), args.names, by=args.by, fmt=args.format))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hpo.api import report as write_report

    report = write_report(args.name, Path(args.output), _storage(args), note=not args.no_note)
    for path in report.paths:
        print(path)
    for note in report.skipped:
        print(f"skipped {note}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from hpo.api import export

    path = export(args.name, Path(args.output), _storage(args), trial=args.trial, pick=args.pick)
    print(f"wrote {path}")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from hpo.api import retrain

    retrain(
        args.file,
        args.output,
        _overrides(args.set),
        overwrite=args.overwrite,
        tracking=_tracking(args.tracking),
    )
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from hpo.dashboard import serve

    serve(_storage(args), host=args.host, port=args.port, artifacts=args.artifacts)
    return 0


# --------------------------------------------------------------------------- parser


class UsageError(UserError):
    """A bad command line (unknown flag, missing argument, bad value): argparse's one-line message."""


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are user errors: one line, exit status 1 (argparse's own
    ``error`` prints the whole usage and exits 2, which the exit-code contract gives to internal
    errors). ``--help`` still prints and exits 0."""

    commands: dict[str, argparse.ArgumentParser]
    """Command name -> its parser (set on the top-level parser by :func:`build_parser`)."""

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(f"{self.prog}: error: {message}")


def _workers(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _gpus(value: str) -> list[int]:
    try:
        gpus = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of GPU indices, got {value!r}"
        ) from None
    if not gpus:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of GPU indices, got {value!r}")
    bad = [g for g in gpus if g < 0]
    if bad:
        raise argparse.ArgumentTypeError(f"GPU indices must be >= 0, got {bad[0]}")
    return gpus


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low`` (1: positive, 0: non-negative)."""
    expected = "a positive integer" if low == 1 else f"an integer >= {low}"

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {n}")
        return n

    return parse


_positive = _int_at_least(1)
_non_negative = _int_at_least(0)


def _seconds(value: str) -> float:
    """A timeout: a finite number of seconds > 0 (the study file's budget.timeout rule)."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not math.isfinite(x) or x <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {value}")
    return x


def _port(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a TCP port number, got {value!r}") from None
    if not 1 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port 1..65535, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hpo", description="Hyperparameter search over how to fine-tune language models.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tracking_help = (
        "log to MLflow or TensorBoard besides the study: mlflow=URI, mlflow.experiment=NAME, "
        "tensorboard=DIR (repeatable; replaces the file's tracking: of that kind)"
    )
    storage_help = (
        "storage URL (default: $HPO_STORAGE, the study file's storage:, else sqlite:///studies/hpo.db)"
    )
    file_help = "read the storage URL from FILE (keeps a password out of the process list)"

    r = sub.add_parser("run", help="create or resume a study and optimize")
    r.add_argument("study", help="study file (studies/*.yaml)")
    r.add_argument("--storage", help=storage_help)
    r.add_argument("--storage-file", metavar="FILE", help=file_help)
    r.add_argument("--study-name", help="override the study's name")
    r.add_argument("--n-trials", type=_positive, help="trials to add (default: budget.n_trials)")
    r.add_argument("--timeout", type=_seconds, help="stop starting trials after this many seconds")
    r.add_argument("--workers", type=_workers, help="local worker processes: N or auto")
    r.add_argument("--gpus", type=_gpus, help="GPU indices, e.g. 0,1,2,3")
    r.add_argument("--trials-per-gpu", type=_positive, default=None, help="trials packed per GPU")
    r.add_argument("--backend", choices=["optuna", "ray"], default="optuna")
    r.add_argument("--address", help="Ray cluster address HOST:PORT (with --backend ray)")
    r.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a study key, e.g. budget.n_trials=5"
    )
    r.add_argument(
        "--warm-start",
        metavar="NAME[@STORAGE]",
        help="first train the best trials of an earlier study (default storage: this run's)",
    )
    r.add_argument("--top", type=_positive, help="how many of its best trials (default 3)")
    r.add_argument("--tracking", action="append", metavar="KIND=TARGET", help=tracking_help)
    r.set_defaults(func=cmd_run)

    w = sub.add_parser("worker", help="join the study as one more worker (creating it if it does not exist)")
    w.add_argument("study")
    w.add_argument("--storage", help="the shared storage URL (or --storage-file, or $HPO_STORAGE)")
    w.add_argument("--storage-file", metavar="FILE", help=file_help)
    w.add_argument("--study-name", help="override the study's name")
    w.add_argument("--n-trials", type=_positive)
    w.add_argument("--timeout", type=_seconds, help="stop starting trials after this many seconds")
    w.add_argument(
        "--threads",
        type=_positive,
        help="torch threads (default: $OMP_NUM_THREADS, else the cores shared by this host's hpo workers)",
    )
    w.add_argument("--set", action="append", metavar="KEY=VALUE")
    w.set_defaults(func=cmd_worker)

    v = sub.add_parser("validate", help="check study, search-space and retraining files")
    v.add_argument("files", nargs="+")
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("studies", help="list studies in a storage")
    s.add_argument("--storage", help=storage_help)
    s.add_argument("--storage-file", metavar="FILE", help=file_help)
    s.set_defaults(func=cmd_studies)

    c = sub.add_parser("compare", help="compare studies side by side")
    c.add_argument("names", nargs="+")
    c.add_argument("--storage", help=storage_help)
    c.add_argument("--storage-file", metavar="FILE", help=file_help)
    c.add_argument(
        "--by",
        choices=["study", "strategy", "pareto"],
        default="study",
        help="pareto: the Pareto front of each multi-objective study, one row per trial",
    )
    c.add_argument("--format", choices=["table", "json", "csv"], default="table")
    c.set_defaults(func=cmd_compare)

    rp = sub.add_parser("report", help="write plots of a study (PNG and HTML)")
    rp.add_argument("name")
    rp.add_argument("-o", "--output", required=True, help="output folder")
    rp.add_argument("--storage", help=storage_help)
    rp.add_argument("--storage-file", metavar="FILE", help=file_help)
    rp.add_argument(
        "--no-note",
        action="store_true",
        help="do not write the table and plots into the study's dashboard note",
    )
    rp.set_defaults(func=cmd_report)

    e = sub.add_parser("export", help="write a retraining spec of the best (or given) trial")
    e.add_argument("name")
    e.add_argument("-o", "--output", required=True, help="output YAML file")
    e.add_argument("--trial", type=_non_negative, help="trial number (default: the best)")
    e.add_argument(
        "--pick",
        help="choose a point on the Pareto front, e.g. \"f1 >= 0.85, min trainable_params\"",
    )
    e.add_argument("--storage", help=storage_help)
    e.add_argument("--storage-file", metavar="FILE", help=file_help)
    e.set_defaults(func=cmd_export)

    rt = sub.add_parser("retrain", help="train an exported config, evaluate on test, save the model")
    rt.add_argument("file")
    rt.add_argument("-o", "--output", help="output folder (default: runs/<study>-trial<N>)")
    rt.add_argument("--set", action="append", metavar="KEY=VALUE", help="e.g. training.num_train_epochs=3")
    rt.add_argument(
        "--overwrite",
        action="store_true",
        help="use an output folder that already holds files: replace the model, metrics.json, "
        "config.yaml and metrics.png there (other files stay)",
    )
    rt.add_argument("--tracking", action="append", metavar="KIND=TARGET", help=tracking_help)
    rt.add_argument(
        "--storage",
        help="the study's storage, to attach metrics and chart to the trial in the dashboard "
        "(default: $HPO_STORAGE, else the spec's provenance.storage)",
    )
    rt.set_defaults(func=cmd_retrain)

    d = sub.add_parser("dashboard", help="serve optuna-dashboard on the storage")
    d.add_argument("--storage", help=storage_help)
    d.add_argument("--storage-file", metavar="FILE", help=file_help)
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=_port, default=8080, help="TCP port 1..65535 (default 8080)")
    d.add_argument(
        "--artifacts",
        help="artifact store folder (default: artifacts/ beside the SQLite file, else the studies' execution.artifacts)",
    )
    d.set_defaults(func=cmd_dashboard)
    p.commands = dict(sub.choices)
    return p


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; an unknown flag is reported by the command's own parser (``hpo run:
    error: unrecognized arguments: ...``), not by the top-level one."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        commands = getattr(parser, "commands", {})
        commands.get(getattr(args, "command", None), parser).error(
            f"unrecognized arguments: {' '.join(extra)}"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hpo`` console script."""
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except UsageError as e:
        from hpo.storage import redact

        print(redact(str(e)), file=sys.stderr)
        return 1
    try:
        _storage_from_file(args)
        return int(args.func(args))
    except UserError as e:
        from hpo.storage import redact

        print(f"hpo {args.command}: error: {redact(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hpo {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `hpo compare ... | head`: the reader left; nothing is wrong with the command.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as e:
        from hpo.storage import redact

        print(redact(traceback.format_exc()), file=sys.stderr)
        print(f"hpo {args.command}: internal error: {redact(str(e))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
