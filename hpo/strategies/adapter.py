"""``adapter``: Houlsby/Pfeiffer bottleneck adapters; only adapters, layer norms and the head train.

A small implementation on torch, because the ``adapters`` package pins transformers 4.x.
Each adapter is ``h + up(act(down(h)))`` with a ``hidden_size // reduction_factor`` bottleneck
and a zero-initialised up-projection, inserted right after a sub-layer's output projection
(before its residual connection and layer norm) by wrapping that projection:

- ``houlsby``: after the attention output projection and after the feed-forward output
  projection of every layer;
- ``pfeiffer``: after the feed-forward output projection only.

An encoder-decoder (T5) gets them in the blocks of both stacks, after self-attention and the
feed-forward (not after the decoder's cross-attention).

Injection points are found per layer from :data:`PATTERNS` (relative module paths of the two
projections); :data:`SUPPORTED_MODEL_TYPES` lists the model types they were verified on, and
``check`` rejects other known model types. What trains: the adapters, every LayerNorm/RMSNorm
of the backbone, and the task head (everything outside the backbone). BERT's pooler is part
of the backbone and stays frozen, as the other parameter-efficient strategies leave it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo.strategies._base import Strategy, hidden_size, int_at_least, one_of, with_defaults

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel

NAME = "adapter"
DEFAULTS: dict[str, object] = {"reduction_factor": 16, "adapter_type": "houlsby", "non_linearity": "relu"}
ADAPTER_TYPES = ("houlsby", "pfeiffer")
NON_LINEARITIES = ("relu", "gelu")

# (attention output projection, feed-forward output projection), relative to one layer
PATTERNS: tuple[tuple[str, str], ...] = (
    ("attention.output.dense", "output.dense"),  # BERT, RoBERTa, XLM-R, ELECTRA, DeBERTa-v2
    ("attention.out_lin", "ffn.lin2"),  # DistilBERT
    ("attn.c_proj", "mlp.c_proj"),  # GPT-2
    ("self_attn.o_proj", "mlp.down_proj"),  # Llama, Mistral, Qwen2
    ("self_attn.out_proj", "fc2"),  # OPT
    ("layer.0.SelfAttention.o", "layer.1.DenseReluDense.wo"),  # T5 encoder block
    ("layer.0.SelfAttention.o", "layer.2.DenseReluDense.wo"),  # T5 decoder block (1: cross-attention)
)

# model types whose layers match PATTERNS (tests/test_strategies.py builds one of each)
SUPPORTED_MODEL_TYPES = (
    "bert",
    "camembert",
    "deberta-v2",
    "distilbert",
    "electra",
    "gpt2",
    "llama",
    "mistral",
    "opt",
    "qwen2",
    "roberta",
    "t5",
    "xlm-roberta",
)


def check(
    model_config: dict[str, Any] | None, params: dict[str, Any], *, task: str | None = None
) -> list[str]:
    """Problems with the adapter parameters, and with the model type when it is known.

    Args:
        model_config: Parsed config.json of the base model, or None if unknown.
        params: Concrete parameter values.
        task: Unused; adapters run for every task.

    Returns:
        One line per problem.
    """
    p = with_defaults(DEFAULTS, params)
    problems = int_at_least(NAME, "reduction_factor", p["reduction_factor"], 1)
    width = hidden_size(model_config)
    if not problems and width is not None and p["reduction_factor"] > width:
        problems.append(
            f"strategy '{NAME}': reduction_factor must be at most the hidden size {width}, "
            f"got {p['reduction_factor']}"
        )
    problems += one_of(NAME, "adapter_type", p["adapter_type"], ADAPTER_TYPES)
    problems += one_of(NAME, "non_linearity", p["non_linearity"], NON_LINEARITIES)
    model_type = (model_config or {}).get("model_type")
    if model_type and model_type not in SUPPORTED_MODEL_TYPES:
        problems.append(
            f"strategy '{NAME}': model type {model_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return problems


def find_injection_points(model: nn.Module, adapter_type: str = "houlsby") -> list[str]:
    """Qualified names of the projections adapters go after, in layer order.

    Args:
        model: A transformers task model or backbone.
        adapter_type: ``houlsby`` (attention and feed-forward) or ``pfeiffer`` (feed-forward).

    Returns:
        Module names in ``model`` (``bert.encoder.layer.0.attention.output.dense``, ...).

    Raises:
        ValueError: A layer matches none of :data:`PATTERNS`, i.e. the architecture is not
            supported.
    """
    from hpo.strategies._modules import layer_stacks

    names: list[str] = []
    for stack_name, _, stack in layer_stacks(model):
        names += _stack_points(model, stack_name, stack, adapter_type)
    return names


def _stack_points(model: nn.Module, stack_name: str, stack: nn.ModuleList, adapter_type: str) -> list[str]:
    names: list[str] = []
    for i, layer in enumerate(stack):
        owned = {n for n, _ in layer.named_modules()}
        pattern = next((pat for pat in PATTERNS if all(part in owned for part in pat)), None)
        if pattern is None:
            model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
            raise ValueError(
                f"strategy '{NAME}': model type {model_type!r} is not supported: layer {stack_name}.{i} "
                f"({type(layer).__name__}) has none of the known output projections "
                f"{', '.join(' + '.join(pat) for pat in PATTERNS)}"
            )
        chosen = pattern if adapter_type == "houlsby" else pattern[1:]
        names += [f"{stack_name}.{i}.{part}" for part in chosen]
    return names


def _out_features(module: nn.Module) -> int:
    # nn.Linear says out_features; transformers' Conv1D (GPT-2) says nf
    width = getattr(module, "out_features", None) or getattr(module, "nf", None)
    if not isinstance(width, int):
        raise ValueError(f"strategy '{NAME}': cannot tell the output width of {type(module).__name__}")
    return width


def apply(model: PreTrainedModel, params: dict[str, Any]) -> nn.Module:
    """Insert bottleneck adapters and freeze all but adapters, layer norms and the head.

    Args:
        model: A freshly loaded task model.
        params: ``reduction_factor``, ``adapter_type``, ``non_linearity`` (defaults filled in).

    Returns:
        The same model, modified in place, with ``requires_grad`` set.

    Raises:
        ValueError: A parameter is invalid or the architecture is not supported.
    """
    from hpo.strategies._adapter_layers import BottleneckAdapter, WithAdapter
    from hpo.strategies._modules import base_model_of, head_parameter_ids, norm_parameter_ids, set_trainable

    p = with_defaults(DEFAULTS, params)
    problems = check(None, p)
    if problems:
        raise ValueError("; ".join(problems))
    adapter_ids: set[int] = set()
    for name in find_injection_points(model, p["adapter_type"]):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = parent.get_submodule(child)
        width = _out_features(base)
        adapter = BottleneckAdapter(width, max(1, width // p["reduction_factor"]), p["non_linearity"])
        weight = next(base.parameters())
        adapter.to(device=weight.device, dtype=weight.dtype)
        setattr(parent, child, WithAdapter(base, adapter))
        adapter_ids |= {id(q) for q in adapter.parameters()}
    trainable = adapter_ids | norm_parameter_ids(base_model_of(model)) | head_parameter_ids(model)
    set_trainable(model, trainable)
    return model


STRATEGY = Strategy(
    name=NAME,
    description="bottleneck adapters after attention/feed-forward; adapters, layer norms and head train",
    params=DEFAULTS,
    check=check,
    apply=apply,
)
