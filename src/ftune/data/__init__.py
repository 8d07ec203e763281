"""Data: sources -> splits -> token ids -> batches."""

from ftune.data.builtin import CATALOG, builtin_path, cache_dir
from ftune.data.prepare import Splits, load_eval_frame, load_splits, read_texts, select_columns
from ftune.data.tokenize import Encoded, collate, encode

__all__ = ["CATALOG", "Encoded", "Splits", "builtin_path", "cache_dir", "collate", "encode", "load_eval_frame",
           "load_splits", "read_texts", "select_columns"]
