"""The one YAML loader: safe, duplicate keys rejected, ``1e-5`` read as a float."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

# YAML 1.1's float resolver needs a dot ("1.0e-5"); people write "1e-5" and mean a number.
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class YamlError(ValueError):
    """A file that is not valid YAML, or has a duplicate key; the message names file and line."""


class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:float"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key '{key}' (first at line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: str | Path) -> Any:
    """Read one YAML file safely.

    Raises:
        YamlError: unreadable file, invalid YAML or a duplicate key, as ``file: line N: problem``.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise YamlError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise YamlError(f"{p}: cannot read: {e}") from None
    return loads_yaml(text, str(p))


def loads_yaml(text: str, name: str = "<string>") -> Any:
    """Parse YAML text with the project's rules; ``name`` is used in error messages."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise YamlError(f"{name}: {where}{e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise YamlError(f"{name}: {e}") from None


def dump_yaml(data: Any) -> str:
    """Dump data as block-style YAML, keys in insertion order."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
