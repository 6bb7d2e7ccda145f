"""Labelled text data: load, split, subsample, check, and tokenize once per fingerprint.

A study's ``data:`` mapping becomes a :class:`DataSpec`. :func:`load_data` turns it into
train / validation (/ test) frames with integer labels and a fingerprint of the exact rows;
:func:`tokenize` turns those into ``datasets.Dataset`` objects, cached on disk and in the
process so that a worker running many trials tokenizes once.

Sources:

- a local file (csv, tsv, json, jsonl, parquet): validation and test are carved from it;
- a local folder: ``train.*``, ``dev.*``/``validation.*``/``valid.*``/``val.*`` and ``test.*``
  are found by name (or named in the spec); missing splits are carved from train;
- ``builtin:reviews``: generated reviews (see :mod:`hpo.data.reviews`);
- anything else is a Hugging Face hub dataset id, optionally ``id:config``.

The test split is carved before validation and before subsampling, whatever ``need_test``
says, so train and validation never change between the search and the retrain.

Where things are, in the order data flows:

- :mod:`~hpo.data.spec`: :class:`DataSpec` (the ``data:`` mapping) and :class:`DataError`;
- :mod:`~hpo.data.check`: :func:`check_spec` (no data read) and :func:`read_problems`;
- :mod:`~hpo.data.sources`: what ``data.source`` names (:func:`resolve_source`), split files
  found by name, :func:`describe_source`;
- :mod:`~hpo.data.readers`: one local file into a frame (tables, CoNLL, SQuAD JSON);
- :mod:`~hpo.data.loaders`: the raw splits of each kind of source;
- :mod:`~hpo.data.labels`: class labels to integers 0..k-1;
- :mod:`~hpo.data.splits`: carving and subsampling rows, cross-validation folds;
- :mod:`~hpo.data.load`: :func:`load_data`, :class:`LoadedData`, the fingerprint;
- :mod:`~hpo.data.cache`: :func:`tokenize` and its in-process and disk caches;
- :mod:`~hpo.data.reviews`, :mod:`~hpo.data.reviews_vocab`: the builtin dataset (imported only
  when it is used).
"""

from __future__ import annotations

from hpo.data.cache import TOKENIZE_STATS, clear_tokenize_cache, tokenize
from hpo.data.check import check_spec, read_problems
from hpo.data.load import LoadedData, load_data
from hpo.data.readers import read_conll, read_squad_json
from hpo.data.sources import Source, describe_source, is_hub_source, resolve_source
from hpo.data.spec import DataError, DataSpec
from hpo.data.splits import fold_indices, pool_folds, pooled_frame

__all__ = [
    "DataError",
    "DataSpec",
    "LoadedData",
    "Source",
    "TOKENIZE_STATS",
    "check_spec",
    "clear_tokenize_cache",
    "describe_source",
    "fold_indices",
    "is_hub_source",
    "load_data",
    "pool_folds",
    "pooled_frame",
    "read_conll",
    "read_problems",
    "read_squad_json",
    "resolve_source",
    "tokenize",
]
