"""Task-head helpers shared by the encoder tasks (classification, NER, QA).

A head that the pretrained checkpoint does not have (a classifier, a QA span head) starts
from random weights. hpo loads the base model once per worker and deep-copies it per trial,
so the head is re-drawn from the trial's seed: a trial and its retrain start identically
whichever trials that worker ran before. Generative tasks keep their pretrained LM head.
"""

from __future__ import annotations

from typing import Any


def reinit_linear_head(model: Any, seed: int) -> None:
    """Re-initialise every ``nn.Linear`` outside the backbone, BERT-style: normal(0, std).

    The backbone is the ``base_model_prefix`` attribute (``bert``); ``std`` is the config's
    ``initializer_range`` (0.02 when it has none). A model with no backbone attribute is left
    as it is: nothing in it is a head.
    """
    import torch

    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or getattr(model, prefix, None) is None:
        return
    std = float(getattr(model.config, "initializer_range", 0.02))
    torch.manual_seed(seed)
    for name, module in model.named_modules():
        if name == prefix or name.startswith(prefix + "."):
            continue
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)


def keep_pretrained_head(model: Any, seed: int) -> None:
    """A generative task's LM head is pretrained (and often tied to the embeddings): keep it."""
