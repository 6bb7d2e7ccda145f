"""Files attached to studies and trials, shown by optuna-dashboard: Optuna's artifact store.

``hpo retrain`` attaches ``metrics.json``, ``metrics.png`` and the exported spec to the trial it
retrained; ``hpo report`` attaches its plots to the study and writes its per-strategy table and
the plots into the study's note. ``hpo dashboard`` serves the same store, so the trial page
lists the files and the study page shows the note.

The store is a folder (Optuna's ``FileSystemArtifactStore``): ``execution.artifacts`` in the
study file, recorded on the study when a run opens it (user attribute ``artifacts_dir``), else
``artifacts/`` beside the SQLite file. A study on a server database without
``execution.artifacts`` has none: retrain and report say so and go on.

A finished trial takes no new system attributes in Optuna, so a retrain's files are recorded
the way optuna-dashboard records files uploaded to a trial from its own page, which it reads
for every trial: study system attribute ``dashboard:artifacts:<trial_id>:<artifact_id>``.
"""

from __future__ import annotations

import json
import mimetypes
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpo.errors import UserError

DIR_ATTR = "artifacts_dir"
"""Study user attribute: the folder of the study's artifact store (absolute)."""
TRIAL_FILES_PREFIX = "dashboard:artifacts:"
"""Study system attribute prefix under which optuna-dashboard lists a finished trial's files."""
NOTE_IMAGES_ATTR = "report_note_artifacts"
"""Study user attribute: PNG name -> artifact id of the report's plots (a later report rewrites them)."""


def default_dir(storage_url: str) -> Path | None:
    """``artifacts/`` beside an SQLite file; None for other storages and in-memory SQLite."""
    from hpo.storage import is_sqlite, sqlite_path

    if not is_sqlite(storage_url):
        return None
    db = sqlite_path(storage_url)
    return None if db == ":memory:" else Path(db).resolve().parent / "artifacts"


def configured_dir(spec: Any, storage_url: str) -> Path | None:
    """The study file's ``execution.artifacts`` (relative: to the file's folder), else the default."""
    explicit = spec.execution.artifacts
    if explicit:
        base = Path(spec.path).resolve().parent if spec.path else Path.cwd()
        return (base / Path(explicit).expanduser()).resolve()
    return default_dir(storage_url)


def record_dir(study: Any, spec: Any, storage_url: str) -> None:
    """Record the study's artifact folder on it (a run that names one replaces the old one)."""
    folder = configured_dir(spec, storage_url)
    if folder is not None and (spec.execution.artifacts or DIR_ATTR not in study.user_attrs):
        if study.user_attrs.get(DIR_ATTR) != str(folder):
            study.set_user_attr(DIR_ATTR, str(folder))


def study_dir(study: Any, storage_url: str) -> Path | None:
    """Where a study's artifacts are: its recorded folder, else the default."""
    recorded = study.user_attrs.get(DIR_ATTR)
    return Path(recorded) if recorded else default_dir(storage_url)


def open_store(folder: Path) -> Any:
    """Optuna's file-system artifact store in ``folder`` (created)."""
    from optuna.artifacts import FileSystemArtifactStore

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"artifacts: cannot create {folder} ({e.strerror or e})") from None
    return FileSystemArtifactStore(str(folder))


def dashboard_store(storage: Any, storage_url: str, explicit: str | None = None) -> tuple[Any, Path | None]:
    """The artifact store ``hpo dashboard`` serves: ``--artifacts``, else the default beside the
    SQLite file when it exists, else the folder a study of the storage recorded."""
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit).expanduser().resolve())
    else:
        default = default_dir(storage_url)
        if default is not None and default.is_dir():
            candidates.append(default)
        for s in storage.get_all_studies():
            recorded = s.user_attrs.get(DIR_ATTR)
            if recorded and Path(recorded).is_dir():
                candidates.append(Path(recorded))
    if not candidates:
        return None, None
    return open_store(candidates[0]), candidates[0]


def _write(store: Any, path: Path, artifact_id: str | None = None) -> dict[str, Any]:
    """Write ``path`` into the store (under ``artifact_id``: replacing that file's contents)."""
    artifact_id = artifact_id or str(uuid.uuid4())
    mimetype, encoding = mimetypes.guess_type(path.name)
    if mimetype is None and path.suffix == ".jsonl":  # sample generations; unknown to mimetypes
        mimetype = "application/jsonl"
    with path.open("rb") as f:
        store.write(artifact_id, f)
    return {
        "artifact_id": artifact_id,
        "filename": path.name,
        "mimetype": mimetype or "application/octet-stream",
        "encoding": encoding,
    }


def attach_to_trial(study: Any, trial: Any, folder: Path, files: list[Path]) -> list[str]:
    """Write ``files`` into the store and list them on ``trial`` (finished) in the dashboard.
    A file of the same name attached before (an earlier retrain) is replaced.

    Returns:
        The artifact ids, in the order of ``files``.
    """
    store = open_store(folder)
    prefix = f"{TRIAL_FILES_PREFIX}{trial._trial_id}:"
    attrs = study._storage.get_study_system_attrs(study._study_id)
    earlier = {json.loads(v)["filename"]: k[len(prefix) :] for k, v in attrs.items() if k.startswith(prefix)}
    ids = []
    for path in files:
        known = earlier.get(path.name)
        meta = _write(store, path, known)
        if known is None:
            study._storage.set_study_system_attr(
                study._study_id, prefix + meta["artifact_id"], json.dumps(meta)
            )
        ids.append(meta["artifact_id"])
    return ids


class RetrainTarget:
    """The trial a retrain attaches its files to (see :func:`retrain_target`)."""

    def __init__(self, study: Any, trial: Any, folder: Path):
        self.study, self.trial, self.folder = study, trial, folder

    def attach(self, files: list[Path], say: Callable[[str], None]) -> None:
        """Attach ``files``; a failure is a warning (the retrain itself is done)."""
        try:
            attach_to_trial(self.study, self.trial, self.folder, files)
        except Exception as e:
            print(f"warning: artifacts: not attached to the trial ({type(e).__name__}: {e})", file=sys.stderr)
            return
        say(
            f"attached {', '.join(p.name for p in files)} to trial {self.trial.number} of study "
            f"{self.study.study_name!r} (hpo dashboard shows them; store {self.folder})"
        )


def retrain_target(rspec: Any, storage: str | None) -> RetrainTarget | None:
    """The study trial a retrain came from, to attach its files to, checked before training.

    The storage is ``storage`` (``hpo retrain --storage``), else ``$HPO_STORAGE``, else the
    spec's ``provenance.storage`` (written by ``hpo export``, without its password).

    Raises:
        UserError: ``storage`` was given and the trial cannot be found there.
    """
    import os

    from hpo.storage import ENV_VAR, redact

    given = storage or os.environ.get(ENV_VAR) or None
    url = given or rspec.provenance.get("storage")
    if rspec.trial is None or not isinstance(url, str) or not url:
        return None
    try:
        if "***" in url:
            raise UserError(f"storage {url}: has no password (pass --storage or set {ENV_VAR})")
        from hpo.study import load_one

        study = load_one(url, rspec.study)
        trial = next((t for t in study.get_trials(deepcopy=False) if t.number == rspec.trial), None)
        if trial is None:
            raise UserError(f"study {rspec.study!r} in {redact(url)} has no trial {rspec.trial}")
        folder = study_dir(study, url)
        if folder is None:
            raise UserError(
                f"study {rspec.study!r} has no artifact folder (set execution.artifacts in its study file)"
            )
    except UserError as e:
        if given:
            raise UserError(f"--storage: cannot attach the retrain's files: {e}") from None
        print(f"note: the retrain's files are not attached to the trial: {redact(str(e))}", file=sys.stderr)
        return None
    return RetrainTarget(study, trial, folder)


def markdown_table(rows: list[dict[str, Any]], metric: str) -> str:
    """The per-strategy rows (:func:`hpo.results.strategy_rows`) as a Markdown table."""
    head = f"| strategy | trials | complete | pruned | failed | best {metric} | best trial | best parameters | median time |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        value = "" if r["best_value"] is None else f"{r['best_value']:.4f}"
        best = "" if r["best_trial"] is None else f"#{r['best_trial']}"
        time = "" if r["median_time_s"] is None else f"{r['median_time_s']:.1f} s"
        lines.append(
            f"| {r['strategy']} | {r['trials']} | {r['complete']} | {r['pruned'] + r['stopped']} | {r['fail']} "
            f"| {value} | {best} | {r['best_params']} | {time} |"
        )
    return "\n".join(lines)


def write_note(study: Any, storage_url: str, table: str, plots: list[tuple[str, Path]]) -> str:
    """Write the report into the study's note: the per-strategy table and the plots.

    The plots are attached to the study and shown in the note (a later report replaces the
    files of the same plots); without an artifact store the note has the table alone.

    Args:
        study: The Optuna study.
        storage_url: Its storage.
        table: The per-strategy table, as Markdown.
        plots: (title, PNG) of each plot.

    Returns:
        The note's Markdown.
    """
    from optuna_dashboard import save_note

    folder = study_dir(study, storage_url)
    parts = [f"## hpo report: {study.study_name}", "", table, ""]
    if folder is not None and plots:
        store = open_store(folder)
        earlier = dict(study.user_attrs.get(NOTE_IMAGES_ATTR) or {})
        ids = {}
        for title, png in plots:
            meta = _write(store, png, earlier.get(png.name))
            if png.name not in earlier:  # Optuna's own record of a study's file
                key = f"artifacts:{meta['artifact_id']}"
                study._storage.set_study_system_attr(study._study_id, key, json.dumps(meta))
            ids[png.name] = meta["artifact_id"]
            parts += [
                f"### {title}",
                "",
                f"![{title}](/artifacts/{study._study_id}/{meta['artifact_id']})",
                "",
            ]
        study.set_user_attr(NOTE_IMAGES_ATTR, {**earlier, **ids})
    elif plots:
        parts.append("(plots: no artifact store for this study; see `hpo report`'s folder)")
    body = "\n".join(parts)
    save_note(study, body)
    return body
