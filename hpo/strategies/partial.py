"""``partial``: freeze the embeddings and the lower layers; the top K layers and the head train.

ULMFiT-style. The layer stack is found generically (the backbone's ``nn.ModuleList`` of
blocks: ``bert.encoder.layer``, ``transformer.h``, ``model.layers``); an encoder-decoder (T5)
has two, and the top K blocks of each train. Besides the top K blocks, whatever the backbone
registers after the stack (BERT's pooler, a decoder's final norm) and everything outside the
backbone (the task head) trains; embeddings and lower blocks are frozen. A head weight tied to
the input embedding stays frozen with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo.strategies._base import Strategy, int_at_least, num_layers, with_defaults

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel

NAME = "partial"
DEFAULTS: dict[str, object] = {"trainable_top_layers": 2}


def check(
    model_config: dict[str, Any] | None, params: dict[str, Any], *, task: str | None = None
) -> list[str]:
    """Problems with ``trainable_top_layers``: an integer from 1 to the model's layer count.

    Args:
        model_config: Parsed config.json of the base model, or None if unknown.
        params: Concrete parameter values.
        task: Unused; partial fine-tuning runs for every task.

    Returns:
        One line per problem.
    """
    k = with_defaults(DEFAULTS, params)["trainable_top_layers"]
    problems = int_at_least(NAME, "trainable_top_layers", k, 1)
    n = num_layers(model_config)
    decoder = (model_config or {}).get("num_decoder_layers")  # an encoder-decoder's second stack
    if n is not None and isinstance(decoder, int) and not isinstance(decoder, bool):
        n = min(n, decoder)
    if not problems and n is not None and k > n:
        problems.append(
            f"strategy '{NAME}': trainable_top_layers must be between 1 and {n} "
            f"(the model's {'layers per stack' if decoder is not None else 'num_hidden_layers'}), got {k}"
        )
    return problems


def apply(model: PreTrainedModel, params: dict[str, Any]) -> nn.Module:
    """Freeze all but the top ``trainable_top_layers`` blocks, what follows them, and the head.

    Args:
        model: A freshly loaded task model.
        params: ``trainable_top_layers`` (defaults filled in).

    Returns:
        The same model with ``requires_grad`` set.

    Raises:
        ValueError: K is outside 1..number of layers, or the layer stack cannot be found.
    """
    from hpo.strategies._modules import head_parameter_ids, layer_stacks, params_after_stack, set_trainable

    k = with_defaults(DEFAULTS, params)["trainable_top_layers"]
    trainable = head_parameter_ids(model)
    # An encoder-decoder has two stacks: the top K blocks of each train (and what follows them).
    for name, owner, stack in layer_stacks(model):
        if not 1 <= k <= len(stack):
            raise ValueError(
                f"strategy '{NAME}': trainable_top_layers must be between 1 and {len(stack)} "
                f"(layers in {name}), got {k}"
            )
        trainable |= {id(p) for block in stack[len(stack) - k :] for p in block.parameters()}
        trainable |= params_after_stack(owner, stack)
    set_trainable(model, trainable)
    return model


STRATEGY = Strategy(
    name=NAME,
    description="embeddings and lower layers frozen; the top K layers, pooler and head train",
    params=DEFAULTS,
    check=check,
    apply=apply,
)
