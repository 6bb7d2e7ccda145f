"""Fine-tuning strategies: one module each, one explicit registry.

A strategy decides which weights train and what is added to the model (adapters, LoRA
matrices, a soft prompt). Adding one is a module exposing ``STRATEGY``, one line in
:data:`STRATEGIES` and one row in the parametrized test matrix. Importing this package
imports no torch, transformers or peft; ``apply`` functions import them when called.
"""

from __future__ import annotations

from hpo.strategies import adapter, full, lora, partial, prompt
from hpo.strategies._base import CheckFn, Strategy
from hpo.strategies._modules import count_parameters

__all__ = ["STRATEGIES", "CheckFn", "Strategy", "count_parameters", "get_strategy"]

STRATEGIES: dict[str, Strategy] = {
    "full": full.STRATEGY,
    "partial": partial.STRATEGY,
    "adapter": adapter.STRATEGY,
    "lora": lora.STRATEGY,
    "prompt": prompt.STRATEGY,
}


def get_strategy(name: str) -> Strategy:
    """The strategy registered as ``name``.

    Args:
        name: A key of :data:`STRATEGIES`.

    Returns:
        The strategy.

    Raises:
        ValueError: Unknown name; the message lists the known ones.
    """
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r} (known: {', '.join(sorted(STRATEGIES))})") from None
