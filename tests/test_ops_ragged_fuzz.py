"""Property test of the ragged serving ops and the table loader: random tables, ids, bag
offsets, dtypes (int8 tables included) and corrupted metadata (an int8 table's scale_bias
too) → the reference's result or a Python exception, never a signal.

Hypothesis draws each case here; a child Python (kept across cases, restarted after a
death) builds and runs it, so a crash is the child's signal — this test's failure, with
the case that caused it — instead of the end of the pytest process. On the CPU the
kernels must agree with ``mixemb.reference`` exactly on whether a case is an error (both
check the same things: the table's O(1) ends on every call, each looked-up row inside
the values) and, when it is not, on the result. On CUDA (MIXEMB_FUZZ_DEVICE=cuda, which
bench/gpu_check.sh runs under compute-sanitizer's memcheck) the kernels skip the O(1)
host checks (a host sync), so a case may run where the reference raises; a result where
the reference gives one must still match it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixemb import _ext

pytestmark = pytest.mark.skipif(not _ext.HAS_EXT, reason=f"mixemb._C missing: {_ext.LOAD_ERROR}")

DEVICE = os.environ.get("MIXEMB_FUZZ_DEVICE", "cpu")

_CHILD = r"""
import json, sys
import torch
from mixemb.ops import ragged_bag, ragged_dot, ragged_gather
from mixemb.ragged import RaggedTable
from mixemb.reference import (
    ragged_bag_reference, ragged_dot_reference, ragged_gather_reference,
)

DEVICE = sys.argv[1]
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "int8": "int8"}
TOL = {"float32": 1e-5, "float64": 1e-12, "float16": 2e-3, "bfloat16": 1.6e-2, "int8": 1e-5}


def with_nan(t, index):
    t = t.clone()
    if t.numel():
        t.view(-1)[index % t.numel()] = float("nan")
    return t


def table(c):
    g = torch.Generator().manual_seed(c["seed"])
    x = torch.randn(c["n"], c["k"], generator=g, dtype=torch.float64)
    x[torch.rand(c["n"], c["k"], generator=g) > c["keep"]] = 0
    if c["dtype"] == "int8":
        t = RaggedTable.from_dense(x, group_size=c["group_size"], dtype="int8")
    else:
        t = RaggedTable.from_dense(x.to(DTYPES[c["dtype"]]), group_size=c["group_size"])
    for what, index, value in c["corrupt"]:
        if what == "scale_bias":  # an int8 table's, or one given to a float table
            sb = t.scale_bias if t.scale_bias is not None else torch.ones(c["n"], 2).half()
            t.scale_bias = {
                "drop": None,
                "short": sb[:-1],
                "float32": sb.float(),
                "nan": with_nan(sb, index),
                "added": sb,
            }[value]
        elif what == "values_numel":
            t.values = torch.randn(value, generator=g).to(t.values.dtype)
        elif what == "values_dtype":
            t.values = t.values.to(torch.int32)
        elif what == "group_size":
            t.group_size = value
        elif what == "embedding_dim":
            t.embedding_dim = value
        elif getattr(t, what).numel():
            flat = getattr(t, what).view(-1)
            flat[index % flat.numel()] = value
    return t.to(DEVICE) if DEVICE != "cpu" else t


def run(c, backend):
    t = table(c)
    ids = torch.tensor(c["ids"], dtype=torch.int64, device=DEVICE)
    kw = {} if backend is None else {"backend": "extension", "check_bounds": True}
    if c["op"] == "gather":
        if backend is None:
            return ragged_gather_reference(t, ids)
        out = torch.empty(len(c["ids"]), t.embedding_dim, dtype=t.rows_dtype, device=DEVICE)
        return ragged_gather(t, ids, out=out, **kw) if c["out"] else ragged_gather(t, ids, **kw)
    if c["op"] == "bag":
        offsets = torch.tensor(c["offsets"], dtype=torch.int64, device=DEVICE)
        args = dict(mode=c["mode"], include_last_offset=c["include_last"])
        if backend is None:
            return ragged_bag_reference(t, ids, offsets, **args)
        return ragged_bag(t, ids, offsets, **args, **kw)
    other = table({**c, "corrupt": [], "seed": c["seed"] + 1})
    ids_b = ids.flip(0).clamp(0, max(c["n"] - 1, 0))
    if backend is None:
        return ragged_dot_reference(t, ids, other, ids_b)
    return ragged_dot(t, ids, other, ids_b, **kw)


def outcome(c, backend):
    try:
        return run(c, backend), None
    except Exception as e:
        return None, f"{type(e).__name__}: {str(e)[:300]}"


for line in sys.stdin:
    c = json.loads(line)
    got, got_err = outcome(c, "extension")
    want, want_err = outcome(c, None)
    if DEVICE == "cpu" and (got_err is None) != (want_err is None):
        verdict = f"kernel error {got_err!r} but reference error {want_err!r}"
    elif got_err is None and want_err is None:
        tol = TOL[c["dtype"]]
        try:
            # a NaN scale (a corrupt int8 table) reads as NaN in both
            torch.testing.assert_close(got.cpu(), want.cpu(), rtol=tol, atol=tol, equal_nan=True)
            verdict = None
        except AssertionError as e:
            verdict = f"results differ: {str(e)[:500]}"
    else:
        verdict = None
    print(json.dumps({"verdict": verdict}), flush=True)
"""


class Child:
    """One child Python running the cases sent on its stdin (one JSON line each), one
    verdict line back; restarted after it dies."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def run(self, case: dict) -> str | None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, DEVICE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if line:
            return json.loads(line)["verdict"]
        rc = self.proc.wait(timeout=60)
        err = self.proc.stderr.read()[-2000:]
        self.proc = None
        return f"the child died (returncode {rc}, a negative one is a signal): {err}"

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def child():
    c = Child()
    yield c
    c.close()


INT64 = st.integers(-(2**63), 2**63 - 1)
# values that a corrupt int64 field takes: small (near the right ones), edges, anything
FIELD = st.one_of(st.integers(-70, 70), st.sampled_from([-1, 2**40, 2**62, 2**63 - 1]), INT64)
CORRUPTION = st.one_of(
    st.tuples(st.sampled_from(["group_offsets", "masks"]), st.integers(0, 10**6), FIELD),
    st.tuples(st.just("values_numel"), st.just(0), st.integers(0, 200)),
    st.tuples(st.just("values_dtype"), st.just(0), st.just(0)),
    st.tuples(st.just("group_size"), st.just(0), st.sampled_from([1, 3, 16, 2**62 + 1])),
    st.tuples(st.just("embedding_dim"), st.just(0), st.sampled_from([1, 9, 63, 64, 65, 129])),
    st.tuples(
        st.just("scale_bias"),
        st.integers(0, 10**6),
        st.sampled_from(["drop", "short", "float32", "nan", "added"]),
    ),
)


@st.composite
def cases(draw) -> dict:
    n = draw(st.integers(0, 40))
    ids = draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=30))
    if draw(st.booleans()) and ids:  # sometimes one id out of range
        ids[draw(st.integers(0, len(ids) - 1))] = draw(st.sampled_from([-1, n, n + 5]))
    op = draw(st.sampled_from(["gather", "bag", "dot"]))
    cuts = sorted(draw(st.lists(st.integers(0, len(ids)), max_size=6)))
    include_last = draw(st.booleans())
    return {
        "n": n,
        "k": draw(st.sampled_from([1, 7, 10, 63, 64, 65, 100, 130])),
        "keep": draw(st.sampled_from([0.0, 0.3, 0.7, 1.0])),
        "group_size": draw(st.sampled_from([1, 2, 3, 5, 16, 32])),
        "dtype": draw(st.sampled_from(["float32", "float64", "float16", "bfloat16", "int8"])),
        "seed": draw(st.integers(0, 2**16)),
        "corrupt": draw(st.lists(CORRUPTION, max_size=2)),
        "ids": ids,
        "op": op,
        "out": draw(st.booleans()),
        "mode": draw(st.sampled_from(["sum", "mean"])),
        "include_last": include_last,
        # bags cover every id (the last one ends at M), so kernel and reference look up
        # the same rows
        "offsets": [0, *cuts, len(ids)] if include_last else [0, *cuts],
    }


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases())
def test_ops_on_random_and_corrupt_tables_match_reference_or_raise(case, child):
    verdict = child.run(case)
    assert verdict is None, f"{verdict}\ncase: {json.dumps(case)}"


@pytest.mark.parametrize("kind", ["drop", "short", "float32", "nan", "added"])
@pytest.mark.parametrize("dtype", ["int8", "float32"])
@pytest.mark.parametrize("op", ["gather", "bag", "dot"])
def test_corrupt_scale_bias_matches_reference_or_raises(kind, dtype, op, child):
    """Every scale_bias corruption on every op, beside the random cases above: an int8
    table's dropped, short, float32 or NaN scale_bias, a float table given one."""
    case = {
        "n": 21,
        "k": 70,
        "keep": 0.5,
        "group_size": 16,
        "dtype": dtype,
        "seed": 7,
        "corrupt": [["scale_bias", 3, kind]],
        "ids": [0, 20, 3, 3, 17, 1],
        "op": op,
        "out": op == "gather",
        "mode": "sum",
        "include_last": False,
        "offsets": [0, 2, 2],
    }
    verdict = child.run(case)
    assert verdict is None, f"{verdict}\ncase: {json.dumps(case)}"


def test_a_crash_in_the_child_fails_the_case(child):
    """The harness itself: a child killed by a signal is reported, and the next case gets
    a fresh child."""
    crash = Child()
    crash.proc = subprocess.Popen(
        [sys.executable, "-c", "import os, signal; input(); os.kill(os.getpid(), signal.SIGSEGV)"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    verdict = crash.run({"op": "gather"})
    assert verdict is not None and "returncode -11" in verdict
    assert crash.proc is None
