"""RaggedEmbeddingBag against nn.EmbeddingBag over the same pruned table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixemb.nn.ragged_bag import RaggedEmbeddingBag
from mixemb.ragged import RaggedTable

# (value dtype of the table, tolerance against fp32 nn.EmbeddingBag on its served rows)
TOLERANCES = {torch.float32: 1e-6, torch.float16: 2e-3, "int8": 1e-5}


def _pruned(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """(n, k) float32 with about half its entries pruned (zeros) and row 3 empty."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    w[torch.rand(n, k, generator=g) < 0.5] = 0
    w[min(3, n - 1)] = 0
    return w


def _pair(n, k, mode, *, padding_idx=None, include_last_offset=False, dtype=None, **kw):
    """(RaggedEmbeddingBag, nn.EmbeddingBag over its served rows in float32)."""
    bag = RaggedEmbeddingBag.from_dense(
        _pruned(n, k),
        dtype=dtype,
        mode=mode,
        padding_idx=padding_idx,
        include_last_offset=include_last_offset,
        **kw,
    )
    ref = nn.EmbeddingBag(
        n, k, mode=mode, padding_idx=padding_idx, include_last_offset=include_last_offset
    )
    with torch.no_grad():
        ref.weight.copy_(bag.table.to_dense().float())
    return bag, ref


def _bags(n: int, sizes: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (M,) with duplicates, a hot row (id 1) and the padding candidate 2; offsets (B,)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, n, (sum(sizes),), generator=g)
    ids[::3] = 1
    ids[1::5] = 2
    offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0) if sizes else torch.zeros(0)
    return ids, offsets.long()


SIZES = [[3, 0, 1, 4, 2], [1], [0, 0], [5, 5, 5, 5], []]


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, 2, -1])
@pytest.mark.parametrize("include_last_offset", [False, True])
@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("k", [5, 24, 70])
def test_one_dim_input_matches_embedding_bag(
    device, mode, padding_idx, include_last_offset, sizes, k
):
    n = 11
    bag, ref = _pair(n, k, mode, padding_idx=padding_idx, include_last_offset=include_last_offset)
    ids, offsets = _bags(n, sizes)
    if padding_idx == -1:
        ids[-2:] = n - 1
    if include_last_offset:
        offsets = torch.cat([offsets, offsets.new_tensor([ids.numel()])])
    out = bag.to(device)(ids.to(device), offsets.to(device))
    torch.testing.assert_close(out.cpu(), ref(ids, offsets).detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, 2])
@pytest.mark.parametrize("shape", [(4, 3), (1, 1), (0, 3), (2, 1)])
def test_two_dim_input_matches_embedding_bag(device, mode, padding_idx, shape):
    bag, ref = _pair(9, 24, mode, padding_idx=padding_idx, include_last_offset=True)
    ids = torch.randint(0, 9, shape, generator=torch.Generator().manual_seed(2))
    ids.view(-1)[::2] = 2
    out = bag.to(device)(ids.to(device))
    torch.testing.assert_close(out.cpu(), ref(ids).detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("include_last_offset", [False, True])
def test_int32_ids_and_offsets(device, mode, include_last_offset):
    bag, ref = _pair(11, 5, mode, padding_idx=2, include_last_offset=include_last_offset)
    ids, offsets = _bags(11, [3, 0, 4, 2])
    if include_last_offset:
        offsets = torch.cat([offsets, offsets.new_tensor([ids.numel()])])
    out = bag.to(device)(ids.int().to(device), offsets.int().to(device))
    torch.testing.assert_close(out.cpu(), ref(ids, offsets).detach(), rtol=1e-6, atol=1e-6)


def test_two_dim_input_of_empty_bags_gives_zeros():
    bag, _ = _pair(9, 5, "max")
    assert torch.equal(bag(torch.zeros(3, 0, dtype=torch.long)), torch.zeros(3, 5))


@pytest.mark.parametrize("padding_idx", [None, 2])
@pytest.mark.parametrize("include_last_offset", [False, True])
@pytest.mark.parametrize("two_dim", [False, True])
def test_per_sample_weights_and_their_gradient_match(
    device, padding_idx, include_last_offset, two_dim
):
    bag, ref = _pair(
        13, 24, "sum", padding_idx=padding_idx, include_last_offset=include_last_offset
    )
    if two_dim:
        ids, offsets = torch.randint(0, 13, (4, 3)), None
    else:
        ids, offsets = _bags(13, [3, 0, 2, 4])
        if include_last_offset:
            offsets = torch.cat([offsets, offsets.new_tensor([ids.numel()])])
    ids.view(-1)[::4] = 2
    w = torch.rand(ids.shape, dtype=torch.float32, requires_grad=True)
    w_ref = w.detach().clone().requires_grad_(True)
    grad = torch.randn(ref(ids, offsets, per_sample_weights=w_ref).shape)
    out = bag.to(device)(
        ids.to(device), None if offsets is None else offsets.to(device), per_sample_weights=w
    )
    expected = ref(ids, offsets, per_sample_weights=w_ref)
    torch.testing.assert_close(out.cpu(), expected.detach(), rtol=1e-6, atol=1e-6)
    out.backward(grad.to(device))
    expected.backward(grad)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "extension"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_backends_agree(backend, mode):
    from mixemb import _ext

    if backend == "extension" and not _ext.HAS_EXT:
        pytest.skip("mixemb._C is not built")
    bag, ref = _pair(11, 24, mode, padding_idx=2, backend=backend)
    ids, offsets = _bags(11, [3, 0, 1, 4, 2])
    torch.testing.assert_close(bag(ids, offsets), ref(ids, offsets).detach())


@pytest.mark.parametrize("dtype", [torch.float16, "int8"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_half_and_int8_tables_match_within_tolerance(dtype, mode):
    bag, ref = _pair(11, 24, mode, padding_idx=2, dtype=dtype)
    ids, offsets = _bags(11, [3, 0, 1, 4, 2])
    out = bag(ids, offsets)
    assert out.dtype == (torch.float16 if dtype == torch.float16 else torch.float32)
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(out.float(), ref(ids, offsets).detach(), rtol=tol, atol=tol)
    # the served rows are the stored values: fp32 weights of the unquantized table differ
    dense = nn.EmbeddingBag.from_pretrained(_pruned(11, 24), mode=mode, padding_idx=2)
    torch.testing.assert_close(out.float(), dense(ids, offsets), rtol=0.05, atol=0.05)


def test_bad_arguments_are_one_line_value_errors():
    bag, _ = _pair(5, 4, "mean")
    ids, offsets = torch.tensor([0, 1]), torch.tensor([0, 1])
    cases = [
        (lambda: bag(ids, offsets, per_sample_weights=torch.ones(2)), "mode .sum."),
        (lambda: bag(ids), "1-D offsets"),
        (lambda: bag(ids.view(1, 2), offsets), "offsets must be None"),
        (lambda: bag(ids.view(1, 1, 2)), "1-D .* or 2-D"),
        (lambda: RaggedEmbeddingBag(bag.table, mode="min"), "mode"),
        (lambda: RaggedEmbeddingBag(bag.table, padding_idx=5), "padding_idx"),
        (lambda: RaggedEmbeddingBag(bag.table, bag_kernel="x"), "bag_kernel"),
    ]
    summed, _ = _pair(5, 4, "sum")
    cases.append((lambda: summed(ids, offsets, per_sample_weights=torch.ones(3)), "shape"))
    maxed, _ = _pair(5, 4, "max")
    cases.append((lambda: maxed(ids, torch.tensor([1, 1])), "start at 0"))
    cases.append((lambda: maxed(ids, torch.tensor([0, 2, 1])), "non-decreasing"))
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()


def test_state_round_trips_and_a_bad_state_is_refused():
    bag, _ = _pair(20, 24, "max", padding_idx=2)
    fresh = RaggedEmbeddingBag(bag.table, mode="max", padding_idx=2)
    fresh.load_state_dict(bag.state_dict())
    ids, offsets = _bags(20, [4, 2])
    assert torch.equal(fresh(ids, offsets), bag(ids, offsets))
    state = bag.state_dict()
    state["group_offsets"] = state["group_offsets"].flip(0)
    with pytest.raises(ValueError, match="invalid ragged table"):
        fresh.load_state_dict(state)
    state = bag.state_dict()
    state["masks"] = torch.full_like(state["masks"], -1)
    with pytest.raises(ValueError, match="invalid ragged table"):
        fresh.load_state_dict(state)


def test_repr_names_the_bag_options():
    bag = RaggedEmbeddingBag(
        RaggedTable.from_dense(_pruned(6, 5)), mode="sum", padding_idx=-1, include_last_offset=True
    )
    text = repr(bag)
    assert "mode='sum'" in text and "padding_idx=5" in text and "include_last_offset=True" in text
