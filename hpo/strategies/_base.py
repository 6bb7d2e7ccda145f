"""The :class:`Strategy` record and the small value checks every strategy's ``check`` shares.

Nothing here imports torch, transformers or peft: the registry is read by ``hpo validate``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


class CheckFn(Protocol):
    """Signature of :attr:`Strategy.check`."""

    def __call__(
        self, model_config: dict[str, Any] | None, params: dict[str, Any], *, task: str | None = None
    ) -> list[str]: ...


def _no_positions(params: dict[str, Any]) -> int:
    """Most strategies add nothing to the input sequence."""
    return 0


@dataclass(frozen=True)
class Strategy:
    """One way of fine-tuning a model: which weights train and what is added to the model."""

    name: str
    """Registry name, as written in search spaces (``lora``)."""
    description: str
    """One line for ``hpo validate`` and reports."""
    params: dict[str, object]
    """Every per-strategy parameter name -> its default (used when the space does not sample it)."""
    check: CheckFn
    """(parsed config.json of the base model or None if unknown, concrete parameter values,
    optional keyword ``task``) -> problems as one-line strings. Runs at validation time, so it
    imports nothing heavy; model-dependent checks are skipped when the config is None."""
    apply: Callable[[PreTrainedModel, dict[str, Any]], torch.nn.Module]
    """(freshly loaded task model, parameters) -> the model to train, ``requires_grad`` set.
    Parameters missing from the dict take their defaults."""
    extra_positions: Callable[[dict[str, Any]], int] = _no_positions
    """(concrete parameter values) -> input positions the strategy adds in front of the text
    (prompt tuning's virtual tokens); validation checks them plus ``data.max_length`` against
    the model's position limit."""


def with_defaults(strategy_params: dict[str, object], params: dict[str, Any]) -> dict[str, Any]:
    """``params`` over the strategy's defaults, so a partial dict is never a KeyError."""
    return {**strategy_params, **params}


def num_layers(model_config: dict[str, Any] | None) -> int | None:
    """Number of transformer layers a config.json declares, or None if it does not say."""
    if not model_config:
        return None
    # GPT-2 style configs say n_layer, T5 style num_layers; most say num_hidden_layers
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = model_config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def hidden_size(model_config: dict[str, Any] | None) -> int | None:
    """Hidden size a config.json declares, or None if it does not say."""
    if not model_config:
        return None
    for key in ("hidden_size", "n_embd", "d_model", "dim"):
        value = model_config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def is_int(value: object) -> bool:
    """True for an int that is not a bool (YAML ``true`` must not pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """True for an int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def int_at_least(name: str, key: str, value: object, low: int) -> list[str]:
    """Problem list for a parameter that must be an integer >= ``low``."""
    if not is_int(value):
        return [f"strategy '{name}': {key} must be an integer, got {value!r}"]
    if value < low:  # type: ignore[operator]
        return [f"strategy '{name}': {key} must be >= {low}, got {value!r}"]
    return []


def one_of(name: str, key: str, value: object, choices: Iterable[str]) -> list[str]:
    """Problem list for a parameter that must be one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        return [f"strategy '{name}': {key} must be one of {', '.join(choices)}, got {value!r}"]
    return []
