"""Run options and where each comes from: flag > environment > study file > default.

The rule is written once, in :func:`resolve_option`; :data:`OPTIONS` says per option which
environment variable and which study-file key may set it, and its default. ``hpo run`` and
``hpo worker`` resolve every option once (:func:`resolve_options`) and pass the values down:
the drivers (:func:`hpo.drivers.local.launch`, :func:`hpo.drivers.ray.run_ray`,
:func:`hpo.drivers.worker.run_worker`) take them as given. Commands without a study file ask for the
storage alone (:func:`resolve_storage`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hpo.config import BudgetSpec, ExecutionSpec, StudySpec
from hpo.storage import DEFAULT_STORAGE, ENV_VAR


@dataclass(frozen=True)
class Option:
    """Where one run option may come from besides its command-line flag."""

    file: Callable[[StudySpec], Any]
    """Its value in a study file (the section's default when the file leaves the key out)."""
    default: Any
    """The value when neither flag, environment nor study file sets it."""
    env: str | None = None
    """The environment variable that sets it, if any (its value is used as the string it is)."""


@dataclass(frozen=True)
class RunOptions:
    """The options of one ``hpo run`` / ``hpo worker``, resolved (see :func:`resolve_options`)."""

    storage: str
    """Storage URL: ``--storage``, ``$HPO_STORAGE``, the file's ``storage:``, else sqlite:///studies/hpo.db."""
    workers: int | str
    """Local worker processes, N or auto: ``--workers``, ``execution.workers``, else 1."""
    n_trials: int
    """Trials this run adds: ``--n-trials``, ``budget.n_trials``, else 20."""
    timeout: float | None
    """Seconds after which no new trial starts: ``--timeout``, ``budget.timeout``, else none."""
    gpus: list[int] | None
    """GPU indices: ``--gpus``, ``execution.gpus``, else None (every visible GPU)."""
    trials_per_gpu: int
    """Trials packed on one GPU: ``--trials-per-gpu``, ``execution.trials_per_gpu``, else 1."""


OPTIONS: dict[str, Option] = {
    "storage": Option(lambda s: s.storage, DEFAULT_STORAGE, env=ENV_VAR),
    "workers": Option(lambda s: s.execution.workers, ExecutionSpec.workers),
    "n_trials": Option(lambda s: s.budget.n_trials, BudgetSpec.n_trials),
    "timeout": Option(lambda s: s.budget.timeout, BudgetSpec.timeout),
    "gpus": Option(lambda s: s.execution.gpus, ExecutionSpec.gpus),
    "trials_per_gpu": Option(lambda s: s.execution.trials_per_gpu, ExecutionSpec.trials_per_gpu),
}
"""Option name (a :class:`RunOptions` field and the flag's argparse name) -> where it comes from."""


def resolve_option(
    name: str, flag: Any = None, file_value: Any = None, env: Mapping[str, str] | None = None
) -> Any:
    """One option by the precedence rule: the flag, else its environment variable, else the
    study file's value, else its default. A source counts as set unless it is None or "" (an
    empty ``HPO_STORAGE=`` or ``--storage ""`` does not count).

    Args:
        name: A key of :data:`OPTIONS`.
        flag: The command-line value (None: not given).
        file_value: The study file's value (None: no file or the file does not set it).
        env: The environment (default ``os.environ``).
    """
    option = OPTIONS[name]
    environ = os.environ if env is None else env
    from_env = environ.get(option.env) if option.env else None
    for value in (flag, from_env, file_value):
        if value is not None and value != "":
            return value
    return option.default


def resolve_options(
    flags: Mapping[str, Any], spec: StudySpec | None = None, env: Mapping[str, str] | None = None
) -> RunOptions:
    """Every run option by :func:`resolve_option`.

    Args:
        flags: Option name -> command-line value (``vars(args)``; a missing name is not given).
        spec: The study file, if the command has one.
        env: The environment (default ``os.environ``).
    """
    values = {
        name: resolve_option(name, flags.get(name), None if spec is None else option.file(spec), env)
        for name, option in OPTIONS.items()
    }
    return RunOptions(**values)


def resolve_storage(flag: str | None = None, file_value: str | None = None) -> str:
    """The storage URL: ``--storage``, else ``HPO_STORAGE``, else the study file's, else the default."""
    return str(resolve_option("storage", flag, file_value))


def read_storage_file(path: str) -> str:
    """The storage URL in ``path``: its first line that is neither blank nor a ``#`` comment.

    A URL with a password belongs in a file readable by its owner only (``chmod 600``), given
    with ``--storage-file``, or in ``HPO_STORAGE``: a command-line argument is visible to every
    user of the machine (``ps``) and to Ray's job records.

    Raises:
        UserError: the file cannot be read or holds no URL (the message never shows its content).
    """
    from pathlib import Path

    from hpo.errors import UserError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"--storage-file {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--storage-file {path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            if "://" not in line:
                raise UserError(f"--storage-file {path}: the first line is not a URL (expected scheme://...)")
            return line
    raise UserError(f"--storage-file {path}: no storage URL in the file")
