"""Helpers that look inside a transformers model: base model, layer stack, head, freezing.

They work on module structure only, so one implementation serves every architecture that
follows the transformers conventions (``base_model_prefix``, a ``ModuleList`` of blocks).
Torch is imported inside functions: the registry imports the strategy modules, which import
this one, and ``hpo validate`` must not pay for torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Trainable and total parameter counts of a model.

    Each parameter object is counted once, so tied weights (an LM head sharing the input
    embedding) and PEFT's references to base weights do not count twice.

    Args:
        model: Any torch module, PEFT wrappers included.

    Returns:
        ``(trainable, total)`` numbers of scalar parameters.
    """
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    trainable = sum(p.numel() for p in unique.values() if p.requires_grad)
    return trainable, total


def base_model_of(model: nn.Module) -> nn.Module:
    """The backbone of a task model (``model.bert`` for BERT), found via ``base_model_prefix``.

    A model that is its own backbone (``BertModel``) is returned as is.
    """
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    return base if base is not None else model


def _param_ids(modules: Iterable[nn.Module]) -> set[int]:
    return {id(p) for m in modules for p in m.parameters()}


def is_encoder_decoder(model: nn.Module) -> bool:
    """True for an encoder-decoder (T5, BART): its config says so and it exposes both halves."""
    config = getattr(model, "config", None)
    return bool(getattr(config, "is_encoder_decoder", False)) and all(
        callable(getattr(model, f, None)) for f in ("get_encoder", "get_decoder")
    )


def backbone_parts(model: nn.Module) -> list[nn.Module]:
    """The modules that make up a task model's backbone: the ``base_model_prefix`` attribute,
    or an encoder-decoder's encoder, decoder and input embedding (T5 names its prefix
    ``transformer`` but has no such attribute); empty when the model is its own backbone."""
    if is_encoder_decoder(model):
        parts = [model.get_encoder(), model.get_decoder()]  # type: ignore[operator]
        get_embedding = getattr(model, "get_input_embeddings", None)
        embedding = get_embedding() if callable(get_embedding) else None
        return [*parts, embedding] if embedding is not None else parts
    base = base_model_of(model)
    return [] if base is model else [base]


def head_parameter_ids(model: nn.Module) -> set[int]:
    """Ids of the task head's parameters: everything outside the backbone.

    A head weight tied to a backbone weight (an LM head tied to the input embedding) is the
    backbone's, not the head's, so freezing the embedding keeps it frozen.
    """
    parts = backbone_parts(model)
    if not parts:
        return set()
    return _param_ids([model]) - _param_ids(parts)


def layer_stacks(model: nn.Module) -> list[tuple[str, nn.Module, nn.ModuleList]]:
    """The transformer blocks of a model: ``(qualified name, owner, ModuleList)`` per stack.

    One stack (:func:`find_layer_stack`) for an encoder or a decoder model; an encoder-decoder
    has two, the encoder's then the decoder's (``encoder.block``, ``decoder.block``), each owned
    by its half (what follows a stack in its owner, a final norm, sits on top of it).
    """
    if not is_encoder_decoder(model):
        name, stack = find_layer_stack(model)
        return [(name, base_model_of(model), stack)]
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for part in (model.get_encoder(), model.get_decoder()):  # type: ignore[operator]
        name, stack = find_layer_stack(part)
        out.append((f"{names[id(part)]}.{name}", part, stack))
    return out


def find_layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The list of transformer blocks of a model (``bert.encoder.layer``, ``h``, ``layers``).

    Candidates are the ``nn.ModuleList``s inside the backbone whose items are all of one class.
    One as long as the config's ``num_hidden_layers`` wins; among equals the one with the most
    parameters, then the first registered (the encoder of an encoder-decoder).

    Args:
        model: A transformers task model or backbone.

    Returns:
        ``(qualified name in model, the ModuleList)``.

    Raises:
        ValueError: The backbone has no such list.
    """
    from torch import nn

    base = base_model_of(model)
    prefix = getattr(model, "base_model_prefix", "") if base is not model else ""
    config = getattr(model, "config", None)
    want = getattr(config, "num_hidden_layers", None)
    best: tuple[tuple[bool, int, int], str, nn.ModuleList] | None = None
    for order, (name, module) in enumerate(base.named_modules()):
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        # max() over (right length, size, earlier first)
        key = (len(module) == want, size, -order)
        if best is None or key > best[0]:
            best = (key, name, module)
    if best is None:
        raise ValueError(
            f"cannot find the transformer layers of {type(model).__name__}: its backbone has no "
            "nn.ModuleList of blocks"
        )
    name = f"{prefix}.{best[1]}" if prefix else best[1]
    return name, best[2]


def params_after_stack(model: nn.Module, stack: nn.ModuleList) -> set[int]:
    """Ids of backbone parameters registered after the layer stack (pooler, final norm).

    Modules registered after the stack sit on top of it in the forward pass in every
    transformers backbone, so "the top of the network" is the stack's top plus these.
    """
    base = base_model_of(model)
    in_stack = _param_ids([stack])
    after: set[int] = set()
    seen_stack = False
    for p in base.parameters():
        if id(p) in in_stack:
            seen_stack = True
            after.clear()  # only what follows the last block counts
        elif seen_stack:
            after.add(id(p))
    return after


def set_trainable(model: nn.Module, trainable_ids: set[int]) -> None:
    """Make exactly the parameters whose ids are in ``trainable_ids`` trainable."""
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable_ids)


def norm_parameter_ids(module: nn.Module) -> set[int]:
    """Ids of the parameters of every LayerNorm/RMSNorm inside ``module``.

    Besides ``nn.LayerNorm``, matches by class name (``LlamaRMSNorm``, ``T5LayerNorm``),
    because many architectures define their own norm classes.
    """
    from torch import nn

    norms = [
        m
        for m in module.modules()
        if isinstance(m, (nn.LayerNorm, nn.RMSNorm)) or type(m).__name__.endswith(("LayerNorm", "RMSNorm"))
    ]
    return _param_ids(norms)
