"""Data inputs against bad input: non-finite and absurd numbers, bytes that are not UTF-8,
quoted fields that span lines, directories and huge values. Every case is one DataError
that names the file, the line and the (cut) value; valid data reads as before."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from mixemb.data import (
    DataError,
    FeatureEncoder,
    FieldSpec,
    load_dataset,
    read_criteo,
    read_csv,
    read_movielens,
    read_recbole,
    readers,
)
from mixemb.data.readers import MAX_ABS_LABEL, concat_chunks
from mixemb.data.schema import clipped, quoted


def _write(tmp_path, name, data: bytes | str):
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def _criteo_row(label="0", i1="1", i2="2"):
    return "\t".join([label, i1, i2, *["3"] * 11, *["ab"] * 26])


def _error(read, *args, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        list(read(*args, **kwargs))
    return str(err.value)


def _csv(p, **kwargs):
    return read_csv(p, label="y", categorical=["user"], numeric=["price"], **kwargs)


# ---- #4 non-finite and absurd numbers ----------------------------------------------------
@pytest.mark.parametrize(
    "value,what",
    [
        ("inf", "is not finite"),
        ("-inf", "is not finite"),
        ("Infinity", "is not finite"),
        ("1e999", "is not finite"),
        ("nan", "is not a number"),
        ("NaN", "is not a number"),
        ("1e39", "is out of range"),
    ],
)
def test_criteo_integer_column_must_be_finite(tmp_path, value, what):
    text = _criteo_row() + "\n" + _criteo_row(i2="") + "\n" + _criteo_row(i2=value) + "\n"
    msg = _error(read_criteo, _write(tmp_path, "day_0", text), chunk_rows=2)
    assert msg.startswith(f"day_0 line 3: I2 {value!r} {what}"), msg


def test_criteo_empty_integer_is_still_missing(tmp_path):
    text = _criteo_row(i1="", i2="") + "\n" + _criteo_row(i1="-3") + "\n"
    cols = concat_chunks(read_criteo(_write(tmp_path, "day_0", text)))
    assert math.isnan(cols["I1"][0]) and math.isnan(cols["I2"][0])
    assert cols["I1"][1] == -3 and cols["I2"][1] == 2


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400"])
def test_csv_numeric_column_must_be_finite(tmp_path, value):
    p = _write(tmp_path, "c.csv", f"y,user,price\n1,a,2\n0,b,\n1,c,{value}\n")
    msg = _error(_csv, p)
    assert msg.startswith(f"c.csv line 4: price {value!r} is not "), msg
    p = _write(tmp_path, "ok.csv", "y,user,price\n1,a,2\n0,b,\n")
    assert np.isnan(concat_chunks(_csv(p))["price"][1])


@pytest.mark.parametrize(
    "name,text,line",
    [
        ("u.data", "1\t2\t3\t4\n1\t3\t1e30\t4\n", 2),
        ("ratings.dat", "1::2::3::4\n1::3::-1e7::4\n", 2),
        ("ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n1,3,1e30,4\n", 3),
    ],
)
def test_absurd_rating_is_rejected(tmp_path, name, text, line):
    msg = _error(read_movielens, _write(tmp_path, name, text))
    assert msg.startswith(f"{name} line {line}: rating ") and "is out of range" in msg, msg
    assert f"{MAX_ABS_LABEL:g}" in msg


@pytest.mark.parametrize("value", ["1e30", "inf", "nan"])
def test_absurd_rating_in_an_inter_file_or_csv_is_rejected(tmp_path, value):
    head = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    p = _write(tmp_path, "a.inter", head + f"1\t2\t3\t4\n1\t3\t{value}\t5\n1\t4\t2\t6\n")
    with pytest.raises(DataError, match=rf"^a\.inter line 3: rating '{value}' is "):
        load_dataset("a", "rating", path=str(p))
    p = _write(tmp_path, "r.csv", f"y,user\n4,a\n{value},b\n")
    with pytest.raises(DataError, match=rf"^r\.csv line 3: y '{value}' is "):
        load_dataset("r", "rating", path=str(p), fmt="csv", label="y", categorical=["user"])


def test_ratings_in_range_read_exactly(tmp_path):
    p = _write(tmp_path, "u.data", f"1\t2\t{MAX_ABS_LABEL:g}\t4\n1\t3\t-0.5\t4\n")
    assert concat_chunks(read_movielens(p))["rating"].tolist() == [MAX_ABS_LABEL, -0.5]


def test_encoder_rejects_infinite_numeric_values():
    enc = FeatureEncoder([FieldSpec("u"), FieldSpec("x", "numeric")])
    enc.fit([{"u": np.array(["a", "b"], dtype=object), "x": np.array([1.0, np.nan])}])
    ids, values = enc.transform({"u": np.array(["a"], dtype=object), "x": np.array([np.nan])})
    assert values[0, 1] == 0  # NaN stays a missing value
    bad = {"u": np.array(["a", "b"], dtype=object), "x": np.array([1.0, np.inf])}
    with pytest.raises(DataError, match=r"field 'x': value inf \(row 1\) is not a finite"):
        enc.transform(bad)
    with pytest.raises(DataError, match="field 'x'"):
        FeatureEncoder([FieldSpec("x", "numeric")], numeric_mode="bucketize").fit([bad])


# ---- #5 bytes that are not UTF-8 ---------------------------------------------------------
def test_ids_differing_in_non_utf8_bytes_never_merge(tmp_path):
    p = _write(tmp_path, "u.data", b"1\t1\t5\t9\n\xff7\t1\t5\t9\n\xfe7\t1\t4\t9\n")
    msg = _error(read_movielens, p)
    assert msg == r"u.data line 2: bytes that are not UTF-8: b'\xff7\t1\t5\t9'", msg


def test_non_utf8_line_number_across_blocks_and_crlf(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "_BLOCK_CHARS", 7)
    rows = b"".join(b"%d\t2\t3\t4\r\n" % k for k in range(1, 40))
    p = _write(tmp_path, "u.data", rows + b"40\t\xc3(\t3\t4\r\n")
    assert _error(read_movielens, p, chunk_rows=3).startswith("u.data line 40: ")
    p = _write(tmp_path, "u.data", b"\xef\xbb\xbf" + rows + "é\t2\t3\t4\n".encode())
    users = concat_chunks(read_movielens(p))["user_id"].tolist()
    assert len(users) == 40 and users[0] == "1" and users[-1] == "é"


def test_non_utf8_in_header_csv_and_wheel_member(tmp_path):
    p = _write(tmp_path, "c.csv", b"y,us\xe9r\n1,a\n")
    assert _error(read_csv, p, label="y", categorical=["user"]).startswith(
        "c.csv line 1: bytes that are not UTF-8: b'y,us\\xe9r'"
    )
    data = b"user_id:token\titem_id:token\na\tb\n\x80\tb\n"
    msg = _error(read_recbole, ("x.whl!m.inter", data), required=("user_id",))
    assert msg.startswith("x.whl!m.inter line 3: bytes that are not UTF-8: b'\\x80\\tb'"), msg


def test_non_utf8_far_into_a_long_line_is_shown_and_cut(tmp_path):
    p = _write(tmp_path, "u.data", b"1\t" + b"a" * 5000 + b"\xff" + b"b" * 5000 + b"\t3\t4\n")
    msg = _error(read_movielens, p)
    assert msg.startswith("u.data line 1: bytes that are not UTF-8: …b'aaa") and "\\xff" in msg
    assert len(msg) < 160 and msg.endswith("…")


def test_encoder_decodes_bytes_strictly():
    enc = FeatureEncoder([FieldSpec("u")]).fit([{"u": np.array([b"a", b"\xc3\xa9"])}])
    assert enc.id_of("u", "é") != enc.oov_id("u")
    with pytest.raises(DataError, match=r"field 'u': value b'\\xff7' is not UTF-8"):
        enc.transform({"u": np.array([b"a", b"\xff7"])})


# ---- #6 quoted fields that span lines ----------------------------------------------------
@pytest.mark.parametrize("chunk_rows", [None, 2, 3])
def test_quoted_field_spanning_lines_is_an_error_at_its_line(tmp_path, chunk_rows):
    text = 'y,user,price\n1,"a, b",2\n0,"c\nd",3\n1,e,4\n'
    msg = _error(_csv, _write(tmp_path, "q.csv", text), chunk_rows=chunk_rows)
    assert msg.startswith("q.csv line 3: quoted field not closed on its line"), msg
    assert msg.endswith(": '0,\"c'")


def test_quoted_field_open_at_end_of_file_or_header(tmp_path):
    msg = _error(_csv, _write(tmp_path, "q.csv", 'y,user,price\n1,a,2\n1,"b,3\n'))
    assert msg.startswith("q.csv line 3: quoted field not closed"), msg
    msg = _error(_csv, _write(tmp_path, "h.csv", 'y,"user,price\n1,a,2\n'))
    assert msg.startswith("h.csv line 1: quoted field not closed"), msg


def test_line_numbers_after_quoted_rows_stay_right(tmp_path):
    text = 'y,user,price\n1,"a, b",2\n0,"c ""d""",3\n1,e,x\n'
    for chunk_rows in (None, 1, 2):
        msg = _error(_csv, _write(tmp_path, "q.csv", text), chunk_rows=chunk_rows)
        assert msg == "q.csv line 4: price 'x' is not a number", msg


def test_huge_quoted_field_is_a_data_error(tmp_path):
    p = _write(tmp_path, "q.csv", 'y,user,price\n1,a,2\n1,"' + "x" * 200_000 + '",3\n')
    msg = _error(_csv, p)
    assert msg.startswith("q.csv line 3: field larger than field limit") and len(msg) < 200


# ---- #9 directories and huge values in messages ------------------------------------------
@pytest.mark.parametrize(
    "read",
    [
        read_movielens,
        read_criteo,
        lambda p: read_recbole(p),
        lambda p: read_csv(p, label="y", categorical=["u"]),
        lambda p: [load_dataset("d", path=str(p), fmt="csv", label="y", categorical=["u"])],
    ],
)
def test_a_directory_is_named_as_one(tmp_path, read):
    d = tmp_path / "ratings.dat"
    d.mkdir()
    assert _error(read, d) == f"{d}: is a directory, not a data file"
    assert _error(read, tmp_path / "gone.csv") == f"{tmp_path / 'gone.csv'}: no such file"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_a_pipe_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "u.data"
    os.mkfifo(fifo)
    assert _error(read_movielens, fifo) == f"{fifo}: not a regular file"


HUGE = "9" * 10_000_000


@pytest.mark.parametrize(
    "name,text,read",
    [
        ("c.csv", f"y,user,price\n1,a,{HUGE}x\n", _csv),  # not a number
        ("c.csv", f"y,user,price\n1,a,1\n1,{HUGE}\n", _csv),  # column count
        ("c.csv", f"y,user,price\n{HUGE},a,1\n", lambda p: _csv(p, binary_label=True)),
        ("c.csv", f"y,user,price\n{HUGE},a,1\n", _csv),  # label out of range
        ("c.csv", f"y,{HUGE}\n1,a\n", _csv),  # column listing
        ("u.data", f"1\t2\t{HUGE}\t4\n", read_movielens),
    ],
)
def test_huge_values_are_cut_in_messages(tmp_path, name, text, read):
    msg = _error(read, _write(tmp_path, name, text))
    assert msg.startswith(f"{name} line ") and "…" in msg and len(msg) < 300, msg[:300]


def test_quoted_and_clipped():
    assert quoted("abc") == "'abc'" and quoted(b"\xff") == "b'\\xff'"
    assert quoted("x" * 100) == repr("x" * 80 + "…")
    assert quoted(b"x" * 100) == repr(b"x" * 80) + "…"
    assert clipped("a, b") == "a, b" and clipped("y" * 300) == "y" * 200 + "…"


# ---- through the real entry point --------------------------------------------------------
@pytest.mark.parametrize(
    "name,data,fmt,expect",
    [
        ("day_0", (_criteo_row() + "\n" + _criteo_row(i1="inf") + "\n").encode(), "criteo", None),
        ("u.data", b"\xff7\t1\t5\t9\n\xfe7\t1\t4\t9\n", "movielens", "not UTF-8"),
        ("dir", None, "movielens", "is a directory"),
    ],
)
def test_cli_reports_bad_data_in_one_line(tmp_path, name, data, fmt, expect):
    path = tmp_path / name
    if data is None:
        path.mkdir()
    else:
        path.write_bytes(data)
    cmd = [sys.executable, "-m", "mixemb", "train", "--data-file", str(path), "--format", fmt]
    cmd += ["--task", "ctr" if fmt == "criteo" else "rating", "--epochs", "1"]
    cmd += ["--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("mixemb: error: ") and (expect or "line 2: I1 'inf'") in lines[0]
    assert not (tmp_path / "run" / "best.pt").exists()
