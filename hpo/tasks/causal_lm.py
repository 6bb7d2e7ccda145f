"""Causal language modelling: instruction tuning of a decoder LLM with the loss on the completion.

The building blocks, each a pure function the task record and the Trainer call:

- :func:`detect_format` and :func:`to_pairs` turn the data formats people bring (chat
  ``messages``, ``prompt-completion``, ``alpaca``, plain ``text``) into prompt/completion pairs;
- :func:`encode` tokenizes the pairs: ``labels`` are -100 on every prompt token, so the loss
  covers the completion and its end-of-turn/EOS only;
- :func:`preprocess_logits` and :func:`loss_metrics` give the exact token-weighted evaluation
  loss and perplexity without the Trainer keeping full-vocabulary logits;
- :func:`generate` decodes completions greedily for generation metrics.

Heavy packages (torch, transformers) are imported inside the functions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from hpo.errors import DataError
from hpo.tasks.generation_metrics import loss_metrics, token_nll

__all__ = [
    "FORMATS",
    "Encoded",
    "detect_format",
    "encode",
    "generate",
    "loss_metrics",
    "preprocess_logits",
    "stop_token_ids",
    "to_pairs",
]

FORMATS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "prompt-completion": ("prompt", "completion"),
    "alpaca": ("instruction", "input", "output"),
    "text": ("text",),
}
"""Format -> its column roles; by default each role is read from the column of that name."""

_OPTIONAL_ROLES = {("alpaca", "input")}
"""(format, role) pairs whose column may be absent (then every value is empty)."""

IGNORE_INDEX = -100
"""Label of a position that the loss skips (PyTorch's cross-entropy default)."""


# ---------------------------------------------------------------------------------------
# Formats


def detect_format(columns: Sequence[str]) -> str | None:
    """The data format that the column names suggest, or None.

    Checked in this order: a ``messages`` column; ``prompt`` and ``completion``;
    ``instruction`` and ``output`` (alpaca; ``input`` is optional); a ``text`` column.

    Args:
        columns: Column names of the data.

    Returns:
        One of :data:`FORMATS`, or None when no format fits.
    """
    names = set(columns)
    if "messages" in names:
        return "messages"
    if {"prompt", "completion"} <= names:
        return "prompt-completion"
    if {"instruction", "output"} <= names:
        return "alpaca"
    if "text" in names:
        return "text"
    return None


def to_pairs(
    frame: pd.DataFrame,
    fmt: str,
    columns: Mapping[str, str] | None = None,
    shown: str = "data",
) -> pd.DataFrame:
    """Normalises one split to prompt/completion pairs.

    - ``messages``: a column of chat conversations (lists of ``{role, content}``, or their
      JSON text for CSV files). The last turn must be the assistant's: it is the completion;
      every turn before it is the prompt, kept as a list of ``{role, content}`` dicts (other
      keys are dropped).
    - ``prompt-completion``: two text columns.
    - ``alpaca``: ``instruction``, ``input`` and ``output``; the prompt is the instruction, plus
      ``"\\n\\n"`` and the input when the input is not blank; the completion is the output.
      Without an ``input`` column every input counts as blank.
    - ``text``: one text column for plain language modelling; the prompt is empty and the loss
      covers every token.

    Args:
        frame: The split as read.
        fmt: One of :data:`FORMATS`.
        columns: Role -> column name, for roles whose column has another name (e.g.
            ``{"prompt": "document", "completion": "headline"}``); unnamed roles use their own
            name.
        shown: File or split name for error messages.

    Returns:
        A frame with columns ``prompt`` (str, or list of message dicts for ``messages``) and
        ``completion`` (str), one row per input row, in order.

    Raises:
        DataError: Unknown format or role, a missing column, no rows, a value that is not text,
            an empty completion or prompt, or a conversation without a final assistant turn;
            the message names the column and the first bad data row (0-based).
    """
    if fmt not in FORMATS:
        raise DataError(f"{shown}: unknown data format {fmt!r} (known: {', '.join(FORMATS)})")
    given = dict(columns or {})
    unknown = sorted(set(given) - set(FORMATS[fmt]))
    if unknown:
        raise DataError(
            f"{shown}: unknown column role{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for format {fmt!r} (roles: {', '.join(FORMATS[fmt])})"
        )
    found = [str(c) for c in frame.columns]
    cols: dict[str, str | None] = {}
    for role in FORMATS[fmt]:
        name = given.get(role, role)
        if name not in frame.columns:
            # An optional column may be absent under its default name; a name the user gave
            # must exist.
            if (fmt, role) in _OPTIONAL_ROLES and role not in given:
                cols[role] = None
                continue
            raise DataError(
                f"{shown}: column {name!r} ({role}) not found for format {fmt!r} "
                f"(columns: {', '.join(found) or 'none'})"
            )
        cols[role] = name
    if len(frame) == 0:
        raise DataError(f"{shown}: no rows")

    def text(role: str, allow_blank: bool = False) -> list[str]:
        name = cols[role]
        if name is None:
            return [""] * len(frame)
        return _texts(frame[name], shown, name, allow_blank)

    prompts: list[Any]
    if fmt == "messages":
        column = cols["messages"]
        assert column is not None
        prompts, completions = [], []
        for i, value in enumerate(frame[column].tolist()):
            prompt, completion = _split_messages(value, shown, column, i)
            prompts.append(prompt)
            completions.append(completion)
    elif fmt == "prompt-completion":
        prompts, completions = text("prompt"), text("completion")
    elif fmt == "alpaca":
        instructions = text("instruction")
        inputs = text("input", allow_blank=True)
        prompts = [
            ins + ("\n\n" + inp if inp.strip() else "") for ins, inp in zip(instructions, inputs, strict=True)
        ]
        completions = text("output")
    else:
        completions = text("text")
        prompts = [""] * len(completions)
    # object dtype: a prompt may be a list of messages, which pandas must not expand.
    return pd.DataFrame(
        {"prompt": pd.Series(prompts, dtype=object), "completion": pd.Series(completions, dtype=object)}
    )


def _texts(col: pd.Series, shown: str, name: str, allow_blank: bool) -> list[str]:
    """The column's values as strings; None/NaN count as blank where blanks are allowed."""
    values = col.tolist()
    out: list[str] = []
    for i, v in enumerate(values):
        # pandas turns None into NaN in a text column.
        if v is None or (isinstance(v, float) and math.isnan(v)):
            if not allow_blank:
                raise DataError(f"{shown}: column {name!r}, data row {i}: missing value, expected text")
            out.append("")
            continue
        if not isinstance(v, str):
            raise DataError(
                f"{shown}: column {name!r}, data row {i}: expected text, got {type(v).__name__} {v!r}"
            )
        out.append(v)
    if not allow_blank:
        blank = [i for i, v in enumerate(out) if not v.strip()]
        if blank:
            raise DataError(
                f"{shown}: column {name!r} has {len(blank)} empty value{'s' if len(blank) > 1 else ''} "
                f"(first at data row {blank[0]})"
            )
    return out


def _split_messages(value: Any, shown: str, name: str, row: int) -> tuple[list[dict[str, str]], str]:
    """(prompt messages, completion) of one conversation."""
    where = f"{shown}: column {name!r}, data row {row}"
    if isinstance(value, str):
        # CSV files cannot hold lists: a conversation there is its JSON text.
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(f"{where}: expected a list of messages, got text that is not JSON") from None
    # A list from JSON, a numpy array of dicts from parquet.
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__len__"):
        raise DataError(f"{where}: expected a list of messages, got {type(value).__name__}")
    messages: list[dict[str, str]] = []
    for j, msg in enumerate(list(value)):
        if not isinstance(msg, Mapping):
            raise DataError(
                f"{where}: message {j}: expected a mapping with role and content, got {type(msg).__name__}"
            )
        role, content = msg.get("role"), msg.get("content")
        if not isinstance(role, str) or not role:
            raise DataError(f"{where}: message {j}: role must be a non-empty string, got {role!r}")
        if not isinstance(content, str):
            raise DataError(f"{where}: message {j}: content must be a string, got {type(content).__name__}")
        messages.append({"role": role, "content": content})
    if not messages:
        raise DataError(f"{where}: no messages")
    last = messages[-1]
    if last["role"] != "assistant":
        raise DataError(
            f"{where}: the last message has role {last['role']!r}; expected a final assistant turn"
        )
    if not last["content"].strip():
        raise DataError(f"{where}: the final assistant turn is empty")
    if len(messages) == 1:
        raise DataError(f"{where}: no turn before the final assistant turn (nothing to prompt with)")
    return messages[:-1], last["content"]


# ---------------------------------------------------------------------------------------
# Tokenizing


@dataclass(frozen=True)
class Encoded:
    """Tokenized examples and what truncation did to them."""

    columns: dict[str, list[list[int]]]
    """``input_ids``, ``attention_mask``, ``labels``: one unpadded list per kept row."""
    rows: list[int]
    """Index of the input row behind each kept example (to match references later)."""
    dropped: list[int]
    """Input rows dropped because no labelled token was left."""
    truncated: int
    """Kept rows that lost tokens to ``max_length``."""


def encode(
    prompts: Sequence[Any],
    completions: Sequence[str],
    tokenizer: Any,
    max_length: int,
    chat_template: bool,
) -> Encoded:
    """Tokenizes prompt/completion pairs; the labels cover the completion only.

    With ``chat_template=True`` the prompt (a list of messages, or a string that becomes one
    user message) is rendered with the tokenizer's chat template and its generation prompt;
    the completion is rendered the way the template renders an assistant turn, so it ends with
    the template's end-of-turn marker (trailing whitespace after it removed; the EOS token is
    appended when the template does not write it). Special tokens come only from the template.

    With ``chat_template=False`` the sequence is ``prompt + completion + EOS``, with the
    tokenizer's own special tokens (e.g. BOS) on the prompt: for base models, and for the
    ``text`` format, whose empty prompt leaves every token labelled.

    The prompt and the completion are tokenized separately and their ids concatenated. A BPE
    tokenizer can merge characters across the boundary when it sees ``prompt + completion`` as
    one string, so the prompt's ids would not be a prefix of the whole and masking "the first
    len(prompt) tokens" would mislabel the boundary; and at generation time the model sees the
    prompt tokenized alone, which this reproduces.

    Truncation to ``max_length`` tokens: the prompt is cut from the left first (its end, next to
    the completion, is kept); if the completion alone is longer than ``max_length`` the whole
    prompt is dropped and the completion is cut on the right (losing its EOS). A row is
    dropped when no labelled token is left after position 0 (nothing before the first token
    predicts it); dropped rows are listed in :attr:`Encoded.dropped`.

    Args:
        prompts: Per row a string (may be empty) or, with ``chat_template``, a list of
            ``{role, content}`` messages.
        completions: Per row the text to learn.
        tokenizer: A Hugging Face tokenizer (with an EOS token).
        max_length: Tokens per example after truncation (>= 2).
        chat_template: Render with the tokenizer's chat template.

    Returns:
        The unpadded columns, the kept rows and the dropped rows.

    Raises:
        DataError: Lengths differ, a value has the wrong type, the tokenizer has no chat
            template (with ``chat_template``) or no EOS token, or every row would be dropped.
    """
    if len(prompts) != len(completions):
        raise DataError(f"encode: {len(prompts)} prompts but {len(completions)} completions")
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise DataError(f"encode: max_length must be an integer >= 2, got {max_length!r}")
    for i, completion in enumerate(completions):
        if not isinstance(completion, str):
            raise DataError(f"encode: completion of row {i}: expected text, got {type(completion).__name__}")
    # Tokenized apart and concatenated: the prompt's ids are then exactly a prefix of the
    # sequence (no BPE merge across the boundary) and exactly what generate() feeds the model.
    prompt_ids = _prompt_ids(list(prompts), tokenizer, chat_template)
    completion_ids = _completion_ids(list(completions), tokenizer, chat_template)

    columns: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    rows: list[int] = []
    dropped: list[int] = []
    truncated = 0
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        room = max_length - len(c)
        if len(p) + len(c) > max_length:
            truncated += 1
            if room > 0:
                p = p[len(p) - room :]
            else:
                p, c = [], c[:max_length]
        labels = [IGNORE_INDEX] * len(p) + c
        # Position 0 is never a target (logits[t] predict labels[t + 1]).
        if all(label == IGNORE_INDEX for label in labels[1:]):
            dropped.append(i)
            continue
        columns["input_ids"].append(p + c)
        columns["attention_mask"].append([1] * (len(p) + len(c)))
        columns["labels"].append(labels)
        rows.append(i)
    if not rows:
        raise DataError(
            f"encode: all {len(prompt_ids)} rows have no completion token to learn "
            f"(max_length {max_length}); check the completions"
        )
    return Encoded(columns=columns, rows=rows, dropped=dropped, truncated=truncated)


def _check_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise DataError(
            f"tokenizer {name}: has no chat template; use a chat model or turn the chat template off"
        )


def _as_messages(prompt: Any, row: int) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError(
                f"encode: prompt of row {row} is empty; plain text (no prompt) needs the chat template off"
            )
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, (bytes, Mapping)) or not hasattr(prompt, "__len__"):
        raise DataError(
            f"encode: prompt of row {row}: expected text or a list of messages, got {type(prompt).__name__}"
        )
    messages = list(prompt)
    for j, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise DataError(
                f"encode: prompt of row {row}, message {j}: expected a mapping, got {type(m).__name__}"
            )
    return [dict(m) for m in messages]


def _prompt_texts(prompts: list[Any], tokenizer: Any) -> list[str]:
    """The chat template's rendering of each prompt, ending with the generation prompt."""
    _check_chat_template(tokenizer)
    return [
        tokenizer.apply_chat_template(_as_messages(p, i), add_generation_prompt=True, tokenize=False)
        for i, p in enumerate(prompts)
    ]


def _prompt_ids(prompts: list[Any], tokenizer: Any, chat_template: bool) -> list[list[int]]:
    if chat_template:
        # The template writes the special tokens (BOS included where the model wants one).
        return _tokenize(_prompt_texts(prompts, tokenizer), tokenizer, add_special_tokens=False)
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise DataError(
                f"encode: prompt of row {i} is a {type(p).__name__}; chat messages need the chat template on"
            )
    return _tokenize(prompts, tokenizer, add_special_tokens=True)


def _turn_format(tokenizer: Any) -> tuple[str, str]:
    """(text before, text after) the content of a final assistant turn in the chat template.

    Found by rendering one user turn with and without an assistant reply: the reply's
    rendering minus the prompt's is ``before + content + after``. Some templates write a header
    before the content (e.g. an empty thinking block); most write only an end-of-turn marker
    after it. Trailing whitespace after the marker is dropped: generation stops at the
    marker, so the newline that would separate the next turn is never produced. If the
    template does not render the prompt as a prefix of the conversation, the completion is
    followed by the EOS token alone.
    """
    _check_chat_template(tokenizer)
    sentinel = "HPO_COMPLETION_SENTINEL"
    user = [{"role": "user", "content": "Hi."}]
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        [*user, {"role": "assistant", "content": sentinel}], add_generation_prompt=False, tokenize=False
    )
    eos = tokenizer.eos_token or ""
    if not full.startswith(prompt) or sentinel not in full[len(prompt) :]:
        return "", eos
    before, after = full[len(prompt) :].split(sentinel, 1)
    after = after.rstrip()
    if eos and eos not in after:
        after += eos
    return before, after


def _completion_ids(completions: list[str], tokenizer: Any, chat_template: bool) -> list[list[int]]:
    if chat_template:
        before, after = _turn_format(tokenizer)
        return _tokenize([before + c + after for c in completions], tokenizer, add_special_tokens=False)
    eos = tokenizer.eos_token_id
    if eos is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise DataError(f"tokenizer {name}: has no EOS token, so a completion cannot be ended")
    return [ids + [eos] for ids in _tokenize(completions, tokenizer, add_special_tokens=False)]


def _tokenize(texts: list[str], tokenizer: Any, add_special_tokens: bool) -> list[list[int]]:
    out: list[list[int]] = []
    chunk = 2048  # rows per tokenizer call, to bound peak memory on large splits
    for start in range(0, len(texts), chunk):
        enc = tokenizer(texts[start : start + chunk], add_special_tokens=add_special_tokens)
        out.extend(list(ids) for ids in enc["input_ids"])
    return out


def stop_token_ids(tokenizer: Any, chat_template: bool) -> list[int]:
    """Token ids that end a generated completion: the EOS token and, with the chat template,
    the template's end-of-turn token (the first token after the content of an assistant turn
    when it is a special token, e.g. ``<|im_end|>`` or ``<|eot_id|>``)."""
    ids: list[int] = []
    if chat_template:
        _, after = _turn_format(tokenizer)
        first = tokenizer(after, add_special_tokens=False)["input_ids"][:1]
        if first and first[0] in set(tokenizer.all_special_ids):
            ids.append(first[0])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


# ---------------------------------------------------------------------------------------
# Evaluation loss


def preprocess_logits(logits: Any, labels: Any) -> Any:
    """Per-sequence NLL and token count, for Trainer's ``preprocess_logits_for_metrics``.

    The Trainer would otherwise keep every evaluation batch's logits until the end: at a
    49k-token vocabulary, 256 tokens and 1,000 rows that is 50 GB of float32. This keeps two
    numbers per row. Position t's logits predict label t + 1 (the causal shift); positions
    labelled -100 (prompt, padding) are skipped. Logits longer than the labels (prompt tuning
    prepends its virtual tokens) are aligned on the right.

    Args:
        logits: ``(batch, seq[+virtual], vocab)`` tensor, or a tuple whose first item is one.
        labels: ``(batch, seq)`` tensor of token ids and -100.

    Returns:
        A float32 tensor ``(batch, 2)``: summed NLL in nats over labelled tokens, and their
        number.
    """
    return token_nll(logits, labels, shift=True)


# ---------------------------------------------------------------------------------------
# Generation


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    max_new_tokens: int,
    chat_template: bool,
    batch_size: int = 8,
    max_prompt_length: int | None = None,
) -> list[str]:
    """Greedy completions of ``prompts``, without the prompts.

    Prompts are tokenized exactly as :func:`encode` tokenizes them, left-padded per batch (so
    every row's next token follows its own last prompt token) and decoded greedily until an
    end-of-turn/EOS token (:func:`stop_token_ids`) or ``max_new_tokens``. Generation costs a
    forward pass per new token: meant for a bounded sample of rows (the caller picks it).

    Args:
        model: A causal LM (a PEFT model too), on any device.
        tokenizer: Its tokenizer.
        prompts: As for :func:`encode`.
        max_new_tokens: Most tokens generated per row.
        chat_template: Render prompts with the chat template.
        batch_size: Rows per ``generate`` call.
        max_prompt_length: Cut longer prompts from the left, as :func:`encode` does.

    Returns:
        One decoded completion per prompt (special tokens removed, whitespace stripped).
    """
    import torch

    ids = _prompt_ids(list(prompts), tokenizer, chat_template)
    if max_prompt_length is not None:
        ids = [p[-max_prompt_length:] for p in ids]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_token_ids(tokenizer, chat_template)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size]
            width = max(len(p) for p in batch)
            input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
            with torch.no_grad():
                seqs = model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=pad,
                    eos_token_id=stops,
                )
            # generate returns prompt + new tokens; rows that stopped early are padded.
            out.extend(t.strip() for t in tokenizer.batch_decode(seqs[:, width:], skip_special_tokens=True))
    finally:
        model.train(was_training)
    return out
