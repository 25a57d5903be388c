"""block_gather and BlockTableEmbedding: the vectorized PyTorch path and the Triton kernel
(CUDA, or Triton's interpreter on CPU) against the block-by-block reference, at every value
dtype and on the edge cases; the registered op under opcheck and torch.compile."""

from __future__ import annotations

import pytest
import torch
from test_block_table import pruned_table

from mixemb.block_table import BlockTable
from mixemb.kernels.block_table import INTERPRET
from mixemb.nn.block_table import BlockTableEmbedding
from mixemb.ops.block_table import block_gather, block_gather_op
from mixemb.reference import block_gather_reference

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


def backends(device: str, value_dtype: str) -> list[str]:
    """The gathers to test: the PyTorch path, and the Triton kernel where it runs (not bf16
    under the interpreter)."""
    triton = device == "cuda" or (INTERPRET and value_dtype != "bf16")
    return ["torch", "triton"] if triton else ["torch"]


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


@pytest.mark.parametrize("value_dtype", ["fp16", "bf16"])
def test_out_dtype_serves_a_half_table_in_float32(device, value_dtype):
    table = make("K5-zero-column-block", value_dtype, device)
    ids = torch.tensor([[0, 5, 19]], device=device)
    expected = block_gather_reference(table, ids).float()
    for backend in backends(device, value_dtype):
        out = block_gather(table, ids, out_dtype=torch.float32, backend=backend)
        assert out.dtype == torch.float32 and torch.equal(out, expected)


def test_ids_outside_the_table_raise_when_checked_and_read_zero_rows_unchecked(device):
    table = make("K5-zero-column-block", "int8", device)
    ids = torch.tensor([3, 20, -1, 19], device=device)
    with pytest.raises(ValueError, match=r"ids\[1\] \(flattened\) = 20 is outside"):
        block_gather(table, ids, check_bounds=True)
    for backend in backends(device, "int8"):
        out = block_gather(table, ids, check_bounds=False, backend=backend)
        assert not out[1:3].any()
        assert torch.equal(out[[0, 3]], block_gather_reference(table, ids[[0, 3]]))
    with pytest.raises(ValueError, match="ids must be in"):
        block_gather_reference(table, ids)


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


@pytest.mark.parametrize("value_dtype", ["fp32", "fp16", "int8"])
def test_opcheck_of_the_registered_op(device, value_dtype):
    table = make("K5-zero-column-block", value_dtype, device)
    ids = torch.tensor([[0, 4, 4], [19, 11, 2]], device=device)
    for backend in backends(device, value_dtype):
        args = (table.values, table.scale_bias, table.boundaries, *table.serving_index(), ids)
        use_triton = backend == "triton"
        torch.library.opcheck(block_gather_op, (*args, table.rows_dtype, use_triton))
        torch.library.opcheck(block_gather_op, (*args[:-1], ids[:0], torch.float32, use_triton))


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
