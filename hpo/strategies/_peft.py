"""What the PEFT-based strategies (``lora``, ``prompt``) share: task type and head of a model."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

# class-name suffix of a transformers task model -> PEFT TaskType value
_TASK_TYPES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("ForSequenceClassification",), "SEQ_CLS"),
    (("ForTokenClassification",), "TOKEN_CLS"),
    (("ForQuestionAnswering",), "QUESTION_ANS"),
    (("ForCausalLM", "LMHeadModel"), "CAUSAL_LM"),
    (("ForConditionalGeneration", "ForSeq2SeqLM"), "SEQ_2_SEQ_LM"),
)
GENERATIVE_TASK_TYPES = ("CAUSAL_LM", "SEQ_2_SEQ_LM")
"""PEFT task types whose head is the pretrained LM head (often tied to the input embedding):
nothing is new, so no trained copy of it (``modules_to_save``) is made."""


def peft_task_type(model: nn.Module) -> str:
    """PEFT ``TaskType`` value for a transformers task model, from its class name.

    Args:
        model: A transformers task model (``BertForSequenceClassification``, ...).

    Returns:
        ``SEQ_CLS``, ``TOKEN_CLS``, ``QUESTION_ANS``, ``CAUSAL_LM`` or ``SEQ_2_SEQ_LM``.

    Raises:
        ValueError: The class name matches no known task head.
    """
    cls = type(model).__name__
    for suffixes, task_type in _TASK_TYPES:
        if cls.endswith(suffixes):
            return task_type
    known = ", ".join(s for suffixes, _ in _TASK_TYPES for s in suffixes)
    raise ValueError(f"cannot tell the PEFT task type of {cls} (expected a class name ending in {known})")


def head_module_names(model: nn.Module) -> list[str]:
    """Names of the model's direct children outside the backbone that hold parameters.

    For ``BertForSequenceClassification`` that is ``["classifier"]``, for DistilBERT
    ``["pre_classifier", "classifier"]``: PEFT's own default (``classifier``, ``score``) misses
    heads made of more than one module, so the PEFT strategies pass these as
    ``modules_to_save``.
    """
    from hpo.strategies._modules import base_model_of

    base = base_model_of(model)
    return [
        name
        for name, child in model.named_children()
        if child is not base and any(True for _ in child.parameters())
    ]
