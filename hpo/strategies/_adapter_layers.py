"""Torch modules of the ``adapter`` strategy: a bottleneck adapter and the wrapper that inserts it.

Kept apart from ``adapter.py`` because it imports torch at module level (the classes must be
importable by name for pickling), and the registry must not.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}


class BottleneckAdapter(nn.Module):
    """``h + up(act(down(h)))`` with a ``hidden / reduction_factor`` bottleneck (Houlsby et al. 2019).

    The up-projection starts at zero, so at initialisation the adapter is the identity and the
    adapted model computes exactly what the base model does; training moves it away from that.

    Args:
        hidden_size: Width of the hidden states the adapter sees.
        bottleneck_size: Width of the bottleneck.
        non_linearity: A key of :data:`ACTIVATIONS`.
    """

    def __init__(self, hidden_size: int, bottleneck_size: int, non_linearity: str = "relu") -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck_size)
        self.act = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(bottleneck_size, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.act(self.down(hidden)))


class WithAdapter(nn.Module):
    """A sub-layer output projection followed by a :class:`BottleneckAdapter`.

    Replaces the projection in its parent, so the adapter sits after the projection and before
    the residual connection and layer norm that follow it. A plain module (no forward hooks)
    survives ``copy.deepcopy``, pickling and ``state_dict`` round trips. The projection's
    weights move from ``<path>.weight`` to ``<path>.base.weight``.

    Args:
        base: The projection (``nn.Linear``, or transformers' ``Conv1D`` in GPT-2).
        adapter: The adapter applied to its output.
    """

    def __init__(self, base: nn.Module, adapter: BottleneckAdapter) -> None:
        super().__init__()
        self.base = base
        self.adapter = adapter

    @property
    def weight(self) -> Any:
        """The projection's weight: models read it to pick a dtype (T5's feed-forward reads ``wo.weight``)."""
        return self.base.weight

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.adapter(self.base(*args, **kwargs))
