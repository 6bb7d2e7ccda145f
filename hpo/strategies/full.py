"""``full``: every weight of the model trains."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo.strategies._base import Strategy

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel


def check(
    model_config: dict[str, Any] | None, params: dict[str, Any], *, task: str | None = None
) -> list[str]:
    """Full fine-tuning runs on any model and has no parameters, so nothing can be wrong."""
    return []


def apply(model: PreTrainedModel, params: dict[str, Any]) -> nn.Module:
    """Make every parameter trainable (a loaded model may carry frozen ones) and return the model.

    Args:
        model: A freshly loaded task model.
        params: Unused; full fine-tuning has no parameters.

    Returns:
        The same model, every parameter with ``requires_grad=True``.
    """
    for p in model.parameters():
        p.requires_grad_(True)
    return model


STRATEGY = Strategy(
    name="full",
    description="every weight trains",
    params={},
    check=check,
    apply=apply,
)
