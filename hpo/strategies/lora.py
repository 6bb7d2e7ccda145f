"""``lora``: PEFT LoRA on the attention projections; only the LoRA matrices and the head train.

``lora_alpha = r * alpha_over_r``. With ``target_modules`` unset, the projections come from
PEFT's per-model-type table (``query``/``value`` for BERT, ``q_proj``/``v_proj`` for Llama),
else from the attention projections the model has by their usual names. The task head is
passed to PEFT as ``modules_to_save`` (a trained copy) for every task except the generative
ones (causal LM, seq2seq), whose LM head is pretrained, often tied to the input embedding, and
stays frozen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo.strategies._base import Strategy, int_at_least, is_number, with_defaults

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel

NAME = "lora"
DEFAULTS: dict[str, object] = {"r": 8, "alpha_over_r": 2, "dropout": 0.05, "target_modules": None}

# attention query/value projections by leaf module name, for model types PEFT has no entry
# for; the first group the model has all of wins
FALLBACK_TARGETS: tuple[tuple[str, ...], ...] = (
    ("query", "value"),  # BERT family
    ("q_proj", "v_proj"),  # Llama family, OPT, BART
    ("q_lin", "v_lin"),  # DistilBERT
    ("q", "v"),  # T5
    ("query_key_value",),  # fused QKV: GPT-NeoX, Falcon
    ("c_attn",),  # fused QKV: GPT-2
    ("qkv_proj",),
    ("Wqkv",),
)


def check(
    model_config: dict[str, Any] | None, params: dict[str, Any], *, task: str | None = None
) -> list[str]:
    """Problems with the LoRA parameters (rank, alpha ratio, dropout, target modules).

    Target module names are not checked against the model: that needs the model itself.

    Args:
        model_config: Parsed config.json of the base model, or None if unknown; unused.
        params: Concrete parameter values.
        task: Unused; LoRA runs for every task.

    Returns:
        One line per problem.
    """
    p = with_defaults(DEFAULTS, params)
    problems = int_at_least(NAME, "r", p["r"], 1)
    if not is_number(p["alpha_over_r"]) or p["alpha_over_r"] <= 0:
        problems.append(f"strategy '{NAME}': alpha_over_r must be a number > 0, got {p['alpha_over_r']!r}")
    if not is_number(p["dropout"]) or not 0 <= p["dropout"] < 1:
        problems.append(f"strategy '{NAME}': dropout must be a number in [0, 1), got {p['dropout']!r}")
    targets = p["target_modules"]
    ok = (
        targets is None
        or (isinstance(targets, str) and targets)
        or (isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets))
    )
    if not ok:
        problems.append(
            f"strategy '{NAME}': target_modules must be null, a list of module names or a regex, "
            f"got {targets!r}"
        )
    return problems


def default_target_modules(model: nn.Module) -> list[str] | str:
    """LoRA target modules for a model: PEFT's entry for its model type, else found by name.

    Args:
        model: A transformers model.

    Returns:
        Leaf module names (``["query", "value"]``), or PEFT's regex where its entry is one.

    Raises:
        ValueError: PEFT has no entry and no module has a known projection name.
    """
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS
    from torch import nn

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in PEFT_TARGETS:
        targets = PEFT_TARGETS[model_type]
        return targets if isinstance(targets, str) else list(targets)
    leaves = {
        name.rpartition(".")[2]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
    }
    for group in FALLBACK_TARGETS:
        if all(name in leaves for name in group):
            return list(group)
    raise ValueError(
        f"strategy '{NAME}': no default target modules for model type {model_type!r}; "
        "set target_modules in the search space"
    )


def apply(model: PreTrainedModel, params: dict[str, Any]) -> nn.Module:
    """Wrap the model with PEFT LoRA; LoRA matrices and the task head train.

    Args:
        model: A freshly loaded task model.
        params: ``r``, ``alpha_over_r``, ``dropout``, ``target_modules`` (defaults filled in).

    Returns:
        A ``peft.PeftModel`` around ``model``.

    Raises:
        ValueError: A parameter is invalid or no target modules can be found.
    """
    from peft import LoraConfig, get_peft_model

    from hpo.strategies._peft import GENERATIVE_TASK_TYPES, head_module_names, peft_task_type

    p = with_defaults(DEFAULTS, params)
    problems = check(None, p)
    if problems:
        raise ValueError("; ".join(problems))
    task_type = peft_task_type(model)
    config = LoraConfig(
        task_type=task_type,
        r=p["r"],
        lora_alpha=p["r"] * p["alpha_over_r"],
        lora_dropout=p["dropout"],
        target_modules=p["target_modules"] or default_target_modules(model),
        modules_to_save=None if task_type in GENERATIVE_TASK_TYPES else head_module_names(model),
    )
    return get_peft_model(model, config)


STRATEGY = Strategy(
    name=NAME,
    description="PEFT LoRA on the attention projections; LoRA matrices and head train",
    params=DEFAULTS,
    check=check,
    apply=apply,
)
