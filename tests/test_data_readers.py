"""Readers: every format, streamed in chunks, and every bad input named by file, line, value."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mixemb.data import DataError, read_criteo, read_csv, read_movielens, read_recbole
from mixemb.data.readers import concat_chunks


def _write(tmp_path, name, text, newline="\n"):
    p = tmp_path / name
    p.write_bytes(text.replace("\n", newline).encode())
    return p


def test_u_data_tab_separated(tmp_path):
    p = _write(tmp_path, "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    cols = concat_chunks(read_movielens(p))
    assert cols["user_id"].tolist() == ["196", "186"]
    assert cols["rating"].tolist() == [3.0, 3.0] and cols["timestamp"][0] == 881250949


def test_ratings_dat_double_colon(tmp_path):
    p = _write(tmp_path, "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    assert concat_chunks(read_movielens(p))["item_id"].tolist() == ["1193", "661"]


def test_ratings_csv_with_header(tmp_path):
    p = _write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n")
    cols = concat_chunks(read_movielens(p))
    assert cols["user_id"].tolist() == ["1"] and cols["rating"].tolist() == [2.5]


def test_recbole_inter_crlf_and_type_suffixes(tmp_path):
    text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1m_1\tHeat (1995)\t5\t9\n"
    p = _write(tmp_path, "x.inter", text, newline="\r\n")
    cols = concat_chunks(read_recbole(p, numeric=("rating",)))
    assert list(cols) == ["user_id", "item_id", "rating", "timestamp"]
    assert cols["item_id"].tolist() == ["Heat (1995)"] and cols["timestamp"].tolist() == ["9"]
    assert cols["rating"].tolist() == [5.0]


def test_criteo_missing_values(tmp_path):
    ints = ["1", "", "3"] + [""] * 10
    cats = ["68fd1e64", ""] + ["a"] * 24
    p = _write(tmp_path, "day.txt", "\t".join(["1", *ints, *cats]) + "\n")
    cols = concat_chunks(read_criteo(p))
    assert cols["label"].tolist() == [1.0]
    assert cols["I1"][0] == 1 and math.isnan(cols["I2"][0])
    assert cols["C1"].tolist() == ["68fd1e64"] and cols["C2"].tolist() == [""]


def test_generic_csv_selects_columns(tmp_path):
    p = _write(tmp_path, "clicks.csv", "clicked,user,ad,price,junk\n1,u1,a1,2.5,x\n0,u2,a1,,y\n")
    cols = concat_chunks(
        read_csv(p, label="clicked", categorical=["user", "ad"], numeric=["price"])
    )
    assert set(cols) == {"clicked", "user", "ad", "price"}
    assert cols["price"][0] == 2.5 and math.isnan(cols["price"][1])


def test_streaming_in_chunks_keeps_line_numbers(tmp_path):
    lines = "".join(f"{u}\t{i}\t4\t{u}\n" for u, i in zip(range(10), range(10, 20)))
    p = _write(tmp_path, "u.data", lines)
    chunks = list(read_movielens(p, chunk_rows=3))
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert [c.first_line for c in chunks] == [1, 4, 7, 10]
    lines += "10\t20\tbad\t1\n"
    p = _write(tmp_path, "u.data", lines)
    with pytest.raises(DataError, match="u.data line 11: rating 'bad' is not a number"):
        list(read_movielens(p, chunk_rows=3))


@pytest.mark.parametrize(
    "name,text,match",
    [
        ("ratings.dat", "1::2::5::9\n1::3::5\n", r"ratings.dat line 2: expected 4 columns, got 3"),
        ("ratings.dat", "1::2::5::9\n1::3::five::9\n", r"ratings.dat line 2: rating 'five'"),
        ("u.data", "", r"u.data line 1: empty file"),
        ("ratings.csv", "userId,movieId,rating,timestamp\n", r"ratings.csv line 2: empty file"),
        ("ratings.csv", "user,movie,rating,timestamp\n1,2,3,4\n", r"line 1: no column 'userId'"),
    ],
)
def test_bad_movielens_files(tmp_path, name, text, match):
    with pytest.raises(DataError, match=match):
        list(read_movielens(_write(tmp_path, name, text)))


def test_bad_criteo_label_and_columns(tmp_path):
    row = ["2", *["1"] * 13, *["a"] * 26]
    p = _write(tmp_path, "day.txt", "\t".join(["0", *row[1:]]) + "\n" + "\t".join(row) + "\n")
    with pytest.raises(DataError, match=r"day.txt line 2: label '2' is not 0 or 1"):
        list(read_criteo(p))
    p = _write(tmp_path, "short.txt", "\t".join(row[:20]) + "\n")
    with pytest.raises(DataError, match=r"short.txt line 1: expected 40 columns, got 20"):
        list(read_criteo(p))
    p = _write(tmp_path, "nan.txt", "\t".join(["1", "x1", *["1"] * 12, *["a"] * 26]) + "\n")
    with pytest.raises(DataError, match=r"nan.txt line 1: I1 'x1' is not a number"):
        list(read_criteo(p))


def test_bad_generic_csv(tmp_path):
    p = _write(tmp_path, "c.csv", "y,user\n1,a\n3,b\n")
    with pytest.raises(DataError, match=r"c.csv line 3: y '3' is not 0 or 1"):
        list(read_csv(p, label="y", categorical=["user"], binary_label=True))
    assert concat_chunks(read_csv(p, label="y", categorical=["user"]))["y"].tolist() == [1, 3]
    with pytest.raises(DataError, match=r"c.csv line 1: no column 'ad'"):
        list(read_csv(p, label="y", categorical=["ad"]))
    with pytest.raises(DataError, match="no such file"):
        list(read_csv(tmp_path / "missing.csv", label="y", categorical=["user"]))


def test_string_columns_are_str_and_numbers_float64(tmp_path):
    p = _write(tmp_path, "u.data", "1\t2\t3\t4\n")
    cols = concat_chunks(read_movielens(p))
    assert cols["user_id"].dtype == object and type(cols["user_id"][0]) is str
    assert cols["rating"].dtype == np.float64


def test_movielens_format_sniffed_from_content(tmp_path):
    p = _write(tmp_path, "ml1m.txt", "1::1193::5::978300760\n")
    assert concat_chunks(read_movielens(p))["item_id"].tolist() == ["1193"]
    p = _write(tmp_path, "latest.txt", "userId,movieId,rating,timestamp\n7,31,2.5,1\n")
    assert concat_chunks(read_movielens(p))["user_id"].tolist() == ["7"]
    p = _write(tmp_path, "plain.txt", "5\t6\t1\t2\n")
    assert concat_chunks(read_movielens(p))["user_id"].tolist() == ["5"]


def test_blank_lines_are_skipped_and_line_numbers_stay_right(tmp_path):
    p = _write(tmp_path, "u.data", "1\t2\t3\t4\n\n5\t6\t4\t8\n\n9\t9\tx\t9\n")
    with pytest.raises(DataError, match=r"u.data line 5: rating 'x' is not a number"):
        list(read_movielens(p))
    p = _write(tmp_path, "u.data", "1\t2\t3\t4\n\n5\t6\t4\t8\n\n")
    assert concat_chunks(read_movielens(p))["user_id"].tolist() == ["1", "5"]


def test_recbole_from_wheel_bytes_names_the_member(tmp_path):
    data = b"user_id:token\trating:float\r\na\t4\r\nb\tbad\r\n"
    with pytest.raises(DataError, match=r"x.whl!ml.inter line 3: rating 'bad' is not a number"):
        list(read_recbole(("x.whl!ml.inter", data), numeric=("rating",)))
    with pytest.raises(DataError, match=r"ml.inter line 1: no column 'item_id'"):
        list(read_recbole(("ml.inter", data), required=("item_id",)))


def test_non_finite_rating_is_rejected(tmp_path):
    p = _write(tmp_path, "u.data", "1\t2\t3\t4\n1\t3\tnan\t4\n")
    with pytest.raises(DataError, match=r"u.data line 2: rating 'nan' is not a number"):
        list(read_movielens(p))
    p = _write(tmp_path, "u.data", "1\t2\t\t4\n")
    with pytest.raises(DataError, match=r"u.data line 1: rating '' is not a number"):
        list(read_movielens(p))


def test_criteo_streams_in_chunks_with_line_numbers(tmp_path):
    row = "\t".join(["0", *["5"] * 13, *["ab"] * 26])
    bad = "\t".join(["1", "7", "oops", *["5"] * 11, *["ab"] * 26])
    p = _write(tmp_path, "train.txt", (row + "\n") * 5 + bad + "\n")
    chunks = read_criteo(p, chunk_rows=2)
    assert [len(next(chunks)) for _ in range(2)] == [2, 2]
    with pytest.raises(DataError, match=r"train.txt line 6: I2 'oops' is not a number"):
        list(chunks)


_CRITEO_ROW = "\t".join(["0", *["1"] * 13, *["ab"] * 26])
_INTER_HEAD = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def _ml(p):
    return read_movielens(p)


def _inter_reader(p):
    return read_recbole(p, numeric=("rating", "timestamp"), required=("user_id", "item_id"))


def _ctr_csv(p):
    return read_csv(p, label="y", categorical=["user"], numeric=["price"], binary_label=True)


def _tsv(p):
    return read_csv(p, label="y", categorical=["user"], delimiter="\t")


# (reader, file name, content, line number, the value the message must quote)
BAD_INPUTS = [
    (_ml, "u.data", "1\t2\t3\t4\n1\t2\t3\n", 2, r"'1\t2\t3'"),
    (_ml, "u.data", "1\t2\t3\t4\n1\t2\t3\t4\t5\n", 2, r"'1\t2\t3\t4\t5'"),
    (_ml, "u.data", "1\t2\t3\t4\n1\t2\tgood\t4\n", 2, "'good'"),
    (_ml, "u.data", "\n\n", 3, "empty file"),
    (_ml, "ratings.dat", "1::2::5::9\n1::3::5\n", 2, "'1::3::5'"),
    (_ml, "ratings.dat", "1::2::5::9\n1::3::*::9\n", 2, "'*'"),
    (_ml, "ratings.dat", "", 1, "empty file"),
    (_ml, "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n1,2,3\n", 3, "'1,2,3'"),
    (_ml, "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n1,2,3.5.1,4\n", 3, "'3.5.1'"),
    (_ml, "ratings.csv", "userId,movieId,rating,timestamp\n", 2, "empty file"),
    (_ml, "ratings.csv", "userId,itemId,rating,timestamp\n1,2,3,4\n", 1, "'movieId'"),
    (_ml, "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n5,6,7,when\n", 3, "'when'"),
    (_inter_reader, "a.inter", (_INTER_HEAD + "1\t2\t5\t9\n1\t2\tx\t9\n"), 3, "'x'"),
    (_inter_reader, "a.inter", (_INTER_HEAD + "1\t2\t5\n").replace("\n", "\r\n"), 2, r"'1\t2\t5'"),
    (_inter_reader, "a.inter", _INTER_HEAD.replace("item_id", "movie_id"), 1, "'item_id'"),
    (_inter_reader, "a.inter", _INTER_HEAD.replace("rating", "score"), 1, "'rating'"),
    (_inter_reader, "a.inter", _INTER_HEAD, 2, "empty file"),
    (_inter_reader, "a.inter", "", 1, "empty file"),
    (read_criteo, "day_0", _CRITEO_ROW + "\n" + _CRITEO_ROW.replace("0", "-1", 1), 2, "'-1'"),
    (read_criteo, "day_0", _CRITEO_ROW + "\n" + _CRITEO_ROW + "\tab\n", 2, "got 41"),
    (read_criteo, "day_0", _CRITEO_ROW.replace("\t1\t", "\t0x1\t", 1) + "\n", 1, "'0x1'"),
    (read_criteo, "day_0", "\n", 2, "empty file"),
    (_ctr_csv, "c.csv", "y,user,price\n1,a,2\n0.5,b,3\n", 3, "'0.5'"),
    (_ctr_csv, "c.csv", "y,user,price\n1,a,2\n1,b\n", 3, "'1,b'"),
    (_ctr_csv, "c.csv", "y,user,price\n1,a,two\n", 2, "'two'"),
    (_ctr_csv, "c.csv", "y,user,cost\n1,a,2\n", 1, "'price'"),
    (_ctr_csv, "c.csv", "y,user,price\n", 2, "empty file"),
    (_tsv, "c.tsv", "y\tuser\n4\ta\n4\n", 3, "'4'"),
]


@pytest.mark.parametrize("reader,name,text,line,value", BAD_INPUTS)
def test_every_bad_input_names_file_line_and_value(tmp_path, reader, name, text, line, value):
    p = tmp_path / name
    p.write_bytes(text.encode())
    with pytest.raises(DataError) as err:
        list(reader(p))
    msg = str(err.value)
    assert msg.startswith(f"{name} line {line}:"), msg
    assert value in msg, msg


def test_quoted_csv_fields(tmp_path):
    p = _write(
        tmp_path,
        "movies.csv",
        'y,"title",price\n1,"Toy Story, The",2\n0,Heat,"3"\n1,"Say ""Hi""",\n',
    )
    cols = concat_chunks(read_csv(p, label="y", categorical=["title"], numeric=["price"]))
    assert cols["title"].tolist() == ["Toy Story, The", "Heat", 'Say "Hi"']
    assert cols["price"][:2].tolist() == [2.0, 3.0] and math.isnan(cols["price"][2])
    p = _write(tmp_path, "bad.csv", 'y,title\n1,"a, b"\n0,"c", d\n')
    with pytest.raises(DataError, match=r"bad.csv line 3: expected 2 columns, got 3"):
        list(read_csv(p, label="y", categorical=["title"]))


def test_default_chunks_are_capped_by_cells(tmp_path):
    from mixemb.data.readers import default_chunk_rows

    assert default_chunk_rows(4) == 1_000_000 and default_chunk_rows(40) == 200_000
    p = _write(tmp_path, "u.data", "".join(f"{k}\t{k}\t1\t{k}\n" for k in range(2500)))
    assert [len(c) for c in read_movielens(p)] == [2500]
