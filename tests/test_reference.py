"""mixemb.reference: block_of, the lookup x alpha reference, the alpha-grad normalization,
and the ideal-bytes formulas, each against a hand computation."""

from __future__ import annotations

import pytest
import torch

from mixemb.reference import (
    block_of,
    blocks_of,
    equal_boundaries,
    fused_update_reference,
    normalize_alpha_grad,
    padded_gather_bytes,
    padded_gather_reference,
    reference_alpha_values_grad,
    reference_forward,
    reference_row_grads,
    reference_weight_grad,
    soft_select_alpha_grad_bytes,
    soft_select_lookup_backward_bytes,
    soft_select_lookup_bytes,
    soft_select_lookup_reference,
    soft_select_weight_grad_bytes,
    stochastic_round,
)

IDS_DTYPES = [torch.int32, torch.int64]


def _block_by_scan(i: int, boundaries: list[int]) -> int:
    for l in range(len(boundaries) - 1):
        if boundaries[l] <= i < boundaries[l + 1]:
            return l
    raise AssertionError(f"id {i} outside {boundaries}")


@pytest.mark.parametrize(
    "boundaries",
    [[0, 7], [0, 3, 4, 10, 11], list(range(65)), [0, 5, 20, 100]],
    ids=["one-block", "uneven", "L64-one-row-each", "three"],
)
@pytest.mark.parametrize("ids_dtype", IDS_DTYPES)
def test_block_of_at_block_edges(boundaries, ids_dtype):
    b = torch.tensor(boundaries, dtype=torch.int64)
    pairs = zip(boundaries[:-1], boundaries[1:], strict=True)
    edges = sorted({x for lo, hi in pairs for x in (lo, hi - 1)})  # first and last id
    ids = torch.tensor(edges, dtype=ids_dtype)
    got = block_of(ids, b)
    assert got.dtype == torch.int64 and got.shape == ids.shape
    assert got.tolist() == [_block_by_scan(i, boundaries) for i in edges]


def test_block_of_keeps_shape_and_handles_empty():
    b = equal_boundaries(12, 3)
    ids = torch.tensor([[0, 3, 4], [7, 8, 11]])
    assert block_of(ids, b).tolist() == [[0, 0, 1], [1, 2, 2]]
    assert block_of(torch.empty(0, 5, dtype=torch.int32), b).shape == (0, 5)


@pytest.mark.parametrize("n,num_blocks", [(10, 1), (10, 3), (12, 3), (64, 64), (4_000_000, 10)])
def test_equal_boundaries(n, num_blocks):
    b = equal_boundaries(n, num_blocks)
    sizes = b.diff()
    assert b.dtype == torch.int64 and b.shape == (num_blocks + 1,)
    assert b[0] == 0 and b[-1] == n and bool((sizes > 0).all())
    assert int(sizes.max() - sizes.min()) <= 1


@pytest.mark.parametrize("n,num_blocks", [(3, 4), (5, 0)])
def test_equal_boundaries_rejects_bad_sizes(n, num_blocks):
    with pytest.raises(ValueError, match="num_rows"):
        equal_boundaries(n, num_blocks)


def _loop_lookup(weight, alpha, boundaries, ids, values):
    """out[j] = weight[id_j] * alpha[block(id_j)] (* v_j), one lookup at a time."""
    bl = boundaries.tolist()
    flat = ids.reshape(-1).tolist()
    vals = None if values is None else values.reshape(-1).tolist()
    out = torch.zeros(len(flat), weight.shape[1], dtype=weight.dtype)
    for j, i in enumerate(flat):
        out[j] = weight[i] * alpha[_block_by_scan(i, bl)] * (1.0 if vals is None else vals[j])
    return out.reshape(*ids.shape, weight.shape[1])


def _tiny(k, ids_shape, ids_dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = 9
    weight = torch.randn(n, k, generator=g, dtype=torch.float64)
    alpha = torch.rand(3, k, generator=g, dtype=torch.float64)
    boundaries = torch.tensor([0, 2, 5, 9])
    ids = torch.randint(0, n, ids_shape, generator=g).to(ids_dtype)
    values = torch.rand(ids_shape, generator=g, dtype=torch.float64)
    return weight, alpha, boundaries, ids, values


@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("ids_shape", [(6,), (4, 3), (0,), (0, 3)], ids=str)
@pytest.mark.parametrize("ids_dtype", IDS_DTYPES)
@pytest.mark.parametrize("with_values", [False, True])
def test_lookup_forward_matches_loop(k, ids_shape, ids_dtype, with_values):
    weight, alpha, boundaries, ids, values = _tiny(k, ids_shape, ids_dtype)
    values = values if with_values else None
    got = soft_select_lookup_reference(weight, alpha, boundaries, ids, values)
    assert got.shape == (*ids_shape, k) and got.dtype == weight.dtype
    torch.testing.assert_close(got, _loop_lookup(weight, alpha, boundaries, ids, values))


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("ids_dtype", IDS_DTYPES)
@pytest.mark.parametrize("with_values", [False, True])
def test_lookup_grads_match_hand_computation(k, ids_dtype, with_values):
    weight, alpha, boundaries, ids, values = _tiny(k, (5, 2), ids_dtype, seed=1)
    ids.view(-1)[:4] = torch.tensor([6, 6, 0, 6], dtype=ids_dtype)  # duplicates
    values = values if with_values else None
    dout = torch.randn(*ids.shape, k, dtype=torch.float64)
    w, a = weight.clone().requires_grad_(), alpha.clone().requires_grad_()
    soft_select_lookup_reference(w, a, boundaries, ids, values).backward(dout)

    dweight = torch.zeros_like(weight)
    dalpha = torch.zeros_like(alpha)
    bl = boundaries.tolist()
    flat_dout = dout.reshape(-1, k)
    for j, i in enumerate(ids.reshape(-1).tolist()):
        v = 1.0 if values is None else float(values.reshape(-1)[j])
        l = _block_by_scan(i, bl)
        dweight[i] += flat_dout[j] * alpha[l] * v  # duplicates accumulate
        dalpha[l] += weight[i] * flat_dout[j] * v  # per block: sum of weight[id] * dout
    torch.testing.assert_close(w.grad, dweight)
    torch.testing.assert_close(a.grad, dalpha)
    assert int((w.grad[6] != 0).sum()) == k  # the id looked up 3 times has one summed row


def test_lookup_grad_of_empty_batch_is_zero():
    weight, alpha, boundaries, ids, _ = _tiny(3, (0, 4), torch.int64)
    w, a = weight.clone().requires_grad_(), alpha.clone().requires_grad_()
    soft_select_lookup_reference(w, a, boundaries, ids).sum().backward()
    assert not w.grad.any() and not a.grad.any()


@pytest.mark.parametrize("ids_shape", [(7, 2), (0,), (1,)], ids=str)
@pytest.mark.parametrize("with_values", [False, True])
@pytest.mark.parametrize("normalize,l1", [(True, 1e-3), (False, 1e-2)])
def test_hand_written_backward_matches_autograd(ids_shape, with_values, normalize, l1):
    """The op's CPU math (flat ids) against autograd of soft_select_lookup_reference."""
    weight, alpha, boundaries, ids, values = _tiny(4, ids_shape, torch.int64, seed=2)
    if ids.numel() > 2:
        ids.view(-1)[:3] = 5  # a duplicated id
    values = values if with_values else None
    flat, vals = ids.reshape(-1), None if values is None else values.reshape(-1)
    dout = torch.randn(flat.numel(), 4, dtype=torch.float64)
    w, a = weight.clone().requires_grad_(), alpha.clone().requires_grad_()
    v = None if vals is None else vals.clone().requires_grad_()
    out = soft_select_lookup_reference(w, a, boundaries, flat, v)
    out.backward(dout)
    want_a = normalize_alpha_grad(a.grad, alpha, l1) if normalize else a.grad + l1 * alpha.sign()

    torch.testing.assert_close(reference_forward(weight, alpha, boundaries, flat, vals), out)
    torch.testing.assert_close(
        reference_weight_grad(dout, weight, alpha, boundaries, flat, vals), w.grad
    )
    rows = reference_row_grads(dout, weight, alpha, boundaries, flat, vals)
    summed = torch.zeros_like(weight).index_add_(0, flat, rows)
    torch.testing.assert_close(summed, w.grad)
    dalpha, dvalues = reference_alpha_values_grad(
        dout, weight, alpha, boundaries, flat, vals, True, with_values, normalize, l1, 1e-8
    )
    torch.testing.assert_close(dalpha, want_a)
    if with_values:
        torch.testing.assert_close(dvalues, v.grad)
    else:
        assert dvalues is None


@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad"])
def test_fused_update_reference_is_one_optimizer_step(optimizer):
    weight, alpha, boundaries, ids, values = _tiny(3, (8,), torch.int64, seed=3)
    ids[:3] = 4  # a duplicated id: one update with the summed gradient
    weight, alpha, values = weight.float(), alpha.float(), values.float()
    dout = torch.randn(8, 3)
    g = reference_weight_grad(dout, weight, alpha, boundaries, ids, values)
    state, lr = torch.full((9,), 0.5), torch.tensor([0.1])
    got = weight.clone()
    fused_update_reference(dout, got, alpha, boundaries, ids, values, state, lr, optimizer)
    looked_up = torch.zeros(9, dtype=torch.bool).index_fill_(0, ids, True)
    if optimizer == "sgd":
        want = weight - 0.1 * g
    else:
        m = 0.5 + (g * g).mean(1)
        want = weight - 0.1 * g / (m.sqrt() + 1e-8).unsqueeze(1)
        torch.testing.assert_close(state[looked_up], m[looked_up])
        assert bool((state[~looked_up] == 0.5).all())
    torch.testing.assert_close(got[looked_up], want[looked_up])
    assert torch.equal(got[~looked_up], weight[~looked_up])


@pytest.mark.parametrize("l1", [0.0, 1e-2])
def test_normalize_alpha_grad_matches_formula(l1):
    g = torch.tensor([[1.0, -3.0, 0.5], [0.0, 0.0, 0.0], [-2.0, 0.0, 4.0]], dtype=torch.float64)
    alpha = torch.tensor([[0.5, 1.0, 0.0], [0.2, 0.0, 1.0], [1.0, 0.3, 0.7]], dtype=torch.float64)
    eps = 1e-8
    want = torch.empty_like(g)
    for l in range(3):
        h = [float(g[l, k]) + l1 * float(torch.sign(alpha[l, k])) for k in range(3)]
        mean_abs = sum(abs(x) for x in h) / 3
        want[l] = torch.tensor([x / (mean_abs + eps) for x in h], dtype=torch.float64)
    got = normalize_alpha_grad(g, alpha, l1=l1, eps=eps)
    torch.testing.assert_close(got, want)
    assert got.abs().mean(1)[0] == pytest.approx(1.0, rel=1e-6)


def test_normalize_alpha_grad_zero_row_stays_finite_and_zero():
    g = torch.zeros(2, 4)
    got = normalize_alpha_grad(g, torch.zeros(2, 4), l1=1e-5)  # sign(0) = 0: h is all zero
    assert bool(torch.isfinite(got).all()) and not got.any()


def test_padded_gather_reference_is_embedding():
    weight, _, _, ids, _ = _tiny(3, (4, 2), torch.int32)
    torch.testing.assert_close(padded_gather_reference(weight, ids), weight[ids.long()])


def test_bytes_by_hand_arithmetic():
    # M = 10 lookups, K = 4, L = 2, fp16 rows (2 B), int32 ids (4 B), with values.
    p, i, v, a, b = 10 * 4 * 2, 10 * 4, 10 * 2, 2 * 4 * 2, 3 * 8  # 80, 40, 20, 16, 24
    args = (10, 4, 2, torch.float16, torch.int32, True)
    assert soft_select_lookup_bytes(*args) == 2 * p + i + v + a + b == 260
    assert soft_select_alpha_grad_bytes(*args) == 2 * p + i + v + 2 * a + b == 276
    assert soft_select_weight_grad_bytes(*args) == 260
    assert soft_select_lookup_backward_bytes(*args) == 536
    assert padded_gather_bytes(10, 4, torch.float16, torch.int32) == 2 * p + i == 200


def test_bytes_at_the_documented_anchor():
    m, k, num_blocks = 16384 * 26, 64, 10
    assert m * k * 4 == 109_051_904  # "109 MB per pass of rows/outputs"
    total = soft_select_lookup_bytes(m, k, num_blocks) + soft_select_lookup_backward_bytes(
        m, k, num_blocks
    )
    assert total / 3.0e12 * 1e3 == pytest.approx(0.22, abs=0.005)  # fwd+bwd limit, ms
    assert soft_select_lookup_bytes(m, k, num_blocks) == 2 * 109_051_904 + m * 8 + 2560 + 88


def test_bytes_with_unique_rows_by_hand_arithmetic():
    # M = 10 lookups of U = 3 distinct ids, K = 4, L = 2, fp32, int64 ids, no values.
    p, r, i, a, b = 10 * 4 * 4, 3 * 4 * 4, 10 * 8, 2 * 4 * 4, 3 * 8  # 160, 48, 80, 32, 24
    args = (10, 4, 2, torch.float32, torch.int64, False)
    assert soft_select_lookup_bytes(*args, unique_rows=3) == r + p + i + a + b == 344
    assert soft_select_alpha_grad_bytes(*args, unique_rows=3) == r + p + i + 2 * a + b == 376
    assert soft_select_weight_grad_bytes(*args, unique_rows=3) == 344
    assert padded_gather_bytes(10, 4, unique_rows=3) == r + p + i == 288
    # unique_rows=None is the U = M upper bound
    assert soft_select_lookup_bytes(*args) == soft_select_lookup_bytes(*args, unique_rows=10)


@pytest.mark.parametrize(
    "fn",
    [
        soft_select_lookup_bytes,
        soft_select_alpha_grad_bytes,
        soft_select_weight_grad_bytes,
        soft_select_lookup_backward_bytes,
    ],
)
def test_bytes_grow_with_lookups_dim_and_unique_rows(fn):
    assert fn(0, 4, 2) < fn(1, 4, 2) < fn(100, 4, 2) < fn(101, 4, 2)
    assert fn(100, 1, 2) < fn(100, 3, 2) < fn(100, 64, 2)
    assert fn(100, 4, 2, unique_rows=0) < fn(100, 4, 2, unique_rows=50) < fn(100, 4, 2)
    assert fn(100, 4, 2, torch.float16) < fn(100, 4, 2, torch.float32)
    assert fn(100, 4, 2, with_values=False) < fn(100, 4, 2, with_values=True)
    assert padded_gather_bytes(100, 4) < padded_gather_bytes(101, 4) < padded_gather_bytes(101, 5)


@pytest.mark.parametrize("unique_rows", [-1, 11])
def test_bytes_reject_unique_rows_outside_range(unique_rows):
    with pytest.raises(ValueError, match="unique_rows"):
        soft_select_lookup_bytes(10, 4, 2, unique_rows=unique_rows)


def test_blocks_of_reads_the_block_map_or_the_boundaries():
    b = equal_boundaries(6, 3)
    block_map = torch.tensor([2, 0, 1, 1, 0, 2])
    ids = torch.tensor([[5, 0], [3, 3]], dtype=torch.int32)
    assert blocks_of(ids, None, block_map).tolist() == [[2, 2], [1, 1]]
    assert torch.equal(blocks_of(ids, b), block_of(ids, b))
    assert blocks_of(torch.empty(0, 2, dtype=torch.long), None, block_map).shape == (0, 2)


@pytest.mark.parametrize("with_values", [False, True])
def test_block_map_reference_and_hand_written_backward(with_values):
    """Blocks from an unsorted per-id map: the scalar loop, autograd of the reference and
    the hand-written backward agree."""
    weight, alpha, _, _, values = _tiny(3, (9,), torch.int64, seed=4)
    n, num_blocks = weight.shape[0], alpha.shape[0]
    block_map = torch.randperm(n, generator=torch.Generator().manual_seed(5)) % num_blocks
    ids = torch.tensor([4, 4, 4, 0, n - 1, 2, 4, 1, 0])  # 4 is hot
    values = values.reshape(-1) if with_values else None
    w, a = weight.clone().requires_grad_(), alpha.clone().requires_grad_()
    v = None if values is None else values.clone().requires_grad_()
    out = soft_select_lookup_reference(w, a, None, ids, v, block_map=block_map)
    dout = torch.randn_like(out)
    out.backward(dout)
    for j, i in enumerate(ids.tolist()):
        scale = 1.0 if values is None else float(values[j])
        torch.testing.assert_close(out[j], weight[i] * alpha[block_map[i]] * scale)
    kw = dict(block_map=block_map)
    torch.testing.assert_close(reference_forward(weight, alpha, None, ids, values, **kw), out)
    dw = reference_weight_grad(dout, weight, alpha, None, ids, values, **kw)
    torch.testing.assert_close(dw, w.grad)
    dalpha, dvalues = reference_alpha_values_grad(
        dout, weight, alpha, None, ids, values, True, with_values, False, 0.0, 1e-8, **kw
    )
    torch.testing.assert_close(dalpha, a.grad)
    if with_values:
        torch.testing.assert_close(dvalues, v.grad)
    state, lr = torch.zeros(n), torch.tensor([0.5])
    got, want = weight.clone(), weight.clone()
    fused_update_reference(dout, got, alpha, None, ids, values, state, lr, "sgd", **kw)
    want -= 0.5 * dw
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_stochastic_round_picks_a_neighbour_with_its_share_of_the_gap(dtype):
    """For each x, over u on a regular grid of [0, 1): only the two neighbours of x come
    out, the farther from zero with the frequency (|x| - |near|) / gap, so the mean is x
    to within gap / len(u); exact values, ±inf and nan come back unchanged."""
    g = torch.Generator().manual_seed(0)
    tiny = torch.finfo(dtype).smallest_normal
    x = torch.cat([
        torch.randn(40, generator=g) * 10.0 ** torch.randint(-3, 4, (40,), generator=g),
        torch.rand(8, generator=g) * tiny * 2 - tiny,  # subnormals, both signs
        torch.tensor([1.0 + 1e-4, -1.0 - 1e-4, 1e-9 if dtype == torch.float16 else 1e-42]),
    ])  # fmt: skip
    u = (torch.arange(4096) + 0.5) / 4096
    got = stochastic_round(x[:, None].expand(-1, 4096), dtype, u.expand(x.numel(), -1))
    assert got.dtype == dtype
    for i, xi in enumerate(x):
        vals = torch.unique(got[i].float())
        near = xi.to(dtype).float()
        assert len(vals) <= 2 and near in vals, (i, xi, vals)
        gap = (vals.max() - vals.min()) if len(vals) == 2 else torch.tensor(0.0)
        mean = got[i].float().mean()
        assert abs(mean - xi) <= gap / 4096 + 1e-7 * abs(xi), (i, float(xi), float(mean))
        if len(vals) == 2:  # the neighbours straddle x, one encoding step apart
            assert vals.min() <= xi <= vals.max()
            bits = vals.to(dtype).view(torch.int16).int()
            assert abs(int(bits[1] - bits[0])) == 1
    special = torch.tensor([1.0, -0.5, 0.0, float("inf"), float("-inf"), float("nan")])
    out = stochastic_round(special, dtype, torch.full((6,), 0.999))
    assert torch.equal(out[:5], special[:5].to(dtype)) and out[5].isnan()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_update_reference_rounds_stochastically_by_seed(dtype):
    """fp16 / bf16 tables: each updated value a neighbour of the fp32 update, the same seed
    the same table, another seed another; fp32 tables ignore the flag."""
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(20, 8, generator=g)
    alpha, boundaries = torch.rand(2, 8, generator=g), torch.tensor([0, 7, 20])
    ids, dout = torch.randint(0, 20, (30,), generator=g), torch.randn(30, 8, generator=g)
    lr = torch.tensor([0.01])

    def update(w, **kw):
        w = w.clone()
        fused_update_reference(dout, w, alpha, boundaries, ids, None, torch.zeros(0), lr,
                               "sgd", **kw)  # fmt: skip
        return w

    x = update(weight.to(dtype).float())
    runs = [update(weight.to(dtype), stochastic_rounding=True, seed=s) for s in (3, 3, 4)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    nearest = x.to(dtype)
    step = (runs[0].view(torch.int16).int() - nearest.view(torch.int16).int()).abs()
    across = (runs[0].float() - x) * (nearest.float() - x) <= 0
    assert ((runs[0] == nearest) | ((step == 1) & across)).all()
    assert (runs[0] != nearest).any()
    assert torch.equal(update(weight, stochastic_rounding=True, seed=3), update(weight))
