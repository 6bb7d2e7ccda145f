"""Search-space files -> Optuna suggestions.

A space is a strategy choice, shared parameters that every trial gets, and per-strategy
parameters that exist only in trials of that strategy (a conditional space). A strategy may
override a shared parameter's range. Optuna parameter names: shared parameters keep their
name (``learning_rate``); per-strategy ones and overrides are prefixed with the strategy
(``lora.r``, ``lora.learning_rate``), so each strategy's distribution stays its own and TPE's
group decomposition models each strategy's sub-space separately.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Training arguments a space (or the study's `training:` block) may set, with their defaults.
# Names follow transformers.TrainingArguments so they pass straight through.
TRAINING_DEFAULTS: dict[str, Any] = {
    "learning_rate": 3.0e-5,
    "per_device_train_batch_size": 16,
    "gradient_accumulation_steps": 1,
    "weight_decay": 0.0,
    "warmup_ratio": 0.0,
    "lr_scheduler_type": "linear",
    "max_grad_norm": 1.0,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1.0e-8,
    "label_smoothing_factor": 0.0,
    "num_train_epochs": None,  # None: the study's budget.max_epochs
}

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


@dataclass(frozen=True)
class Param:
    """One parameter: a fixed value, a categorical choice, or an int/float range."""

    kind: str  # "fixed" | "categorical" | "int" | "float"
    value: Any = None
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None

    def suggest(self, trial: Any, name: str) -> Any:
        """Ask an Optuna trial for this parameter under ``name``."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def candidates(self) -> list[Any]:
        """Values worth checking at validation time: every choice, or both ends of a range."""
        if self.kind == "fixed":
            return [self.value]
        if self.kind == "categorical":
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.kind == "int" else [self.low, self.high]

    def describe(self) -> str:
        """Short human form: ``8 | 16 | 32``, ``float [2e-05, 5e-05] log``, ``= 0.1``."""
        if self.kind == "fixed":
            return f"= {self.value!r}"
        if self.kind == "categorical":
            return " | ".join(str(c) for c in self.choices)
        extra = " log" if self.log else ""
        extra += f" step {self.step:g}" if self.step else ""
        return f"{self.kind} [{self.low:g}, {self.high:g}]{extra}"

    def to_dict(self) -> Any:
        """The YAML form this parameter was written in (normalised)."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return list(self.choices)
        d: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            d["log"] = True
        if self.step:
            d["step"] = self.step
        return d


@dataclass
class TrialConfig:
    """What one trial trains: a strategy, its parameters, and training arguments."""

    strategy: str
    strategy_params: dict[str, Any]
    training: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "strategy_params": dict(self.strategy_params),
            "training": dict(self.training),
        }


@dataclass
class SearchSpace:
    """A parsed, validated search space."""

    source: str
    strategy: Param
    shared: dict[str, Param] = field(default_factory=dict)
    per_strategy: dict[str, dict[str, Param]] = field(default_factory=dict)

    @property
    def strategies(self) -> list[str]:
        return [str(s) for s in self.strategy.candidates()]

    def params_for(self, strategy: str) -> dict[str, tuple[str, Param]]:
        """Parameters a trial of ``strategy`` has: name -> (Optuna name, Param)."""
        out = {name: (name, p) for name, p in self.shared.items()}
        for name, p in self.per_strategy.get(strategy, {}).items():
            out[name] = (f"{strategy}.{name}", p)
        return out

    def sample(self, trial: Any, training_base: dict[str, Any] | None = None) -> TrialConfig:
        """Suggest one configuration on an Optuna trial (define-by-run; Ray's OptunaSearch too)."""
        from hpo.strategies import get_strategy

        strategy = str(self.strategy.suggest(trial, "strategy"))
        training = dict(TRAINING_DEFAULTS)
        training.update(training_base or {})
        params = dict(get_strategy(strategy).params)
        for name, (opt_name, p) in self.params_for(strategy).items():
            value = p.suggest(trial, opt_name)
            (training if name in TRAINING_DEFAULTS else params)[name] = value
        return TrialConfig(strategy, params, training)

    def fixed(
        self, strategy: str, values: dict[str, Any], training_base: dict[str, Any] | None = None
    ) -> TrialConfig:
        """Build a config from stored Optuna params (e.g. a trial to export)."""
        from hpo.strategies import get_strategy

        training = dict(TRAINING_DEFAULTS)
        training.update(training_base or {})
        params = dict(get_strategy(strategy).params)
        for name, (opt_name, p) in self.params_for(strategy).items():
            v = values.get(opt_name, p.value if p.kind == "fixed" else None)
            if v is not None:
                (training if name in TRAINING_DEFAULTS else params)[name] = v
        return TrialConfig(strategy, params, training)

    def to_dict(self) -> dict[str, Any]:
        """Normalised YAML-able form; stored on the study so workers can check they agree."""
        d: dict[str, Any] = {"strategy": self.strategy.to_dict()}
        d.update({k: p.to_dict() for k, p in self.shared.items()})
        if self.per_strategy:
            d["strategies"] = {
                s: {k: p.to_dict() for k, p in ps.items()} for s, ps in self.per_strategy.items()
            }
        return d

    def describe(self) -> str:
        """The resolved conditional space as indented text."""
        lines = [f"search space ({self.source})", f"  strategy: {self.strategy.describe()}"]
        for k, p in self.shared.items():
            lines.append(f"  {k}: {p.describe()}")
        for s in self.strategies:
            own = self.per_strategy.get(s, {})
            lines.append(f"  when strategy = {s}:" + ("" if own else " (shared parameters only)"))
            for k, p in own.items():
                tag = "  (overrides shared)" if k in self.shared else ""
                lines.append(f"    {s}.{k}: {p.describe()}{tag}")
        return "\n".join(lines)


def parse_param(raw: Any, path: str, problems: list[str]) -> Param | None:
    if isinstance(raw, list):
        if not raw:
            problems.append(f"{path}: empty list of choices (expected at least one value)")
            return None
        bad = [c for c in raw if not isinstance(c, (str, int, float, bool)) or c is None]
        if bad:
            problems.append(f"{path}: choices must be strings or numbers, got {bad[0]!r}")
            return None
        if len(set(map(repr, raw))) != len(raw):
            problems.append(f"{path}: duplicate choices in {raw}")
            return None
        return Param("categorical", choices=tuple(raw)) if len(raw) > 1 else Param("fixed", value=raw[0])
    if isinstance(raw, dict):
        if "choices" in raw:
            extra = set(raw) - {"choices"}
            if extra:
                problems.append(f"{path}: unknown key(s) {sorted(extra)} beside 'choices'")
            if not isinstance(raw["choices"], list):
                problems.append(f"{path}.choices: expected a list, got {type(raw['choices']).__name__}")
                return None
            return parse_param(raw["choices"], path, problems)
        extra = set(raw) - {"low", "high", "log", "step", "type"}
        if extra:
            problems.append(f"{path}: unknown key(s) {sorted(extra)} (expected low, high, log, step, type)")
            return None
        low, high = raw.get("low"), raw.get("high")
        n = len(problems)
        for key, v in (("low", low), ("high", high)):
            if v is None:
                problems.append(f"{path}.{key}: missing (a range needs low and high)")
            elif isinstance(v, bool) or not isinstance(v, (int, float)):
                problems.append(f"{path}.{key}: expected a number, got {v!r}")
        log = raw.get("log", False)
        if not isinstance(log, bool):
            problems.append(f"{path}.log: expected true or false, got {log!r}")
        step = raw.get("step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
            problems.append(f"{path}.step: expected a positive number, got {step!r}")
        kind = raw.get("type")
        if kind is not None and kind not in ("int", "float"):
            problems.append(f"{path}.type: expected int or float, got {kind!r}")
        if len(problems) > n:
            return None
        assert isinstance(low, (int, float)) and isinstance(high, (int, float))
        if kind is None:
            kind = "int" if isinstance(low, int) and isinstance(high, int) else "float"
        if low > high:
            problems.append(f"{path}: low must be <= high, got low={low!r} high={high!r}")
            return None
        if log and low <= 0:
            problems.append(f"{path}.low: a log range needs low > 0, got {low!r}")
            return None
        if log and step is not None:
            problems.append(f"{path}: log and step cannot be combined")
            return None
        if low == high:
            return Param("fixed", value=int(low) if kind == "int" else float(low))
        return Param(str(kind), low=float(low), high=float(high), log=bool(log), step=step)
    if isinstance(raw, (str, int, float, bool)):
        return Param("fixed", value=raw)
    problems.append(f"{path}: expected a value, a list of choices or a {{low, high}} range, got {raw!r}")
    return None


_TYPES = {
    "learning_rate": (float,),
    "per_device_train_batch_size": (int,),
    "gradient_accumulation_steps": (int,),
    "weight_decay": (float,),
    "warmup_ratio": (float,),
    "max_grad_norm": (float,),
    "num_train_epochs": (int, float),
    "label_smoothing_factor": (float,),
}


def check_values(name: str, p: Param, path: str, problems: list[str]) -> None:
    """Range sanity for the training arguments that have an obvious domain."""
    want = _TYPES.get(name)
    if want is None:
        return
    for v in p.candidates():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            problems.append(f"{path}: expected a number, got {v!r}")
            return
        if want == (int,) and p.kind != "float" and not float(v).is_integer():
            problems.append(f"{path}: expected an integer, got {v!r}")
            return
        if (
            name in ("per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs")
            and v < 1
        ):
            problems.append(f"{path}: must be >= 1, got {v!r}")
            return
        if name == "learning_rate" and not 0 < v < 1:
            problems.append(f"{path}: must be in (0, 1), got {v!r}")
            return
        if name in ("warmup_ratio", "label_smoothing_factor") and not 0 <= v < 1:
            problems.append(f"{path}: must be in [0, 1), got {v!r}")
            return
        if v < 0:
            problems.append(f"{path}: must be >= 0, got {v!r}")
            return
    if want == (int,) and p.kind == "float":
        problems.append(f"{path}: expected an integer range, got a float range")


def resolve_space_path(ref: str, base_dir: Path) -> Path:
    """A space reference is a shipped name (``default``) or a path relative to the study file."""
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        p = Path(ref)
        return p if p.is_absolute() else (base_dir / p)
    return SHIPPED_DIR / f"{ref}.yaml"


def parse_space(
    raw: Any,
    source: str,
    model_config: dict[str, Any] | None,
    problems: list[str],
    prefix: str = "",
    task: str | None = None,
) -> SearchSpace | None:
    """Validate a space mapping; append ``source: key: problem`` lines to ``problems``."""
    from hpo.strategies import STRATEGIES

    def err(msg: str) -> None:
        problems.append(f"{source}: {prefix}{msg}")

    if not isinstance(raw, dict):
        err(f"expected a mapping with 'strategy' and parameters, got {type(raw).__name__}")
        return None
    local: list[str] = []
    if "strategy" not in raw:
        err("strategy: missing (expected a list of strategies, e.g. [full, lora])")
        return None
    strategy = parse_param(raw["strategy"], "strategy", local)
    if strategy is not None:
        unknown = [s for s in strategy.candidates() if s not in STRATEGIES]
        if unknown:
            local.append(
                f"strategy: unknown strategy {unknown[0]!r} (known: {', '.join(sorted(STRATEGIES))})"
            )
            strategy = None
        elif strategy.kind not in ("fixed", "categorical"):
            local.append("strategy: expected a strategy name or a list of names")
            strategy = None
    shared: dict[str, Param] = {}
    for key, val in raw.items():
        if key in ("strategy", "strategies"):
            continue
        if key not in TRAINING_DEFAULTS:
            local.append(
                f"{key}: unknown parameter (shared parameters: {', '.join(TRAINING_DEFAULTS)}; "
                "strategy parameters go under strategies.<name>)"
            )
            continue
        p = parse_param(val, key, local)
        if p is not None:
            check_values(key, p, key, local)
            shared[key] = p
    per: dict[str, dict[str, Param]] = {}
    raw_per = raw.get("strategies") or {}
    if not isinstance(raw_per, dict):
        local.append(
            f"strategies: expected a mapping of strategy -> parameters, got {type(raw_per).__name__}"
        )
        raw_per = {}
    chosen = strategy.candidates() if strategy is not None else list(STRATEGIES)
    for sname, sraw in raw_per.items():
        if sname not in STRATEGIES:
            local.append(f"strategies.{sname}: unknown strategy (known: {', '.join(sorted(STRATEGIES))})")
            continue
        if strategy is not None and sname not in chosen:
            local.append(f"strategies.{sname}: strategy is not in the strategy list {chosen}")
            continue
        if sraw is None:
            continue
        if not isinstance(sraw, dict):
            local.append(f"strategies.{sname}: expected a mapping of parameters, got {type(sraw).__name__}")
            continue
        own = STRATEGIES[sname].params
        per[sname] = {}
        for key, val in sraw.items():
            path = f"strategies.{sname}.{key}"
            if key not in own and key not in TRAINING_DEFAULTS:
                known = ", ".join(own) if own else "none"
                local.append(
                    f"{path}: unknown parameter for strategy {sname!r} (its parameters: {known}; or a shared one)"
                )
                continue
            p = parse_param(val, path, local)
            if p is not None:
                check_values(key, p, path, local)
                per[sname][key] = p
    # Strategy-specific checks against the model, over every value the space can produce.
    for sname in chosen if strategy is not None else []:
        st = STRATEGIES[sname]
        own_params = per.get(sname, {})
        names = [k for k in own_params if k in st.params]
        seen: set[str] = set()
        # Every combination of the values the space can produce, capped so a wide space stays fast.
        combos = itertools.islice(itertools.product(*[own_params[k].candidates() for k in names]), 512)
        for combo in combos:
            values = dict(st.params)
            values.update(dict(zip(names, combo, strict=True)))
            for msg in st.check(model_config, values, task=task):
                if msg not in seen:
                    seen.add(msg)
                    local.append(f"strategies.{sname}: {msg}")
            if len(seen) > 5:
                break
    problems.extend(f"{source}: {prefix}{m}" for m in local)
    if local or strategy is None:
        return None
    return SearchSpace(source=source, strategy=strategy, shared=shared, per_strategy=per)
