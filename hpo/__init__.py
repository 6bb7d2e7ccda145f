"""hpo: hyperparameter search over how to fine-tune language models.

The public API; heavy dependencies load only when a function that trains is called.
"""

from __future__ import annotations

from hpo.config import ConfigError, StudySpec, load_study
from hpo.errors import UserError
from hpo.options import resolve_storage
from hpo.space import SearchSpace, TrialConfig

__all__ = [
    "ConfigError",
    "SearchSpace",
    "StudySpec",
    "TrialConfig",
    "UserError",
    "load_study",
    "resolve_storage",
    "__version__",
]

__version__ = "0.1.0"
