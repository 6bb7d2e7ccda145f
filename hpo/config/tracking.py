"""``tracking:``: where trials (and retrains) are logged besides the study's own storage.

Study files and retraining specs take the same section; ``--tracking`` on ``hpo run`` and
``hpo retrain`` replaces it kind by kind. What is logged: :mod:`hpo.tracking`.

    tracking:
      mlflow: {uri: http://127.0.0.1:5000, experiment: sst2}   # experiment: default the study name
      tensorboard: runs/tb                                      # DIR/<study>/trial-<N>
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.config.fields import ConfigError, Err

KINDS = ("mlflow", "tensorboard")
"""The tracking kinds a ``tracking:`` mapping may hold."""
PACKAGES = {"mlflow": "mlflow", "tensorboard": "tensorboard"}
"""Kind -> the package it needs (installed by the ``tracking`` extra)."""


@dataclass(frozen=True)
class MlflowSpec:
    """An MLflow tracking server (or store) and experiment."""

    uri: str | None = None
    """Tracking URI: ``http://HOST:PORT``, a folder, ``sqlite:///mlflow.db``; default MLflow's
    own (``$MLFLOW_TRACKING_URI``, else ``./mlruns``)."""
    experiment: str | None = None
    """Experiment name; default the study's name."""


@dataclass(frozen=True)
class TrackingSpec:
    """Experiment tracking of a study or a retrain; empty: none."""

    mlflow: MlflowSpec | None = None
    """One MLflow run per study, one nested run per trial; a retrain is a run of its own."""
    tensorboard: str | None = None
    """Folder (absolute) of TensorBoard event files: ``<folder>/<study>/trial-<N>``."""

    @property
    def enabled(self) -> bool:
        """Whether anything is tracked."""
        return self.mlflow is not None or self.tensorboard is not None


def parse_tracking(raw: Any, err: Err, base_dir: Path | None = None) -> TrackingSpec:
    """Validate a ``tracking:`` mapping; relative folders resolve against ``base_dir``.

    Args:
        raw: The mapping as read (None: no tracking).
        err: Receives ``tracking.key: problem`` lines.
        base_dir: Folder relative paths resolve against (default the current folder).
    """
    if raw is None:
        return TrackingSpec()
    if not isinstance(raw, dict):
        err(f"tracking: expected a mapping with {' and/or '.join(KINDS)}, got {raw!r}")
        return TrackingSpec()
    for key in raw:
        if key not in KINDS:
            err(f"tracking.{key}: unknown key (known: {', '.join(KINDS)})")
    for kind in KINDS:
        if raw.get(kind) is not None and importlib.util.find_spec(PACKAGES[kind]) is None:
            err(
                f"tracking.{kind}: needs the {PACKAGES[kind]} package, which is not installed "
                "(pip install 'hpo[tracking]')"
            )
    mlflow = _parse_mlflow(raw.get("mlflow"), err)
    tensorboard = raw.get("tensorboard")
    if tensorboard is not None:
        if not isinstance(tensorboard, str) or not tensorboard.strip():
            err(f"tracking.tensorboard: expected a folder, got {tensorboard!r}")
            tensorboard = None
        else:
            tensorboard = str(((base_dir or Path.cwd()) / Path(tensorboard).expanduser()).resolve())
    return TrackingSpec(mlflow=mlflow, tensorboard=tensorboard)


def _parse_mlflow(raw: Any, err: Err) -> MlflowSpec | None:
    if raw is None:
        return None
    if isinstance(raw, str):  # mlflow: URI
        raw = {"uri": raw}
    if raw is True:
        raw = {}
    if not isinstance(raw, dict):
        err(f"tracking.mlflow: expected a mapping {{uri: ..., experiment: ...}} or a URI, got {raw!r}")
        return None
    for key in raw:
        if key not in ("uri", "experiment"):
            err(f"tracking.mlflow.{key}: unknown key (known: experiment, uri)")
    values: dict[str, str | None] = {}
    for key in ("uri", "experiment"):
        v = raw.get(key)
        if v is not None and (not isinstance(v, str) or not v.strip()):
            err(f"tracking.mlflow.{key}: expected a non-empty string, got {v!r}")
            v = None
        values[key] = v
    return MlflowSpec(uri=values["uri"], experiment=values["experiment"])


def tracking_dict(spec: TrackingSpec) -> dict[str, Any]:
    """``tracking:`` as a file writes it (folders absolute); empty when nothing is tracked."""
    out: dict[str, Any] = {}
    if spec.mlflow is not None:
        out["mlflow"] = {
            k: v for k, v in (("uri", spec.mlflow.uri), ("experiment", spec.mlflow.experiment)) if v
        }
    if spec.tensorboard is not None:
        out["tensorboard"] = spec.tensorboard
    return out


def tracking_flags(pairs: list[str] | None) -> dict[str, Any] | None:
    """``--tracking`` values as a ``tracking:`` mapping (None when there are none).

    ``mlflow=URI``, ``mlflow.experiment=NAME`` and ``tensorboard=DIR``.

    Raises:
        ValueError: a value of another form (the message names it).
    """
    if not pairs:
        return None
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not value.strip():
            raise ValueError(f"expected mlflow=URI, mlflow.experiment=NAME or tensorboard=DIR, got {pair!r}")
        if key in ("mlflow", "mlflow.uri", "mlflow.experiment"):
            out.setdefault("mlflow", {})["experiment" if key.endswith("experiment") else "uri"] = value
        elif key == "tensorboard":
            out["tensorboard"] = value
        else:
            raise ValueError(
                f"unknown tracking {key!r} in {pair!r} (expected mlflow=URI, mlflow.experiment=NAME or tensorboard=DIR)"
            )
    return out


def merge_tracking(spec: TrackingSpec, flags: dict[str, Any], err: Err) -> TrackingSpec:
    """``spec`` with the kinds ``flags`` names replaced (``--tracking``; folders: the current one)."""
    given = parse_tracking(flags, err)
    mlflow = spec.mlflow
    if "mlflow" in flags and given.mlflow is not None:
        base = mlflow or MlflowSpec()
        mlflow = MlflowSpec(
            uri=given.mlflow.uri if "uri" in flags["mlflow"] else base.uri,
            experiment=given.mlflow.experiment if "experiment" in flags["mlflow"] else base.experiment,
        )
    tensorboard = given.tensorboard if "tensorboard" in flags else spec.tensorboard
    return TrackingSpec(mlflow=mlflow, tensorboard=tensorboard)


def apply_tracking(spec: Any, flags: dict[str, Any] | None) -> Any:
    """A study or retraining spec with ``--tracking`` applied (the kinds it names replace the
    file's; relative folders: the current one); ``spec`` itself when ``flags`` is empty.

    Raises:
        ConfigError: a bad tracking value.
    """
    if not flags:
        return spec
    problems: list[str] = []
    merged = merge_tracking(spec.tracking, flags, lambda msg: problems.append(f"--tracking: {msg}"))
    if problems:
        raise ConfigError(problems)
    return dataclasses.replace(spec, tracking=merged)
