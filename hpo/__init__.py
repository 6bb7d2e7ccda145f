"""hpo: hyperparameter search over how to fine-tune language models.

The public Python API (:mod:`hpo.api`): the functions the ``hpo`` commands call, with the
commands' validation and errors raised as exceptions. Importing ``hpo`` loads no torch,
transformers or ray; a function that trains loads them when it is called.

    import hpo
    spec = hpo.load_study("studies/quickstart.yaml", {"budget.n_trials": 4})
    study = hpo.run(spec)
    hpo.results("quickstart")          # pandas DataFrame, one row per trial
    hpo.export("quickstart", "best.yaml")
    hpo.retrain("best.yaml", "runs/best")
"""

from __future__ import annotations

import sys
import types
from typing import Any

from hpo.api import best, by_strategy, export, load_study, report, results, retrain, run
from hpo.config import ConfigError, StudySpec
from hpo.errors import UserError
from hpo.options import resolve_storage
from hpo.space import SearchSpace, TrialConfig

__all__ = [
    "ConfigError",
    "SearchSpace",
    "StudySpec",
    "TrialConfig",
    "UserError",
    "best",
    "by_strategy",
    "export",
    "load_study",
    "report",
    "resolve_storage",
    "results",
    "retrain",
    "run",
    "__version__",
]

__version__ = "0.1.0"


_FUNCTIONS_OVER_MODULES = frozenset({"export", "report", "results", "retrain"})
"""API functions named like a module of this package (``hpo.results`` the module holds the
best-trial rules; ``hpo.results`` the function returns a DataFrame)."""


class _Package(types.ModuleType):
    """The ``hpo`` package module, whose API functions stay what ``hpo.NAME`` gives.

    Importing a submodule binds it on its package (``import hpo.results`` sets
    ``hpo.results``), which would replace the function of that name the first time any code
    imported the module. The submodules stay importable by name (``from hpo.results import
    best_trial``; ``sys.modules["hpo.results"]``).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FUNCTIONS_OVER_MODULES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
