"""Tasks and splits: 7:2:1, CTR labels and side fields, leave-one-out top-k, sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixemb.data import DataError, load_dataset, random_split


def _inter(tmp_path, rows, user_side=None, item_side=None):
    p = tmp_path / "toy.inter"
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += ["\t".join(map(str, r)) for r in rows]
    p.write_text("\n".join(lines) + "\n")
    if user_side:
        (tmp_path / "toy.user").write_text(
            "user_id:token\tgender:token\n" + "".join(f"{u}\t{g}\n" for u, g in user_side)
        )
    if item_side:
        (tmp_path / "toy.item").write_text(
            "item_id:token\tmovie_title:token\tgenre:token\n"
            + "".join(f"{i}\tT\t{g}\n" for i, g in item_side)
        )
    return p


def _rows(n_users=20, n_items=15, per_user=6, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, per_user, replace=False)
        for t, i in enumerate(items):
            rows.append((f"u{u}", f"i{i}", int(rng.integers(1, 6)), 1000 + 10 * t))
    return rows


def test_random_split_is_exact_disjoint_and_seeded():
    tr, va, te = random_split(1001, seed=3)
    assert (len(tr), len(va), len(te)) == (701, 200, 100)
    assert len(set(tr) | set(va) | set(te)) == 1001
    assert np.array_equal(random_split(1001, 3)[0], tr)
    assert not np.array_equal(random_split(1001, 4)[0], tr)


def test_rating_task_and_train_only_frequencies(tmp_path):
    p = _inter(tmp_path, _rows())
    ds = load_dataset("toy", "rating", path=str(p), fmt="inter")
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (84, 24, 12)
    freq = np.bincount(ds.train.ids.reshape(-1).numpy(), minlength=ds.num_features)
    assert freq.tolist() == ds.encoder.frequencies.tolist()  # counts of the train split only
    assert set(ds.train.labels.tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    again = load_dataset("toy", "rating", path=str(p), fmt="inter")
    assert torch.equal(again.test.ids, ds.test.ids)


def test_ctr_drops_threes_and_joins_side_fields(tmp_path):
    rows = [("a", "x", 5, 1), ("a", "y", 3, 2), ("b", "x", 1, 3), ("b", "z", 4, 4)] * 5
    p = _inter(tmp_path, rows, user_side=[("a", "F"), ("b", "M")], item_side=[("x", "Drama")])
    ds = load_dataset("toy", "ctr", path=str(p), fmt="inter")
    total = len(ds.train) + len(ds.valid) + len(ds.test)
    assert total == 15  # the five rating-3 rows are dropped
    assert [f.name for f in ds.encoder.fields] == ["user_id", "item_id", "gender", "genre"]
    enc = ds.encoder
    for split in (ds.train, ds.valid, ds.test):
        for row, y in zip(split.ids.tolist(), split.labels.tolist()):
            user = enc.decode(row[0])[1]
            item = enc.decode(row[1])[1]
            assert enc.decode(row[2])[1] == {"a": "F", "b": "M"}[user]
            # item z has no side row: its genre is missing, i.e. the genre OOV id
            assert (row[3] == enc.oov_id("genre")) == (item == "z")
            assert y == (1.0 if (user, item) in {("a", "x"), ("b", "z")} else 0.0)


def test_side_fields_join_rating_rows_too_and_are_off_for_rating_by_default(tmp_path):
    rows = [("a", "x", 5, 1), ("a", "y", 3, 2), ("b", "x", 1, 3)] * 5
    p = _inter(tmp_path, rows, user_side=[("a", "F"), ("b", "M")], item_side=[("x", "Drama")])
    plain = load_dataset("toy", "rating", path=str(p), fmt="inter")
    assert [f.name for f in plain.encoder.fields] == ["user_id", "item_id"]
    ds = load_dataset("toy", "rating", path=str(p), fmt="inter", side_fields=True)
    assert [f.name for f in ds.encoder.fields] == ["user_id", "item_id", "gender", "genre"]
    assert len(ds.train) + len(ds.valid) + len(ds.test) == 15  # rating keeps the threes
    assert torch.equal(ds.test.labels, plain.test.labels)  # same rows, same split
    enc = ds.encoder
    for row in ds.train.ids.tolist():
        user, item = enc.decode(row[0])[1], enc.decode(row[1])[1]
        assert enc.decode(row[2])[1] == {"a": "F", "b": "M"}[user]
        assert (row[3] == enc.oov_id("genre")) == (item == "y")
    no_side = load_dataset("toy", "ctr", path=str(p), fmt="inter", side_fields=False)
    assert [f.name for f in no_side.encoder.fields] == ["user_id", "item_id"]
    with pytest.raises(ValueError, match="not topk"):
        load_dataset("toy", "topk", path=str(p), fmt="inter", side_fields=True)
    with pytest.raises(ValueError, match="side tables"):
        load_dataset("synthetic", "rating", side_fields=True)


def test_topk_leave_one_out_and_negatives(tmp_path):
    rows = _rows(n_users=12, n_items=140, per_user=5)
    rows.append(("solo", "i1", 5, 1))  # < 3 interactions: training only
    p = _inter(tmp_path, rows)
    ds = load_dataset("toy", "topk", path=str(p), fmt="inter", num_negatives_eval=99)
    enc = ds.encoder
    assert ds.valid.group_size == ds.test.group_size == 100
    assert len(ds.test) == 12 * 100 and len(ds.train) == 12 * 3 + 1
    seen: dict[str, set] = {}
    latest: dict[str, tuple] = {}
    for u, i, _, t in rows:
        seen.setdefault(u, set()).add(i)
        if u not in latest or t > latest[u][1]:
            latest[u] = (i, t)
    for g in range(12):
        group = ds.test.ids[g * 100 : (g + 1) * 100]
        labels = ds.test.labels[g * 100 : (g + 1) * 100]
        assert labels[0] == 1 and labels[1:].sum() == 0
        user = enc.decode(int(group[0, 0]))[1]
        assert (group[:, 0] == group[0, 0]).all()
        pos = group[0, 1].item()
        if pos != enc.oov_id("item_id"):
            assert enc.decode(pos)[1] == latest[user][0]  # the latest interaction is held out
        for item_id in group[1:, 1].tolist():
            name = enc.decode(item_id)[1]
            assert name is None or name not in seen[user]  # negatives never interacted


def test_topk_train_sampler_is_seeded_per_epoch(tmp_path):
    p = _inter(tmp_path, _rows(n_users=10, n_items=50, per_user=8))
    ds = load_dataset("toy", "topk", path=str(p), fmt="inter", num_negatives_train=4)
    e0, e0b, e1 = ds.train_for_epoch(0), ds.train_for_epoch(0), ds.train_for_epoch(1)
    assert torch.equal(e0.ids, e0b.ids) and not torch.equal(e0.ids, e1.ids)
    n_pos = len(ds.train)
    assert len(e0) == 5 * n_pos and e0.labels[:n_pos].eq(1).all() and e0.labels[n_pos:].eq(0).all()
    enc = ds.encoder
    rows = _rows(n_users=10, n_items=50, per_user=8)
    pairs = {(u, i) for u, i, _, _ in rows}
    train_pairs = {(enc.decode(u)[1], enc.decode(i)[1]) for u, i in ds.train.ids.tolist()}
    assert train_pairs < pairs and len(train_pairs) == n_pos == 10 * 6
    for u, i in e0.ids[n_pos:].tolist():
        assert (enc.decode(u)[1], enc.decode(i)[1]) not in train_pairs
    assert torch.equal(e0.ids[:n_pos], ds.train.ids)
    assert not torch.equal(ds.train_for_epoch(2).ids, e1.ids)


def test_topk_train_negatives_avoid_training_items_only(tmp_path):
    # u trains on a, b, c; d (valid) and e (test) are held out. w trains on d, e, f.
    rows = [("u", x, 5, t) for t, x in enumerate("abcde")]
    rows += [("w", x, 5, t) for t, x in enumerate("defgh")]
    p = _inter(tmp_path, rows)
    ds = load_dataset("toy", "topk", path=str(p), fmt="inter", num_negatives_eval=1)
    enc = ds.encoder
    sampled = ds.train_for_epoch(0)
    n_pos = len(ds.train)
    negs = [enc.decode(i)[1] for u, i in sampled.ids[n_pos:].tolist() if enc.decode(u)[1] == "u"]
    # g, h appear only in w's held-out rows: unseen in training, they decode as OOV (None)
    assert len(negs) == 3 * 4 and set(negs) <= {"d", "e", "f", None}
    # u's held-out items are fair game in training, as NCF and RecBole sample them
    assert set(negs) & {"d", "e"}
    # but an evaluation negative is never an item u touched in any split
    for split in (ds.valid, ds.test):
        for g in split.ids.reshape(-1, 2, 2):
            if enc.decode(int(g[0, 0]))[1] == "u":
                assert enc.decode(int(g[1, 1]))[1] in {"f", None}


def test_topk_repeated_pairs_count_once_at_their_latest_time(tmp_path):
    rows = [("u", "a", 5, 1), ("u", "b", 5, 2), ("u", "c", 5, 3), ("u", "a", 5, 4)]
    rows += [("w", "a", 4, 0), ("w", "c", 4, 0)] + [("w", f"x{k}", 4, k) for k in range(1, 6)]
    p = _inter(tmp_path, rows)
    ds = load_dataset("toy", "topk", path=str(p), fmt="inter", num_negatives_eval=3)
    enc = ds.encoder
    assert ds.info["num_repeats_dropped"] == 1 and ds.info["num_interactions"] == 10
    by_user = {enc.decode(int(g[0, 0]))[1]: g for g in ds.test.ids.reshape(-1, 4, 2)}
    assert enc.decode(int(by_user["u"][0, 1])) == ("item_id", "a")  # a at t=4 is the latest
    valid = {enc.decode(int(g[0, 0]))[1]: g for g in ds.valid.ids.reshape(-1, 4, 2)}
    assert enc.decode(int(valid["u"][0, 1])) == ("item_id", "c")
    train_pairs = {(enc.decode(u)[1], enc.decode(i)[1]) for u, i in ds.train.ids.tolist()}
    assert ("u", "a") not in train_pairs and ("u", "b") in train_pairs


def test_synthetic_extra_fields_and_guessed_formats(tmp_path):
    ds = load_dataset("synthetic", "ctr", num_rows=2000, num_fields=4, vocab_sizes=[50, 40, 30, 5])
    assert [f.name for f in ds.encoder.fields] == ["user_id", "item_id", "f2", "f3"]
    assert len(ds.encoder.vocab("f3")) <= 5 and ds.num_features <= 50 + 40 + 30 + 5 + 4
    topk = load_dataset("synthetic", "topk", num_rows=3000, num_fields=3)
    assert topk.num_fields == 2  # top-k ranks items for users
    p = _inter(tmp_path, _rows(n_users=5))
    assert load_dataset("toy", "rating", path=str(p)).info["source"] == str(p)
    dat = tmp_path / "ratings.dat"
    dat.write_text("".join(f"{u}::{i}::4::{i}\n" for u in range(5) for i in range(5)))
    assert sum(load_dataset("ml", "rating", path=str(dat)).info["rows"].values()) == 25
    with pytest.raises(ValueError, match="fmt must be one of"):
        load_dataset("x", "rating", path=str(tmp_path / "toy.user"))


def test_criteo_and_csv_files_stream_through(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(300):
        ints = [str(int(x)) if x < 50 else "" for x in rng.integers(0, 60, 13)]
        cats = [f"{int(c):x}" for c in rng.integers(0, 20, 26)]
        lines.append("\t".join([str(int(rng.integers(0, 2))), *ints, *cats]))
    p = tmp_path / "day.txt"
    p.write_text("\n".join(lines) + "\n")
    ds = load_dataset("criteo-toy", "ctr", path=str(p), fmt="criteo", seed=2)
    assert ds.num_fields == 39 and ds.train.values is not None
    assert len(ds.train) + len(ds.valid) + len(ds.test) == 300
    assert 0.55 < len(ds.train) / 300 < 0.85  # 7:2:1 in expectation
    csv = tmp_path / "c.csv"
    csv.write_text("y,user,price\n" + "".join(f"{i % 2},u{i % 7},{i}\n" for i in range(50)))
    ds = load_dataset(
        "c", "ctr", path=str(csv), fmt="csv", label="y", categorical=["user"], numeric=["price"]
    )
    assert ds.num_fields == 2 and ds.train.values is not None


def test_unknown_names_are_clear():
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*movielens-100k.*synthetic"):
        load_dataset("nope")
    with pytest.raises(ValueError, match="task must be"):
        load_dataset("synthetic", "regression")


def test_rating_splits_partition_the_rows_and_follow_the_seed(tmp_path):
    rows = _rows(n_users=30, n_items=20, per_user=7)
    p = _inter(tmp_path, rows)
    ds = load_dataset("toy", "rating", path=str(p), fmt="inter", seed=5)
    n = len(rows)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (
        round(0.7 * n),
        round(0.2 * n),
        n - round(0.7 * n) - round(0.2 * n),
    )
    enc = ds.encoder
    got = []
    for split in (ds.train, ds.valid, ds.test):
        for (u, i), y in zip(split.ids.tolist(), split.labels.tolist()):
            got.append((enc.decode(u)[1], enc.decode(i)[1], y))
    # valid/test values unseen in training decode to None (OOV); the rest match the file
    known = [g for g in got if None not in g]
    assert len(got) == n and len(known) > 0.8 * n
    assert set(known) <= {(u, i, float(r)) for u, i, r, _ in rows}
    other = load_dataset("toy", "rating", path=str(p), fmt="inter", seed=6)
    assert not torch.equal(other.train.labels, ds.train.labels)
    assert ds.info["rows"] == {"train": len(ds.train), "valid": len(ds.valid), "test": 21}
    assert ds.info["source"] == str(p) and ds.info["num_users"] == 30


def test_topk_latest_timestamp_ties_by_file_order(tmp_path):
    rows = [
        ("u", "a", 5, 5),
        ("u", "b", 5, 9),
        ("u", "c", 5, 9),  # same time as b, later in the file: the test positive
        ("u", "d", 5, 1),
        ("v", "b", 5, 3),
        ("v", "c", 5, 2),  # v has 2 interactions: both stay in training (b, c get ids)
    ]
    rows += [("w", f"x{k}", 4, k) for k in range(120)]
    p = _inter(tmp_path, rows)
    ds = load_dataset("toy", "topk", path=str(p), fmt="inter", num_negatives_eval=9)
    enc = ds.encoder
    assert ds.test.group_size == 10 and len(ds.test) == 20  # users u and w
    test_pos = {enc.decode(int(g[0, 0]))[1]: int(g[0, 1]) for g in ds.test.ids.reshape(-1, 10, 2)}
    valid_pos = {enc.decode(int(g[0, 0]))[1]: int(g[0, 1]) for g in ds.valid.ids.reshape(-1, 10, 2)}
    assert test_pos["u"] == enc.id_of("item_id", "c") != enc.oov_id("item_id")
    assert valid_pos["u"] == enc.id_of("item_id", "b") != enc.oov_id("item_id")
    assert test_pos["w"] == enc.oov_id("item_id") == valid_pos["w"]
    train_pairs = {(enc.decode(u)[1], enc.decode(i)[1]) for u, i in ds.train.ids.tolist()}
    assert {("u", "a"), ("u", "d"), ("v", "b"), ("v", "c")} <= train_pairs
    assert ("u", "b") not in train_pairs and ("u", "c") not in train_pairs
    for g in ds.test.ids.reshape(-1, 10, 2):
        negs = g[1:, 1].tolist()
        user = enc.decode(int(g[0, 0]))[1]
        if user == "u":  # u's negatives: distinct, never interacted
            names = [enc.decode(i)[1] for i in negs]
            assert len(set(negs)) == 9 and not set(names) & {"a", "b", "c", "d"}


def test_topk_needs_no_rating_column(tmp_path):
    p = tmp_path / "clicks.inter"
    lines = "".join(f"u{u}\ti{(u * 3 + k) % 40}\t{k}\n" for u in range(5) for k in range(6))
    p.write_text("user_id:token\titem_id:token\ttimestamp:float\n" + lines)
    ds = load_dataset("clicks", "topk", path=str(p), fmt="inter")
    assert len(ds.test) == 5 * 100 and ds.info["num_items"] == len(
        {l.split()[1] for l in lines.splitlines()}
    )
    with pytest.raises(DataError, match="clicks.inter line 1: no column 'rating'"):
        load_dataset("clicks", "rating", path=str(p), fmt="inter")


def test_movielens_file_through_the_path_api(tmp_path):
    p = tmp_path / "ratings.dat"
    p.write_text(
        "".join(f"{u}::{i}::{1 + (u + i) % 5}::{u * i}\n" for u in range(9) for i in range(9))
    )
    ds = load_dataset(str(p), "ctr", path=str(p), fmt="movielens")
    kept = sum(1 for u in range(9) for i in range(9) if (1 + (u + i) % 5) != 3)
    assert sum(ds.info["rows"].values()) == kept
    assert set(ds.train.labels.tolist()) <= {0.0, 1.0}


def test_bad_requests(tmp_path):
    p = _inter(tmp_path, _rows(n_users=4))
    with pytest.raises(ValueError, match="fmt must be one of"):
        load_dataset("toy", path=str(p), fmt="parquet")
    with pytest.raises(DataError, match="no such file"):
        load_dataset("toy", path=str(tmp_path / "missing.inter"), fmt="inter")
    csv = tmp_path / "c.csv"
    csv.write_text("y,user\n1,a\n")
    with pytest.raises(ValueError, match="not topk"):
        load_dataset("c", "topk", path=str(csv), fmt="csv", label="y", categorical=["user"])
    with pytest.raises(ValueError, match="label="):
        load_dataset("c", "ctr", path=str(csv), fmt="csv", categorical=["user"])
    with pytest.raises(ValueError, match="unexpected options"):
        load_dataset("movielens-1m", "rating", num_rows=10)
    with pytest.raises(ValueError, match="fmt, label only apply to a file"):
        load_dataset("movielens-1m", "ctr", fmt="csv", label="y")
    csv.write_text("y,user\n1,a\n2,b\n")
    with pytest.raises(DataError, match="c.csv line 3: y '2' is not 0 or 1"):
        load_dataset("c", "ctr", path=str(csv), fmt="csv", label="y", categorical=["user"])


def test_hold_out_partitions_the_training_rows_by_seed(tmp_path):
    p = _inter(tmp_path, _rows(n_users=20, n_items=15, per_user=6))
    ds = load_dataset("toy", "rating", path=str(p), fmt="inter")
    rest, held = ds.hold_out(0.25, seed=3)
    assert len(held) == round(0.25 * len(ds.train)) and len(rest.train) + len(held) == len(ds.train)
    rows = {tuple(r) for r in torch.cat([ds.train.ids, ds.train.labels[:, None]], 1).tolist()}
    parts = [torch.cat([s.ids, s.labels[:, None]], 1).tolist() for s in (rest.train, held)]
    assert sorted(map(tuple, parts[0] + parts[1])) == sorted(rows)  # disjoint, all of them
    assert rest.valid is ds.valid and rest.test is ds.test and rest.encoder is ds.encoder
    again = ds.hold_out(0.25, seed=3)[1]
    assert torch.equal(again.ids, held.ids) and not torch.equal(
        ds.hold_out(0.25, 4)[1].ids, held.ids
    )
    for bad in (0.0, 1.0, float("nan"), 1e-9):
        with pytest.raises(ValueError, match="held|holding"):
            ds.hold_out(bad, seed=0)


def test_hold_out_refuses_sampled_negatives(tmp_path):
    p = _inter(tmp_path, _rows(n_users=10, n_items=50, per_user=8))
    ds = load_dataset("toy", "topk", path=str(p), fmt="inter", num_negatives_train=4)
    with pytest.raises(ValueError, match="sampled per epoch"):
        ds.hold_out(0.1, seed=0)
