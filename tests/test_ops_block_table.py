"""block_gather and BlockTableEmbedding: the C++ CPU kernel, the vectorized PyTorch path and
the Triton kernel (CUDA, or Triton's interpreter on CPU) against the block-by-block
reference, at every value dtype and on the edge cases; the registered op under opcheck and
torch.compile; inconsistent tables an error, never a crash."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from test_block_table import pruned_table

from mixemb import _ext
from mixemb.block_table import BlockTable
from mixemb.kernels.block_table import INTERPRET, block_gather_fwd
from mixemb.nn.block_table import BlockTableEmbedding
from mixemb.ops.block_table import SCHEMA, block_gather
from mixemb.reference import block_gather_reference

NEEDS_EXT = pytest.mark.skipif(not _ext.HAS_EXT, reason=f"mixemb._C missing: {_ext.LOAD_ERROR}")

DTYPES = ["fp32", "fp16", "bf16", "int8"]
# (boundaries, block dims, K): named edge cases
TABLES = {
    "K5-zero-column-block": ((0, 3, 10, 20), (4, 0, 5), 5),
    "K24": ((0, 2, 9, 30), (24, 7, 1), 24),
    "one-block": ((0, 12), (3,), 5),
    "one-row": ((0, 1), (2,), 5),
}
IDS = {
    "duplicate-and-hot": lambda n, g: torch.cat(
        [torch.zeros(9, dtype=torch.long), torch.randint(0, n, (15,), generator=g)]
    )[torch.randperm(24, generator=g)].reshape(4, 6),
    "empty": lambda n, g: torch.empty(0, 3, dtype=torch.long),
    "one": lambda n, g: torch.tensor([n - 1]),
    "every-row-int32": lambda n, g: torch.arange(n, dtype=torch.int32),
}


def backends(device: str, *dtypes: str | torch.dtype) -> list[str]:
    """The gathers to test: the default ("auto": C++ on CPU, Triton on CUDA), the C++
    kernel on CPU, the PyTorch path, and the Triton kernel where it runs (not bf16 under
    the interpreter)."""
    out = ["auto", "torch"]
    if device == "cpu" and _ext.HAS_EXT:
        out.append("extension")
    if device == "cuda" or (INTERPRET and not {"bf16", torch.bfloat16} & set(dtypes)):
        out.append("triton")
    return out


def make(name: str, value_dtype: str, device: str = "cpu") -> BlockTable:
    bounds, dims, k = TABLES[name]
    table = BlockTable.from_block_mask(*pruned_table(list(bounds), list(dims), k), value_dtype)
    return table.to(device)


@pytest.mark.parametrize("ids_case", sorted(IDS))
@pytest.mark.parametrize("table_case", sorted(TABLES))
@pytest.mark.parametrize("value_dtype", DTYPES)
def test_the_gather_equals_the_reference(device, value_dtype, table_case, ids_case):
    table = make(table_case, value_dtype, device)
    ids = IDS[ids_case](table.num_embeddings, torch.Generator().manual_seed(0)).to(device)
    expected = block_gather_reference(table, ids)
    assert expected.shape == (*ids.shape, table.embedding_dim)
    for backend in backends(device, value_dtype):
        out = block_gather(table, ids, backend=backend)
        assert out.dtype == table.rows_dtype and out.shape == expected.shape
        # the same values read the same way: exact on CPU; a GPU may fuse bias + q·scale
        tol = 1e-6 if device == "cuda" and value_dtype == "int8" else 0.0
        torch.testing.assert_close(out, expected, rtol=tol, atol=tol)


def test_the_reference_is_the_stored_dense_table(device):
    table = make("K24", "int8", device)
    ids = torch.arange(table.num_embeddings, device=device)
    assert torch.equal(block_gather_reference(table, ids), table.to_dense())


@pytest.mark.parametrize(
    ("value_dtype", "out_dtype"),
    [
        ("fp16", torch.float32),
        ("bf16", torch.float32),
        ("fp32", torch.float64),
        ("int8", torch.float16),
        ("int8", torch.bfloat16),
        ("fp16", torch.bfloat16),
        ("bf16", torch.float16),
        ("fp32", torch.float16),  # rounded to nearest even, as torch's .to rounds
        ("fp32", torch.bfloat16),
    ],
)
def test_out_dtype_converts_the_rows(device, value_dtype, out_dtype):
    table = make("K5-zero-column-block", value_dtype, device)
    ids = torch.tensor([[0, 5, 19]], device=device)
    expected = block_gather_reference(table, ids).to(out_dtype)
    for backend in backends(device, value_dtype, out_dtype):
        out = block_gather(table, ids, out_dtype=out_dtype, backend=backend)
        assert out.dtype == out_dtype and torch.equal(out, expected), backend


def test_ids_outside_the_table_raise_when_checked_and_read_zero_rows_unchecked(device):
    table = make("K5-zero-column-block", "int8", device)
    ids = torch.tensor([3, 20, -1, 19], device=device)
    for backend in backends(device, "int8"):
        with pytest.raises(ValueError, match=r"ids\[1\] \(flattened\) = 20 is outside"):
            block_gather(table, ids, check_bounds=True, backend=backend)
        out = block_gather(table, ids, check_bounds=False, backend=backend)
        assert not out[1:3].any()
        assert torch.equal(out[[0, 3]], block_gather_reference(table, ids[[0, 3]]))
    with pytest.raises(ValueError, match="ids must be in"):
        block_gather_reference(table, ids)


@pytest.mark.parametrize("value_dtype", ["fp32", "int8"])
def test_the_triton_kernel_reads_nothing_outside_the_values(device, value_dtype):
    """An index edit that the op's check cannot see (here: the launcher called directly)
    reads zeros past the values and scale_bias, never the memory beside them (a sentinel
    7.0 there)."""
    if not (device == "cuda" or INTERPRET):
        pytest.skip("needs CUDA or Triton's interpreter")
    table = make("K5-zero-column-block", value_dtype, device)
    ids = torch.arange(table.num_embeddings, device=device)
    expected = block_gather_reference(table, ids)
    layout, rank = (t.clone() for t in table.serving_index())
    values, scale_bias = table.values, table.scale_bias
    base = torch.full((200,), 7, dtype=values.dtype, device=device)
    base[: values.numel()] = values
    values = base[: values.numel()]
    if scale_bias is None:
        rank[2, 1] = 100  # block 2 (ids 10..19) reads column 1 at 112.. of 62 values
        expected[10:, 1] = 0
    else:
        sb = torch.full((40, 2), 7.0, dtype=torch.float16, device=device)
        sb[: scale_bias.shape[0]] = scale_bias
        scale_bias = sb[: scale_bias.shape[0]]
        layout[2, 1] = scale_bias.shape[0]  # block 2's int8 rows past the 13 of scale_bias
        expected[10:] = 0
    out = block_gather_fwd(values, scale_bias, table.boundaries, layout, rank, ids, expected.dtype)
    assert torch.equal(out, expected)


def test_bad_arguments_are_value_errors():
    table = make("K5-zero-column-block", "fp32")
    with pytest.raises(ValueError, match="ids must be int32 or int64"):
        block_gather(table, torch.zeros(2))
    with pytest.raises(ValueError, match="out_dtype must be a float dtype"):
        block_gather(table, torch.zeros(2, dtype=torch.long), out_dtype=torch.int32)
    with pytest.raises(ValueError, match="backend must be one of"):
        block_gather(table, torch.zeros(2, dtype=torch.long), backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        BlockTableEmbedding(table, backend="c++")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_extension_backend_is_for_cpu_tensors():
    table = make("one-block", "fp32", "cuda")
    with pytest.raises(ValueError, match=r"backend=.extension. is the C\+\+ kernel"):
        block_gather(table, torch.zeros(2, dtype=torch.long, device="cuda"), backend="extension")


def test_without_the_extension_the_op_is_defined_here_on_the_pytorch_path():
    script = """
import sys, warnings
sys.modules["mixemb._C"] = None  # as if it was never built
import torch
from test_ops_block_table import make
from mixemb.ops.block_table import block_gather
from mixemb.reference import block_gather_reference
t, ids = make("K24", "int8"), torch.tensor([[0, 5, 29]])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert torch.equal(block_gather(t, ids), block_gather_reference(t, ids))
assert "mixemb._C is not available" in str(caught[0].message)
args = (t.values, t.scale_bias, t.boundaries, *t.serving_index(), ids)
torch.library.opcheck(torch.ops.mixemb.block_gather.default, args)
assert torch.equal(torch.ops.mixemb.block_gather(*args), block_gather_reference(t, ids))
try:
    block_gather(t, ids, backend="extension")
except RuntimeError as e:
    assert "mixemb._C is not available" in str(e)
else:
    raise AssertionError("backend='extension' ran without mixemb._C")
"""
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": tests}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]


@NEEDS_EXT
def test_the_python_schema_is_the_extensions():
    assert str(torch.ops.mixemb.block_gather.default._schema) == f"mixemb::{SCHEMA}"


@pytest.mark.parametrize("value_dtype", ["fp32", "fp16", "int8"])
def test_opcheck_of_the_registered_op(device, value_dtype):
    """The op of the device: the C++ kernel on CPU, the Triton launcher on CUDA."""
    table = make("K5-zero-column-block", value_dtype, device)
    ids = torch.tensor([[0, 4, 4], [19, 11, 2]], device=device)
    args = (table.values, table.scale_bias, table.boundaries, *table.serving_index())
    op = torch.ops.mixemb.block_gather.default
    torch.library.opcheck(op, (*args, ids, table.rows_dtype, True))
    torch.library.opcheck(op, (*args, ids.int(), None, False))
    torch.library.opcheck(op, (*args, ids[:0], torch.float32, device == "cpu"))
    tol = 1e-6 if device == "cuda" and value_dtype == "int8" else 0.0  # a GPU may fuse
    torch.testing.assert_close(
        op(*args, ids), block_gather_reference(table, ids), rtol=tol, atol=tol
    )


@pytest.mark.parametrize("value_dtype", DTYPES)
def test_the_module_scales_rows_by_values_forward_and_backward(device, value_dtype):
    table = make("K24", value_dtype, device)
    emb = BlockTableEmbedding(table, out_dtype=torch.float32)
    ids = torch.tensor([[0, 0, 29], [3, 17, 1]], device=device)
    values = torch.tensor([[2.0, -1.0, 0.5], [1.0, 0.0, 3.0]], device=device, requires_grad=True)
    rows = block_gather_reference(table, ids).float()
    out = emb(ids, values)
    torch.testing.assert_close(out, rows * values.detach()[..., None], rtol=0, atol=0)
    grad = torch.randn(out.shape, device=device)
    out.backward(grad)
    torch.testing.assert_close(values.grad, (rows * grad).sum(-1))
    assert torch.equal(emb(ids), rows) and emb.nbytes() == table.nbytes()
    assert emb.num_embeddings == 30
    assert repr(emb).startswith(
        f"BlockTableEmbedding(30, 24, blocks=3, dims=[24, 7, 1], dtype={value_dtype}, "
        f"nbytes={table.nbytes()}, out_dtype=torch.float32"
    )


@pytest.mark.parametrize("value_dtype", ["fp16", "int8"])
def test_the_module_state_loads_validated_and_moves_with_the_module(device, value_dtype):
    source = BlockTableEmbedding(make("K5-zero-column-block", value_dtype)).to(device)
    bounds, _, k = TABLES["K5-zero-column-block"]
    other = pruned_table(list(bounds), [4, 0, 5], k, seed=1)  # same dims, other columns
    target = BlockTableEmbedding.from_block_mask(*other, dtype=value_dtype).to(device)
    ids = torch.arange(20, device=device)
    assert not torch.equal(target(ids), source(ids))
    target.load_state_dict(source.state_dict())
    assert torch.equal(target(ids), source(ids))  # the serving index follows the mask
    assert set(source.state_dict()) == set(source.table.tensors())
    bad = source.state_dict()
    bad["boundaries"] = bad["boundaries"].flip(0)
    with pytest.raises(ValueError, match="invalid block table in the module's state: .*from 0"):
        target.load_state_dict(bad)
    assert torch.equal(target(ids), source(ids))  # nothing was copied in


@pytest.mark.parametrize("value_dtype", ["fp32", "int8"])
def test_the_module_compiles_with_fullgraph(value_dtype):
    emb = BlockTableEmbedding(make("K5-zero-column-block", value_dtype))
    ids = torch.tensor([[0, 4, 4], [19, 11, 2]])
    compiled = torch.compile(emb, fullgraph=True, dynamic=False)
    assert torch.equal(compiled(ids), emb(ids))
    values = torch.rand(2, 3)
    assert torch.equal(compiled(ids, values), emb(ids, values))


# ---- inconsistent tables: an error, never a crash ----------------------------------------
# A table's tensors edited or replaced behind the BlockTable's back (or passed to the raw
# op) must raise before any kernel reads a value: the C++ kernel, the Triton kernel (CUDA,
# or the interpreter on CPU) and the PyTorch path alike, in the C++ kernel's words. The
# cases run in one child process per device, so that a crash is seen as the child's signal
# (failing the case it happened in) instead of killing pytest.
_CORRUPT_SETUP = """
import json
import torch
from test_block_table import pruned_table
from mixemb.block_table import BlockTable
from mixemb.ops import block_gather

def good(dtype="fp32"):
    table = BlockTable.from_block_mask(*pruned_table([0, 3, 10, 20], [4, 0, 5], 5), dtype)
    return table.to(dev)

def edited(which, index, value, dtype="fp32"):
    t = good(dtype)
    layout, rank = t.serving_index()
    {"layout": layout, "rank": rank, "boundaries": t.boundaries}[which][index] = value
    return t

def gather(t, ids=None, **kwargs):
    ids = torch.arange(20, device=dev) if ids is None else ids.to(dev)
    return block_gather(t, ids, backend=backend, **kwargs)

def raw(t, **changes):
    args = dict(zip(["values", "scale_bias", "boundaries", "layout", "rank"],
                    [t.values, t.scale_bias, t.boundaries, *t.serving_index()]))
    args.update(changes)
    return torch.ops.mixemb.block_gather(**args, ids=torch.arange(20, device=dev))
"""
CORRUPT_CASES = {
    # name: (the statement, the error it must raise); a raw(...) case calls the registered
    # op (the device's kernel), the others block_gather with each backend of the device
    "values_replaced": (
        "t = good(); t.values = torch.ones(3, device=dev); gather(t)",
        "the blocks keep 62 values but values holds 3",
    ),
    "values_longer": (
        "t = good(); t.values = torch.ones(100, device=dev); gather(t)",
        "values holds 100",
    ),
    "scale_bias_short": (
        "t = good('int8'); t.scale_bias = t.scale_bias[:5]; gather(t)",
        r"scale_bias must be \(13, 2\)",
    ),
    "scale_bias_one_column": (
        "t = good('int8'); t.scale_bias = t.scale_bias[:, :1].contiguous(); gather(t)",
        r"scale_bias must be \(13, 2\)",
    ),
    "scale_bias_missing": (
        "raw(good('int8'), scale_bias=None)",
        r"an int8 table \(uint8 values\) needs its \(R, 2\) float16 scale_bias",
    ),
    "scale_bias_of_a_float_table": (
        "raw(good(), scale_bias=torch.zeros(13, 2, dtype=torch.float16, device=dev))",
        "scale_bias is for int8 tables",
    ),
    "value_start_2e40": (
        "gather(edited('layout', (2, 0), 2**40))",
        r"layout\[2\] = \(1099511627776, 3, 5\) but the boundaries and rank give "
        r"\(12, 3, 5\)",
    ),
    "layout_dim_negative": (
        "gather(edited('layout', (0, 2), -3))",
        r"layout\[0\]",
    ),
    "layout_dim_below_the_mask": (
        "gather(edited('layout', (2, 2), 4))",
        r"layout\[2\] = \(12, 3, 4\) but the boundaries and rank give \(12, 3, 5\)",
    ),
    "rank_past_the_row": (
        "gather(edited('rank', (2, 1), 100))",
        r"rank\[2, 1\] = 100, expected -1 or 1",
    ),
    "rank_below_minus_one": (
        "gather(edited('rank', (0, 0), -5))",
        r"rank\[0, 0\] = -5, expected -1 or 0",
    ),
    "rank_dropped_column_kept": (
        "gather(edited('rank', (1, 0), 0))",
        r"layout\[1\]",
    ),
    "rank_edited_after_a_good_call": (
        "t = good(); gather(t); t.serving_index()[1][2, 1] = 100; gather(t)",
        r"rank\[2, 1\] = 100",
    ),
    "boundaries_replaced_after_a_good_call": (
        "t = good(); gather(t); t.boundaries = torch.tensor([0, 3, 12, 20], device=dev); gather(t)",
        "the blocks keep 52 values but values holds 62",
    ),
    "boundaries_not_from_zero": (
        "gather(edited('boundaries', 0, 1))",
        r"boundaries\[0\] = 1, not 0",
    ),
    "boundaries_past_n": (
        "gather(edited('boundaries', 3, 2**62, 'int8'), check_bounds=False)",
        "values",
    ),
    "boundaries_decreasing": (
        "gather(edited('boundaries', 1, 15))",
        r"boundaries\[2\] = 10 is not above boundaries\[1\] = 15",
    ),
    "boundaries_overflow": (
        "t = good(); raw(t, boundaries=torch.tensor([0, 3, 2**62, 2**63 - 1], device=dev))",
        "overflow int64",
    ),
    "ids_outside_the_rows": (
        "gather(good('int8'), torch.tensor([0, 20]), check_bounds=True)",
        r"ids\[1\] \(flattened\) = 20 is outside the table's rows \[0, 20\)",
    ),
    "raw_layout_short": (
        "t = good(); raw(t, layout=t.serving_index()[0][:2])",
        r"layout must be \(3, 3\)",
    ),
    "raw_rank_int64": (
        "t = good(); raw(t, rank=t.serving_index()[1].long())",
        "rank must be 2-D Int",
    ),
    "raw_values_strided": (
        "t = good(); raw(t, values=torch.ones(124, device=dev)[::2])",
        "values must be a contiguous (CPU|CUDA) tensor",
    ),
    "raw_values_float64": (
        "t = good(); raw(t, values=t.values.double())",
        "values must be",
    ),
}
_CORRUPT_RUN = """
for backend, name in RUNS:
    try:
        exec(CASES[name])
        error = None
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    print(json.dumps([backend, name, error]), flush=True)
"""


def corrupt_runs(device: str) -> list[tuple[str, str]]:
    """(backend, case) pairs: a raw case once (backend "op"), the others with every
    backend of the device ("auto" is one of them)."""
    gathers = [b for b in backends(device, "int8") if b != "auto"]
    return [
        (backend, name)
        for name, (stmt, _) in CORRUPT_CASES.items()
        for backend in (["op"] if stmt.startswith(("raw(", "t = good(); raw(")) else gathers)
    ]


@pytest.fixture(scope="module")
def corrupt_outcomes():
    """device → {(backend, name): the error the case raised (None: no error), or the
    child's death}; one child per device, run on first use."""
    done: dict[str, dict] = {}

    def outcomes(device: str) -> dict:
        if device not in done:
            done[device] = _run_corrupt_cases(device)
        return done[device]

    return outcomes


def _run_corrupt_cases(device: str) -> dict:
    runs = corrupt_runs(device)
    cases = {name: stmt for name, (stmt, _) in CORRUPT_CASES.items()}
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]),
    }
    script = f"{_CORRUPT_SETUP}dev = {device!r}\nCASES = {cases!r}\nRUNS = {runs!r}\n"
    run = subprocess.run(
        [sys.executable, "-c", script + _CORRUPT_RUN], capture_output=True, text=True, env=env
    )
    outcomes = {(b, name): error for b, name, error in map(json.loads, run.stdout.splitlines())}
    if run.returncode != 0:  # a signal is a negative return code: the next case died
        died = next(r for r in runs if r not in outcomes)
        outcomes[died] = f"CHILD DIED (returncode {run.returncode}): {run.stderr[-1500:]}"
    return outcomes


@pytest.mark.parametrize("name", sorted(CORRUPT_CASES))
def test_an_inconsistent_table_is_an_error_never_a_crash(device, corrupt_outcomes, name):
    outcomes = corrupt_outcomes(device)
    for backend, case in corrupt_runs(device):
        if case != name:
            continue
        error = outcomes.get((backend, name), "never ran (an earlier case killed the child)")
        assert error is not None, f"{name} [{backend}]: no error raised"
        assert error.startswith(("ValueError", "RuntimeError")), f"[{backend}] {error}"
        assert re.search(CORRUPT_CASES[name][1], error), f"[{backend}] {error}"
