"""The two file formats hpo reads, validated once at the edge: study files
(:mod:`hpo.config.study`) and retraining specs (:mod:`hpo.config.retrain`), built on the
validators they share (:mod:`hpo.config.fields`).

Every problem in a file is reported together, each as ``FILE: key.path: what is wrong``
(:class:`ConfigError`). Nothing here imports torch, transformers or ray, so ``hpo validate``
stays fast.
"""

from __future__ import annotations

from hpo.config.fields import (
    DEVICES,
    EXTRA_TRAINING_KEYS,
    TRAINING_KEYS,
    ConfigError,
    ObjectiveSpec,
    apply_override,
    load_mapping,
    objective_dict,
    parse_section,
)
from hpo.config.retrain import KIND, RetrainSpec, load_retrain_spec, parse_retrain
from hpo.config.study import (
    BudgetSpec,
    ExecutionSpec,
    PrunerSpec,
    SamplerSpec,
    StudySpec,
    load_space_file,
    load_study,
    parse_study,
    study_as_dict,
)
from hpo.config.tracking import (
    MlflowSpec,
    TrackingSpec,
    apply_tracking,
    merge_tracking,
    parse_tracking,
    tracking_flags,
)

__all__ = [
    "DEVICES",
    "EXTRA_TRAINING_KEYS",
    "KIND",
    "MlflowSpec",
    "TrackingSpec",
    "merge_tracking",
    "parse_tracking",
    "tracking_flags",
    "TRAINING_KEYS",
    "BudgetSpec",
    "ConfigError",
    "ExecutionSpec",
    "ObjectiveSpec",
    "PrunerSpec",
    "RetrainSpec",
    "SamplerSpec",
    "StudySpec",
    "apply_override",
    "apply_tracking",
    "load_mapping",
    "load_retrain_spec",
    "load_space_file",
    "load_study",
    "objective_dict",
    "parse_retrain",
    "parse_section",
    "parse_study",
    "study_as_dict",
]
