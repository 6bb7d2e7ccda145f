"""``prompt``: PEFT prompt tuning (a trained soft prompt) or prefix tuning; only it and the head train.

``prompt_type: prompt`` prepends ``num_virtual_tokens`` trained embeddings to the input and
runs on any model that accepts ``inputs_embeds``. ``init`` is ``random`` or ``sample_vocab``
(start from the embeddings of random vocabulary tokens).

``prompt_type: prefix`` prepends trained keys and values to every attention layer through
the model's past-key-values cache, so it needs a model that has one. The rule ``check``
applies, from the base model's config.json:

- the model has a cache when ``is_decoder`` is true, its ``model_type`` is one of
  :data:`DECODER_MODEL_TYPES`, or one of its ``architectures`` ends in ``ForCausalLM``,
  ``LMHeadModel`` or ``ForConditionalGeneration``; any other known model type (the BERT
  family: encoders) is rejected;
- with peft 0.21 on transformers 5, PEFT's prefix tuning runs only for causal LM: for
  classification it looks for a ``past_key_values`` argument on the model's ``forward``,
  which transformers 5 renamed ``cache``, and fails in the first forward pass. So when the
  caller passes ``task``, prefix tuning for a task whose record does not say
  ``prefix_tuning=True`` (:func:`prefix_tasks`: ``causal-lm``) is rejected; ``apply``
  applies PEFT's own test to the loaded model and raises before training starts. An
  encoder-decoder (T5, task ``seq2seq``) trains with a prefix, but transformers 5's
  ``generate()`` gets both PEFT's ``past_key_values`` and its own ``cache`` and ignores the
  first, so greedy outputs (and ROUGE) ignore the prefix: refused too.

Trainable: the prompt (or prefix) embeddings and, except for causal LM, the task head. A
per-token head (token classification, QA) reads the text's positions only
(:func:`trim_prompt_outputs`).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, cast

from hpo.strategies._base import Strategy, int_at_least, is_int, one_of, with_defaults

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedModel

NAME = "prompt"
DEFAULTS: dict[str, object] = {"num_virtual_tokens": 20, "prompt_type": "prompt", "init": "random"}
PROMPT_TYPES = ("prompt", "prefix")
INITS = ("random", "sample_vocab")
DECODER_MODEL_TYPES = (
    "bloom",
    "codegen",
    "falcon",
    "gemma",
    "gemma2",
    "gemma3_text",
    "gpt2",
    "gpt_bigcode",
    "gpt_neo",
    "gpt_neox",
    "gptj",
    "llama",
    "mistral",
    "mixtral",
    "olmo",
    "olmo2",
    "opt",
    "phi",
    "phi3",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "stablelm",
    "starcoder2",
)
_DECODER_ARCHITECTURE_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def has_past_key_values(model_config: dict[str, Any]) -> bool:
    """Whether a config.json describes a model with a past-key-values cache (see module doc)."""
    if model_config.get("is_decoder") is True or model_config.get("model_type") in DECODER_MODEL_TYPES:
        return True
    architectures = model_config.get("architectures") or []
    return any(isinstance(a, str) and a.endswith(_DECODER_ARCHITECTURE_SUFFIXES) for a in architectures)


def check(
    model_config: dict[str, Any] | None, params: dict[str, Any], *, task: str | None = None
) -> list[str]:
    """Problems with the prompt parameters, and prefix tuning on a model or task that cannot run it.

    Args:
        model_config: Parsed config.json of the base model, or None if unknown.
        params: Concrete parameter values.
        task: The study's task (``sequence-classification``), or None to skip task checks.

    Returns:
        One line per problem.
    """
    p = with_defaults(DEFAULTS, params)
    n = p["num_virtual_tokens"]
    problems = int_at_least(NAME, "num_virtual_tokens", n, 1)
    positions = (model_config or {}).get("max_position_embeddings")
    if not problems and is_int(positions) and n >= positions:
        problems.append(
            f"strategy '{NAME}': num_virtual_tokens must leave room for the text in the model's "
            f"{positions} positions, got {n}"
        )
    problems += one_of(NAME, "prompt_type", p["prompt_type"], PROMPT_TYPES)
    problems += one_of(NAME, "init", p["init"], INITS)
    if p["prompt_type"] != "prefix":
        return problems
    if p["init"] != "random":
        problems.append(
            f"strategy '{NAME}': init {p['init']!r} applies to prompt_type 'prompt' only; use init: random"
        )
    model_type = (model_config or {}).get("model_type")
    if model_config and model_type and not has_past_key_values(model_config):
        for_task = f"for task {task!r} " if task else ""
        problems.append(
            f"strategy '{NAME}': prompt_type 'prefix' {for_task}needs a model with past key values (decoder "
            f"models); model type {model_type!r} has none — use prompt_type: prompt"
        )
    elif task is not None and task not in prefix_tasks():
        on_model = f" on model type {model_type!r}" if model_type else ""
        problems.append(
            f"strategy '{NAME}': prompt_type 'prefix' runs only for task {', '.join(prefix_tasks())} with the "
            f"installed peft and transformers (task {task!r}{on_model}: a classifier fails in the first forward "
            "pass, an encoder-decoder's generate() drops the prefix) — use prompt_type: prompt"
        )
    return problems


def prefix_tasks() -> list[str]:
    """The registered tasks whose record says prefix tuning runs for them (``Task.prefix_tuning``)."""
    from hpo.tasks import TASKS

    return sorted(name for name, t in TASKS.items() if t.prefix_tuning)


def virtual_positions(params: dict[str, Any]) -> int:
    """Positions the soft prompt (or prefix) takes ahead of the text: ``num_virtual_tokens``.

    Prompt tuning prepends its embeddings to the input, so position ids run to
    num_virtual_tokens + text length (measured: a 64-position BERT with 10 virtual tokens takes
    54 text tokens and fails at 55); a prefix sits in the cache, and decoders count the cache
    in their position ids.
    """
    n = with_defaults(DEFAULTS, params)["num_virtual_tokens"]
    return n if is_int(n) and n > 0 else 0


def _accepts_past_key_values(module: nn.Module) -> bool:
    return "past_key_values" in inspect.signature(module.forward).parameters


def apply(model: PreTrainedModel, params: dict[str, Any]) -> nn.Module:
    """Wrap the model with PEFT prompt or prefix tuning.

    Args:
        model: A freshly loaded task model.
        params: ``num_virtual_tokens``, ``prompt_type``, ``init`` (defaults filled in).

    Returns:
        A ``peft.PeftModel`` around ``model``.

    Raises:
        ValueError: A parameter is invalid, or prefix tuning cannot run on this model and task.
    """
    from peft import PrefixTuningConfig, PromptTuningConfig, PromptTuningInit, get_peft_model

    from hpo.strategies._modules import base_model_of
    from hpo.strategies._peft import GENERATIVE_TASK_TYPES, head_module_names, peft_task_type

    p = with_defaults(DEFAULTS, params)
    problems = check(None, p)
    if problems:
        raise ValueError("; ".join(problems))
    task_type = peft_task_type(model)
    modules_to_save = None if task_type in GENERATIVE_TASK_TYPES else head_module_names(model)
    config: PromptTuningConfig | PrefixTuningConfig
    if p["prompt_type"] == "prompt":
        # The soft prompt is concatenated with the word embeddings, whose width PEFT reads as
        # hidden_size; models that factorise their embeddings (ELECTRA, ALBERT) differ, and some
        # configs (DistilBERT's dim, n_heads) use names PEFT does not look up.
        config = PromptTuningConfig(
            task_type=task_type,
            num_virtual_tokens=p["num_virtual_tokens"],
            token_dim=cast("torch.Tensor", model.get_input_embeddings().weight).shape[1],
            num_attention_heads=getattr(model.config, "num_attention_heads", None),
            prompt_tuning_init={
                "random": PromptTuningInit.RANDOM,
                "sample_vocab": PromptTuningInit.SAMPLE_VOCAB,
            }[p["init"]],
            modules_to_save=modules_to_save,
        )
    else:
        # PEFT's classification forward runs prefix tuning only if the model or its backbone
        # takes past_key_values; otherwise it raises in the first training step
        needs_argument = task_type in ("SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS")
        if needs_argument and not (
            _accepts_past_key_values(model) or _accepts_past_key_values(base_model_of(model))
        ):
            raise ValueError(
                f"strategy '{NAME}': prompt_type 'prefix' cannot run on {type(model).__name__} with the "
                "installed peft and transformers (its forward takes no past_key_values) — "
                "use prompt_type: prompt"
            )
        config = PrefixTuningConfig(
            task_type=task_type, num_virtual_tokens=p["num_virtual_tokens"], modules_to_save=modules_to_save
        )
    peft_model = get_peft_model(model, config)
    trim_prompt_outputs(peft_model)
    return peft_model


PER_TOKEN_TASK_TYPES = ("TOKEN_CLS", "QUESTION_ANS")
"""PEFT task types whose head reads one vector per input token (NER tags, QA start/end)."""


def trim_prompt_outputs(model: nn.Module) -> nn.Module:
    """Under prompt tuning, hide the soft prompt's positions from a per-token head.

    PEFT prepends ``num_virtual_tokens`` embeddings to the input and passes the labels as they
    are: a token classifier's logits then have ``num_virtual_tokens`` more positions than its
    labels (the loss fails on the shapes) and a QA head's start/end positions point that many
    tokens early. A forward hook on the backbone drops those positions from its sequence output,
    so the head sees one vector per input token while every token still attends to the prompt
    inside the encoder. Does nothing for other models and tuners; idempotent. Hooks are not
    saved: ``hpo.retrain.load_trained`` calls this again after ``PeftModel.from_pretrained``.

    Returns:
        ``model`` itself.
    """
    from hpo.strategies._modules import base_model_of

    config = getattr(model, "active_peft_config", None)
    if config is None:
        return model
    # PEFT's enums are str subclasses whose str() is "PeftType.PROMPT_TUNING": compare values
    peft_type = getattr(config.peft_type, "value", config.peft_type)
    task_type = getattr(config.task_type, "value", config.task_type)
    if peft_type != "PROMPT_TUNING" or task_type not in PER_TOKEN_TASK_TYPES:
        return model
    backbone = base_model_of(model.get_base_model())  # type: ignore[operator]
    if getattr(backbone, "hpo_trimmed_positions", None) is not None:
        return model
    n = int(config.num_virtual_tokens)

    def drop_prompt(module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0][:, n:], *output[1:])
        output.last_hidden_state = output.last_hidden_state[:, n:]
        return output

    backbone.register_forward_hook(drop_prompt)
    setattr(backbone, "hpo_trimmed_positions", n)  # noqa: B010 (a plain attribute, not a submodule)
    return model


STRATEGY = Strategy(
    name=NAME,
    description="PEFT prompt tuning (soft prompt) or prefix tuning; prompt and head train",
    params=DEFAULTS,
    check=check,
    apply=apply,
    extra_positions=virtual_positions,
)
