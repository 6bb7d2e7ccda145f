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


# Limits of an hpo file (a study, a search space, a retraining spec): far above any real one
# (the shipped studies are under 2 KB, 5 levels deep), far below what could exhaust memory.
MAX_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_ITEMS = 10_000
"""Entries of one list or mapping."""
MAX_SCALAR = 65_536
"""Characters of one value."""


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
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise YamlError(f"{p}: {size:,} bytes; an hpo file is at most {MAX_BYTES:,} bytes")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise YamlError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise YamlError(f"{p}: cannot read: {e}") from None
    return loads_yaml(text, str(p))


def loads_yaml(text: str, name: str = "<string>") -> Any:
    """Parse YAML text with the project's rules; ``name`` is used in error messages.

    Data only: explicit tags (``!!python/object``, ``!!binary``, ``!custom``) and anchors or
    aliases (``&a``/``*a``, the way to a "billion laughs" bomb) are refused, as are files over
    :data:`MAX_BYTES`, nesting deeper than :data:`MAX_DEPTH`, collections over
    :data:`MAX_ITEMS` entries and values over :data:`MAX_SCALAR` characters.
    """
    if len(text) > MAX_BYTES:
        raise YamlError(f"{name}: {len(text):,} characters; an hpo file is at most {MAX_BYTES:,}")
    try:
        _check_events(text, name)
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise YamlError(f"{name}: {where}{e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise YamlError(f"{name}: {e}") from None
    except YamlError:
        raise
    except ValueError as e:  # an integer of more digits than Python converts (4300)
        raise YamlError(f"{name}: a value that is not plain data ({str(e).split(';')[0]})") from None


def _check_events(text: str, name: str) -> None:
    """Refuse tags, anchors, aliases and absurd sizes before anything is built."""
    depth = 0
    counts: list[int] = []  # nodes in each open collection (a mapping's keys and values)
    limits: list[int] = []

    def fail(event: Any, problem: str) -> YamlError:
        return YamlError(f"{name}: line {event.start_mark.line + 1}: {problem}")

    for event in yaml.parse(text, Loader=_Loader):  # noqa: S506 - events only, nothing built
        if isinstance(event, yaml.AliasEvent):
            raise fail(event, f"alias *{event.anchor}: anchors and aliases are not allowed in hpo files")
        if isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)):
            if event.anchor is not None:
                raise fail(event, f"anchor &{event.anchor}: anchors and aliases are not allowed in hpo files")
            if event.tag is not None and not (isinstance(event, yaml.ScalarEvent) and event.tag == "!"):
                tag = event.tag.replace("tag:yaml.org,2002:", "!!")
                raise fail(event, f"tag {tag}: YAML tags are not allowed in hpo files (plain data only)")
            if counts:
                counts[-1] += 1
                if counts[-1] > limits[-1]:
                    raise fail(event, f"more than {MAX_ITEMS:,} entries in one list or mapping")
        if isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_SCALAR:
            raise fail(event, f"a value of {len(event.value):,} characters (at most {MAX_SCALAR:,})")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            counts.append(0)
            limits.append(2 * MAX_ITEMS if isinstance(event, yaml.MappingStartEvent) else MAX_ITEMS)
            if depth > MAX_DEPTH:
                raise fail(event, f"nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            counts.pop()
            limits.pop()


def dump_yaml(data: Any) -> str:
    """Dump data as block-style YAML, keys in insertion order."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
