"""Retrain an exported configuration, evaluate it on the test split and save it.

The training is the search trial's own code path (``hpo.context.prepare`` and
``train_and_evaluate``), so with the same data, epochs and seed the validation metric is the
trial's, bit for bit on CPU. The test split is loaded and tokenized here for the first time:
the search never sees it.

Output folder (default ``runs/<study>-trial<N>``)::

    model/          the trained model (full, partial), the PEFT adapter (lora, prompt) or the
                    state dict with adapters (adapter); the tokenizer; hpo_model.json saying
                    how to load it (``hpo.retrain.load_trained(folder)`` does)
    metrics.json    validation and test metrics, the trial's recorded metric, train time,
                    the validation curve, data sizes and fingerprints
    samples.jsonl   generative tasks: greedy generations for test inputs, one JSON object per
                    line with ``input``, ``reference`` and ``generated``
    config.yaml     the resolved retraining spec (``hpo retrain config.yaml`` runs it again)
    metrics.png     validation vs test bars and the validation curve over evaluations
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo.config import RetrainSpec, apply_tracking, load_retrain_spec
from hpo.errors import UserError, disk_full
from hpo.strategies.prompt import trim_prompt_outputs  # hooks are not saved with an adapter
from hpo.tasks import get_task

MODEL_INFO = "hpo_model.json"
"""File in the model folder that says how to load what is saved there."""
STATE_DICT = "model_with_adapters.safetensors"
"""State dict of a model with the ``adapter`` strategy's bottleneck adapters."""


@dataclass
class RetrainResult:
    """What one retrain produced."""

    out_dir: Path
    """The output folder."""
    validation: dict[str, float]
    """Validation metrics after training (the last scheduled evaluation)."""
    test: dict[str, float]
    """Test metrics of the trained model."""
    trial_value: float | None
    """The objective value the search trial recorded, if the spec says."""
    metric: str
    """The objective metric."""
    paths: list[Path] = field(default_factory=list)
    """Files and folders written."""
    model: Any = None
    """The trained model, in memory (what was saved under ``model/``)."""


def default_out_dir(rspec: RetrainSpec) -> Path:
    """``runs/<study>-trial<N>`` (``-retrain`` when the trial number is unknown)."""
    study = re.sub(r"[^\w.-]+", "_", rspec.study).strip("._") or "study"
    return Path("runs") / (f"{study}-trial{rspec.trial}" if rspec.trial is not None else f"{study}-retrain")


def evaluate_split(ctx: Any, model: Any, cfg: Any, seed: int, split: str) -> dict[str, float]:
    """The task's metrics and loss of ``model`` on one tokenized split, with the trial's eval settings."""
    from hpo.training import make_trainer

    output_dir = tempfile.mkdtemp(prefix="hpo-eval-")
    try:
        trainer = make_trainer(ctx, model, cfg, seed, output_dir, max_steps=1, eval_split=split)
        raw = trainer.evaluate(metric_key_prefix=split)
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    keep = set(get_task(ctx.spec.task).metric_names)
    return {
        k.removeprefix(f"{split}_"): float(v)
        for k, v in raw.items()
        if k.removeprefix(f"{split}_") in keep and isinstance(v, (int, float))
    }


# --------------------------------------------------------------------------- output folder

WRITTEN = ("model", "metrics.json", "config.yaml", "metrics.png", "samples.jsonl")
"""What a retrain writes in its output folder; ``--overwrite`` replaces these and nothing else."""


def check_out_dir(out_dir: Path, overwrite: bool = False, shown: str | None = None) -> None:
    """Refuse an output folder before training, so that no training run is lost to it.

    The folder may be missing (it is created after training, with its parents) or empty; a
    folder with anything in it is refused unless ``overwrite``, and then only what a retrain
    writes (:data:`WRITTEN`) is replaced. A writable folder is required.

    Args:
        out_dir: The output folder.
        overwrite: Allow a folder that already holds files.
        shown: How messages name it (default ``-o OUT_DIR``).

    Raises:
        UserError: a file where the folder (or one of its parents) should be, a non-empty
            folder without ``overwrite``, or a folder that cannot be written.
    """
    shown = shown or f"-o {out_dir}"
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{shown}: exists and is not a folder")
    existing = out_dir
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise UserError(f"{shown}: {existing} is a file, not a folder")
    if out_dir.is_dir() and not overwrite:
        entries = sorted(p.name for p in out_dir.iterdir())
        if entries:
            listed = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
            raise UserError(
                f"{shown}: folder is not empty ({listed}); "
                "pass --overwrite to replace what retrain writes there"
            )
    try:
        # the folder itself or its nearest existing parent must take a new file
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UserError(f"{shown}: cannot write in {existing} ({e.strerror or e})") from None


def _clear_written(out_dir: Path) -> None:
    """Remove what an earlier retrain wrote (``--overwrite``); other files stay."""
    for name in WRITTEN:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


# --------------------------------------------------------------------------- saving and loading


def save_trained(
    model: Any, tokenizer: Any, rspec: RetrainSpec, label_names: list[str], folder: Path
) -> None:
    """Save the model the way its strategy needs, the tokenizer, and ``hpo_model.json``.

    - PEFT strategies (lora, prompt) save the adapter (``adapter_config.json`` and weights,
      including the trained task head): reload with ``PeftModel.from_pretrained(base, folder)``;
    - full and partial save the whole model: reload with ``from_pretrained(folder)``;
    - adapter (bottleneck adapters are not a transformers or PEFT format) saves the config and
      the full state dict: rebuild the base model, apply the strategy, load the state dict.
    """
    from peft import PeftModel

    if folder.exists():
        shutil.rmtree(folder)  # a previous run's files (another strategy's format) must not linger
    folder.mkdir(parents=True)
    if isinstance(model, PeftModel):
        fmt = "peft"
        model.save_pretrained(str(folder))
    elif rspec.strategy == "adapter":
        from safetensors.torch import save_model

        fmt = "state_dict"
        model.config.save_pretrained(folder)
        save_model(model, str(folder / STATE_DICT))
    else:
        fmt = "transformers"
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    auto = get_task(rspec.task).auto_class
    info = {
        "format": fmt,
        "task": rspec.task,
        "strategy": rspec.strategy,
        "strategy_params": rspec.strategy_params,
        "base_model": rspec.model_path,
        "base_model_name": rspec.model,
        "label_names": label_names,
        "how_to_load": {
            "transformers": f"{auto}.from_pretrained(folder)",
            "peft": f"PeftModel.from_pretrained({auto}.from_pretrained(base_model, ...), folder)",
            "state_dict": f"model = hpo.strategies.get_strategy('adapter').apply({auto}"
            f".from_pretrained(base_model, ...), strategy_params); "
            f"safetensors.torch.load_model(model, folder / '{STATE_DICT}')",
        }[fmt]
        + "  (or: hpo.retrain.load_trained(folder))",
    }
    (folder / MODEL_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def load_trained(folder: str | Path, base_model: str | None = None) -> tuple[Any, Any]:
    """Load a model saved by ``hpo retrain`` (any strategy) and its tokenizer, in eval mode.

    Args:
        folder: The ``model/`` folder of a retrain output.
        base_model: Where the base model is now, if it moved (PEFT and adapter formats).

    Returns:
        (model, tokenizer).

    Raises:
        UserError: not a folder written by ``hpo retrain``.
    """
    from transformers import AutoTokenizer

    folder = Path(folder)
    try:
        info = json.loads((folder / MODEL_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(
            f"{folder}: no readable {MODEL_INFO} (not a model folder written by hpo retrain)"
        ) from None
    task = get_task(info["task"])
    labels = list(info["label_names"])
    base = base_model or info["base_model"]
    if info["format"] == "transformers":
        model = task.load_model(str(folder), labels)
    elif info["format"] == "peft":
        from peft import PeftModel

        model = trim_prompt_outputs(PeftModel.from_pretrained(task.load_model(base, labels), str(folder)))
    elif info["format"] == "state_dict":
        from safetensors.torch import load_model

        from hpo.strategies import get_strategy

        model = get_strategy(info["strategy"]).apply(
            task.load_model(base, labels), dict(info["strategy_params"])
        )
        load_model(model, str(folder / STATE_DICT))
    else:
        raise UserError(f"{folder / MODEL_INFO}: unknown format {info['format']!r}")
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(folder))


# --------------------------------------------------------------------------- chart


def metrics_chart(
    path: Path,
    validation: dict[str, float],
    test: dict[str, float],
    history: list[dict[str, float]],
    metric: str,
    title: str,
    trial_value: float | None = None,
    task: str = "sequence-classification",
) -> None:
    """Validation vs test bars of the task's chart metrics, and the validation curve."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    bars, curve = fig.subplots(1, 2, width_ratios=[1.1, 1])

    names, fractions = get_task(task).chart_metrics_of({*validation, *test})
    x = np.arange(len(names))
    for offset, label, values, color in (
        (-0.2, "validation", validation, "#1f77b4"),
        (0.2, "test", test, "#ff7f0e"),
    ):
        ys = [values.get(m, 0.0) for m in names]
        bars.bar(x + offset, ys, width=0.4, label=label, color=color)
        for xi, y in zip(x, ys, strict=True):
            bars.text(xi + offset, y, f"{y:.3f}", ha="center", va="bottom", fontsize=8)
    bars.set_xticks(x, names)
    if fractions:
        bars.set_ylim(0, 1.1)
    bars.set_title("validation vs test")
    bars.legend(loc="lower right")

    steps = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    curve.plot(
        steps, [h.get(metric, float("nan")) for h in history], marker="o", label=f"validation {metric}"
    )
    if trial_value is not None:
        curve.axhline(trial_value, color="#2ca02c", ls="--", lw=1, label=f"trial's {metric}")
    curve.set(xlabel="epoch", ylabel=metric, title="validation over training")
    curve.grid(alpha=0.3)
    if any("loss" in h for h in history) and metric != "loss":
        twin = curve.twinx()
        twin.plot(steps, [h.get("loss", float("nan")) for h in history], color="#d62728", ls=":", marker=".")
        twin.set_ylabel("validation loss", color="#d62728")
    curve.legend(loc="best")
    fig.suptitle(title)
    fig.savefig(path)


# --------------------------------------------------------------------------- retrain


def reproduction_verdict(diff: float, same_data: bool, overridden: bool) -> str:
    """How a retrain's validation value compares with the trial's, for people.

    Only the spec as exported (same data, no overrides) can claim an exact reproduction; on
    other data or settings an equal value is a coincidence and a difference is expected.
    """
    if same_data and not overridden:
        return "reproduced exactly" if diff == 0 else f"differs by {diff:+.4g}"
    if not same_data:
        found, why = "equal by coincidence", "the data differs from the trial's"
    else:
        found, why = "equal", "settings overridden"
    return f"{found if diff == 0 else f'differs by {diff:+.4g}'}; {why}, a match is not expected"


def retrain(
    file: str | Path,
    out_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    quiet: bool = False,
    overwrite: bool = False,
    tracking: dict[str, Any] | None = None,
    storage: str | None = None,
) -> RetrainResult:
    """Train an exported config, evaluate on validation and test, and save everything.

    Args:
        file: A retraining spec (``hpo export`` output, or a retrain's config.yaml).
        out_dir: Output folder; default ``runs/<study>-trial<N>``. Checked before training
            (:func:`check_out_dir`): it must be missing or empty unless ``overwrite``.
        overrides: ``--set`` pairs applied to the spec before validation, e.g.
            ``{"training.num_train_epochs": 3, "data.train_limit": None}``.
        quiet: Print nothing.
        overwrite: Replace the model, metrics, config and chart in a folder that holds files.
        tracking: ``--tracking`` (``hpo.config.tracking``): MLflow run, TensorBoard folder.
        storage: The study's storage, to attach the files to the trial (:mod:`hpo.artifacts`).

    Returns:
        Metrics and paths.

    Raises:
        ConfigError: the spec (after overrides) is invalid.
        UserError / DataError: an output folder that cannot be used, no test split, data or
            model problems.
    """
    from hpo.context import prepare
    from hpo.display import quiet_libraries
    from hpo.tracking import RetrainLogs
    from hpo.training import train_and_evaluate

    def say(text: str) -> None:
        if not quiet:
            print(text, flush=True)

    overrides = dict(overrides or {})
    rspec = apply_tracking(load_retrain_spec(file, overrides), tracking)
    shown = f"-o {out_dir}" if out_dir is not None else None
    if out_dir is None:
        out_dir = default_out_dir(rspec)
        shown = f"output folder {out_dir} (the default; choose another with -o)"
    check_out_dir(out_dir, overwrite, shown)  # before training, so a bad path costs no run
    logs = RetrainLogs(rspec, storage)  # the trial and the tracking server, checked now
    quiet_libraries()
    spec = rspec.to_study_spec()
    say(f"retraining {rspec.summary()}")
    ctx = prepare(spec, need_test=True, worker="retrain")
    if ctx.data.test is None or "test" not in ctx.datasets:
        raise UserError(f"{rspec.path}: the data has no labelled test split to evaluate on")
    same_data = rspec.data_fingerprint is None or ctx.data.fingerprint == rspec.data_fingerprint
    data_overridden = any(k.startswith("data.") for k in overrides)
    if not same_data and not data_overridden:
        print(
            f"warning: the data differs from the trial's (fingerprint {ctx.data.fingerprint}, "
            f"the trial saw {rspec.data_fingerprint}); metrics will not match the trial's",
            file=sys.stderr,
        )
    pooled = bool(ctx.folds)  # evaluation.folds: train on what the folds were cut from
    if pooled:
        ctx.datasets["train"] = ctx.datasets["pool"]
    say(
        f"data: train {len(ctx.data.train):,}{' + validation (pooled, as the folds)' if pooled else ''}, "
        f"validation {len(ctx.data.validation):,}, test {len(ctx.data.test):,} rows; device {ctx.device}"
    )
    cfg = rspec.trial_config()
    n_evals = max(1, round(rspec.epochs * rspec.evals_per_epoch))

    def progress(index: int, metrics: dict[str, float]) -> bool:
        say(
            f"  eval {index}/{n_evals} epoch {metrics.get('epoch', 0):.2f} {rspec.metric}={metrics.get(rspec.metric, float('nan')):.4f}"
        )
        return False

    if rspec.stop_after_step is not None:
        say(f"stopping after step {rspec.stop_after_step} (the trial's selected evaluation)")
    with logs.recording(cfg) as callbacks:  # a retrain that raises is logged as failed
        out = train_and_evaluate(
            ctx,
            cfg,
            rspec.seed,
            on_eval=progress,
            keep_model=True,
            stop_after_step=rspec.stop_after_step,
            callbacks=callbacks,
        )
        test = evaluate_split(ctx, out.model, cfg, rspec.seed, "test")

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise disk_full(e, "the output folder", out_dir) or UserError(
            f"{shown}: cannot create the folder ({e.strerror})"
        ) from None
    # Everything is written into a folder beside what an earlier retrain left and moved into
    # place once complete: a full disk fails this retrain with one line, earlier files intact.
    stage = out_dir / f".retrain-partial-{os.getpid()}"
    try:
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        _write_results(out, test, ctx, rspec, overrides, same_data, pooled, stage)
    except Exception as e:
        full = disk_full(e, "the retrained model and metrics", out_dir)  # before freeing the space
        shutil.rmtree(stage, ignore_errors=True)
        if full is None:
            raise
        raise full from None
    if overwrite:
        _clear_written(out_dir)
    paths = []
    for name in WRITTEN:
        if (stage / name).exists():
            os.replace(stage / name, out_dir / name)
            paths.append(out_dir / name)
    stage.rmdir()
    trial_value = rspec.provenance.get("value")
    trial_value = float(trial_value) if isinstance(trial_value, (int, float)) else None
    value = out.metrics.get(rspec.metric)
    if value is not None:
        line = f"validation {rspec.metric} {value:.4f}"
        if pooled:
            line += f" (rows trained on; the trial's {len(ctx.folds or [])}-fold mean was {trial_value})"
        elif trial_value is not None:
            verdict = reproduction_verdict(value - trial_value, same_data, bool(overrides))
            line += f" (trial recorded {trial_value:.4f}: {verdict})"
        say(line)
    order = get_task(rspec.task).metric_names
    say("test " + ", ".join(f"{k} {test[k]:.4f}" for k in order if k in test))
    say("wrote " + ", ".join(str(p) for p in paths))
    logs.done(out_dir, paths, say)  # files attached to the trial, the MLflow run finished
    return RetrainResult(
        out_dir=out_dir,
        validation=out.metrics,
        test=test,
        trial_value=trial_value,
        metric=rspec.metric,
        paths=paths,
        model=out.model,
    )


def _write_results(
    out: Any,
    test: dict[str, float],
    ctx: Any,
    rspec: RetrainSpec,
    overrides: dict[str, Any],
    same_data: bool,
    pooled: bool,
    folder: Path,
) -> None:
    """Write what a retrain leaves (:data:`WRITTEN`) in ``folder``."""
    from hpo.study import package_versions

    save_trained(out.model, ctx.tokenizer, rspec, ctx.data.label_names, folder / "model")
    trial_value = rspec.provenance.get("value")
    trial_value = float(trial_value) if isinstance(trial_value, (int, float)) else None
    value = out.metrics.get(rspec.metric)
    metrics = {
        "study": rspec.study,
        "trial": rspec.trial,
        "strategy": rspec.strategy,
        "metric": rspec.metric,
        "direction": rspec.direction,
        "trial_value": trial_value,
        "trial_validation": rspec.provenance.get("validation", {}),
        "validation": out.metrics,
        "test": test,
        "difference_from_trial": (value - trial_value)
        if value is not None and trial_value is not None
        else None,
        "same_data_as_trial": same_data,
        # cross-validated study: validation rows are trained on, only test is held out
        "trained_on_validation": pooled,
        "overrides": overrides,
        "epochs": rspec.epochs,
        "seed": rspec.seed,
        "device": ctx.device,
        "train_seconds": round(out.train_seconds, 3),
        "samples_per_second": round(out.samples_per_second, 2),
        "peak_memory_mb": round(out.peak_memory_mb, 1),
        "steps": out.steps,
        "trainable_params": out.trainable_params,
        "total_params": out.total_params,
        "data": {
            "train": len(ctx.data.train),
            "validation": len(ctx.data.validation),
            "test": len(ctx.data.test),
            "fingerprint": ctx.data.fingerprint,
            "trial_fingerprint": rspec.data_fingerprint,
            "sources": ctx.data.sources,
        },
        "validation_history": out.history,
        "versions": package_versions(),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    metrics_path = folder / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    sampler = get_task(rspec.task).samples
    if sampler is not None:  # a generative task: what the model writes for test inputs
        samples = sampler(ctx, out.model, "test")
        (folder / "samples.jsonl").write_text(
            "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in samples), encoding="utf-8"
        )

    from hpo._yaml import dump_yaml

    provenance = dict(rspec.provenance)
    provenance["retrained_from"] = {"file": str(Path(rspec.path).resolve()), "overrides": overrides}
    config_path = folder / "config.yaml"
    config_path.write_text(
        "# Resolved retraining spec of this run; `hpo retrain` takes it as it is.\n"
        + dump_yaml(rspec.to_dict(fingerprint=ctx.data.fingerprint, provenance=provenance)),
        encoding="utf-8",
    )
    chart = folder / "metrics.png"
    origin = f"{rspec.study} trial {rspec.trial}" if rspec.trial is not None else rspec.study
    metrics_chart(
        chart,
        out.metrics,
        test,
        out.history,
        rspec.metric,
        f"{origin}: {rspec.strategy}, {rspec.epochs:g} epoch(s), seed {rspec.seed}",
        trial_value if not overrides else None,
        task=rspec.task,
    )
