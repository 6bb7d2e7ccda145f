"""Secrets and untrusted input: storage passwords stay out of argv, output, the database and
exported specs; model repositories run no code unless pinned; YAML holds plain data only."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, service_url, write_study

from hpo.cli import main

SECRET = "Secr3t-pw"


def _dump_database(url: str) -> str:
    import sqlalchemy

    from hpo.storage import normalize_url

    engine = sqlalchemy.create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            return "\n".join(
                repr(conn.execute(sqlalchemy.text(f"SELECT * FROM {table}")).fetchall())
                for table in sqlalchemy.inspect(engine).get_table_names()
            )
    finally:
        engine.dispose()


@pytest.mark.services
def test_storage_password_from_a_file_or_the_environment_never_shows(
    tmp_path: Path, tiny_model_dir: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Trust authentication ignores the password; it must still never surface anywhere.
    url = service_url("postgresql").replace("postgres@", f"postgres:{SECRET}@")
    secret_file = tmp_path / "storage.url"
    secret_file.write_text(f"# the study database\n{url}\n")
    secret_file.chmod(0o600)
    # The study file names the storage too: a stored copy of the study must not keep it.
    study = write_study(tmp_path, tiny_model_dir, storage=url, training={"max_train_steps": 2})
    assert main(["run", str(study), "--storage-file", str(secret_file), "--n-trials", "1"]) == 0
    out = tmp_path / "best.yaml"
    assert main(["export", "tiny", "-o", str(out), "--storage-file", str(secret_file)]) == 0
    monkeypatch.setenv("HPO_STORAGE", url)
    assert main(["studies"]) == 0
    captured = capfd.readouterr()
    assert "tiny" in captured.out and "postgres:***@" in captured.out
    assert SECRET not in captured.out + captured.err
    assert SECRET not in out.read_text() and "***" in out.read_text()
    dump = _dump_database(url)
    assert "hpo_config" in dump and SECRET not in dump


def test_storage_file_and_worker_storage_errors_are_one_line(
    tmp_path: Path, tiny_model_dir: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    study = write_study(tmp_path, tiny_model_dir)
    bad = tmp_path / "bad.url"
    bad.write_text(f"{SECRET}\n")
    cases = [
        (["studies", "--storage-file", str(tmp_path / "missing")], "file not found"),
        (["studies", "--storage-file", str(bad)], "the first line is not a URL"),
        (["studies", "--storage", "sqlite:///x.db", "--storage-file", str(bad)], "give one of them"),
        (["worker", str(study)], "--storage URL, --storage-file FILE or $HPO_STORAGE"),
    ]
    for argv, expected in cases:
        assert main(argv) == 1, argv
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (argv, err)
        assert SECRET not in err[0]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "name: !!python/object/apply:os.system ['touch /tmp/pwned']\n",
            "tag !!python/object/apply:os.system",
        ),
        ("name: !custom x\n", "tag !custom"),
        ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n", "anchor &a"),
        ("name: t\nspace: " + "[" * 40 + "]" * 40 + "\n", "nested deeper than 32 levels"),
        ("name: t\nlist: [" + ", ".join(["1"] * 10_001) + "]\n", "more than 10,000 entries"),
        ("name: '" + "x" * 70_000 + "'\n", "a value of 70,000 characters"),
        ("name: t\nseed: " + "9" * 5000 + "\n", "not plain data"),
    ],
    ids=["python-tag", "custom-tag", "alias-bomb", "deep", "long-list", "long-value", "huge-int"],
)
def test_yaml_tags_aliases_and_absurd_sizes_are_refused(
    text: str, problem: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from hpo.config import ConfigError, load_retrain_spec

    for name, prefix in (("study.yaml", ""), ("best.yaml", "kind: retrain\n")):
        path = tmp_path / name
        path.write_text(prefix + text)
        assert main(["validate", str(path)]) == 1
        err = capfd.readouterr().err
        assert f"{path}: " in err and problem in err, err
        assert "Traceback" not in err
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_retrain_spec(tmp_path / "best.yaml")
    assert not Path("/tmp/pwned").exists()


def test_a_file_over_one_megabyte_is_refused(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("name: t\n" + "# padding\n" * 120_000)
    assert main(["validate", str(path)]) == 1
    assert "an hpo file is at most 1,048,576 bytes" in capfd.readouterr().err


def test_trust_remote_code_needs_a_pinned_revision(tmp_path: Path, tiny_model_dir: Path) -> None:
    from hpo.config import ConfigError, load_study, study_as_dict
    from hpo.models import pretrained_options

    pinned = "0123456789abcdef0123456789abcdef01234567"
    for extra in ({}, {"revision": "main"}, {"revision": pinned[:12]}):
        with pytest.raises(
            ConfigError, match="trust_remote_code: true runs Python code .* 40-character commit"
        ):
            load_study(write_study(tmp_path, tiny_model_dir, trust_remote_code=True, **extra))
    with pytest.raises(ConfigError, match="trust_remote_code: expected true or false, got 'yes'"):
        load_study(write_study(tmp_path, tiny_model_dir, trust_remote_code="yes"))
    assert pretrained_options(load_study(write_study(tmp_path, tiny_model_dir))) == {}
    spec = load_study(write_study(tmp_path, tiny_model_dir, trust_remote_code=True, revision=pinned))
    assert pretrained_options(spec) == {"revision": pinned, "trust_remote_code": True}
    stored = study_as_dict(spec)
    assert stored["revision"] == pinned and stored["trust_remote_code"] is True


def test_model_code_is_not_run_and_weights_come_from_safetensors(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A folder whose config asks for its own Python code is refused (the code never runs);
    beside ``model.safetensors`` a ``pytorch_model.bin`` (pickle) is never read."""
    from hpo.tasks.sequence_classification import load_model

    marker = tmp_path / "code-ran"
    custom = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, custom)
    config = json.loads((custom / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "evil.Model", "AutoConfig": "evil.Config"}
    (custom / "config.json").write_text(json.dumps(config))
    (custom / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    # A known architecture loads with the library's own class; the repository's code is ignored.
    assert type(load_model(str(custom), ["neg", "pos"])).__module__.startswith("transformers.")
    # An architecture only the repository's code defines is refused.
    config["model_type"] = "evil-bert"
    (custom / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model(str(custom), ["neg", "pos"])
    assert not marker.exists()

    model_dir = tmp_path / "both"
    shutil.copytree(tiny_model_dir, model_dir)
    assert (model_dir / "model.safetensors").exists()
    (model_dir / "pytorch_model.bin").write_bytes(b"not a pickle: loading this file would fail")
    model = load_model(str(model_dir), ["neg", "pos"])
    assert model.config.num_labels == 2


def test_the_package_never_unpickles_weights_nor_trusts_remote_code() -> None:
    """``torch.load`` only with ``weights_only=True``; ``trust_remote_code`` only from a study."""
    offenders = []
    for path in (ROOT / "hpo").rglob("*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\btorch\.load\(", line) and "weights_only=True" not in line:
                offenders.append(f"{path}:{i}: {line.strip()}")
            if re.search(r"trust_remote_code\s*=\s*True|pickle\.loads?\(", line):
                offenders.append(f"{path}:{i}: {line.strip()}")
    assert offenders == []
