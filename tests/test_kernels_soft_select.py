"""mixemb.kernels.soft_select and .soft_select_weights: the Triton kernels, through the op
(backend="triton") and through their launchers, against the reference op.

On this CPU machine the kernels run in Triton's interpreter (conftest sets
TRITON_INTERPRET=1 before they are imported), so shapes stay tiny; on a GPU the same
bodies run on CUDA. Every case checks the forward and every backward variant the search
uses: α step (table frozen), weights step (α frozen; dense deterministic, dense atomic,
sparse rows, fused SGD / row-wise Adagrad) and both at once; then row-strided tables and
output gradients (read in place, updated in place), the weights step's int32 sort keys, and
the stochastic rounding of half tables' fused updates.
"""

from __future__ import annotations

import pytest
import torch

from mixemb.kernels import soft_select as kernels
from mixemb.kernels import soft_select_weights as weights_kernels
from mixemb.nn import FusedOptimizer
from mixemb.ops import soft_select_lookup
from mixemb.reference import fused_update_reference

HAS_CUDA = torch.cuda.is_available()
CUDA_ONLY = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
pytestmark = pytest.mark.skipif(
    not (HAS_CUDA or kernels.INTERPRET), reason="needs CUDA or TRITON_INTERPRET=1"
)

# fp32: the kernels reorder sums (per-block one-hot matmul, run sums before the α scale),
# so gradients agree to a few fp32 ulps of the summed magnitude, not bitwise.
# fp16 tables: one fp16 rounding of outputs / row grads (2^-11 relative) vs the
# reference's two roundings; the α gradient accumulates in fp32 in both.
TOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


def _case(n, k, num_blocks, shape, *, hot=False, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=g).to(dtype)
    alpha = torch.rand(num_blocks, k, generator=g)
    cuts = torch.sort(torch.randperm(n - 1, generator=g)[: num_blocks - 1] + 1).values
    boundaries = torch.cat([torch.tensor([0]), cuts, torch.tensor([n])]).long()
    ids = torch.randint(0, n, shape, generator=g)
    if hot and ids.numel():
        ids.view(-1)[: ids.numel() * 3 // 4] = 0  # one row takes most lookups
    values = torch.rand(shape, generator=g)
    dout = torch.randn(*shape, k, generator=g)
    return [t.to(device) for t in (weight, alpha, boundaries, ids, values, dout)]


CASES = {
    "dup": dict(n=20, k=8, num_blocks=4, shape=(6, 3)),
    "K1": dict(n=20, k=1, num_blocks=2, shape=(5,)),
    "K3-one-block": dict(n=33, k=3, num_blocks=1, shape=(7, 2)),
    "K24-L64": dict(n=64, k=24, num_blocks=64, shape=(9, 4)),
    "hot-row": dict(n=10, k=5, num_blocks=3, shape=(80,), hot=True),
    "K160": dict(n=12, k=160, num_blocks=3, shape=(10,), hot=True),
    "empty": dict(n=10, k=5, num_blocks=3, shape=(0, 3)),
    "one": dict(n=10, k=5, num_blocks=3, shape=(1, 1)),
}


def _run(backend, weight, alpha, boundaries, ids, values, dout, *, need, **kw):
    """Forward + backward; need is a subset of 'wav' (weight, alpha, values)."""
    w = weight.clone().requires_grad_("w" in need)
    a = alpha.clone().requires_grad_("a" in need)
    v = None if values is None else values.clone().requires_grad_("v" in need)
    out = soft_select_lookup(w, a, boundaries, ids, v, backend=backend, **kw)
    out.backward(dout.to(out.dtype))
    grad = w.grad.to_dense() if w.grad is not None and w.grad.is_sparse else w.grad
    return out, grad, a.grad, None if v is None else v.grad


def _close(got, want, dtype, what):
    if want is None:
        assert got is None, what
        return
    torch.testing.assert_close(got, want, **TOL[dtype], msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize(
    "need,with_values",
    [("a", False), ("a", True), ("av", True), ("w", False), ("w", True), ("wa", False),
     ("wav", True)],
)  # fmt: skip
def test_forward_and_backward_variants_match_reference(device, name, need, with_values):
    weight, alpha, boundaries, ids, values, dout = _case(**CASES[name], device=device)
    values = values if with_values else None
    kw = dict(l1=1e-3, normalize=True, need=need)
    want = _run("reference", weight, alpha, boundaries, ids, values, dout, **kw)
    variants = [dict(deterministic=True), dict(deterministic=False), dict(sparse=True)]
    for extra in variants if "w" in need else variants[:1]:
        got = _run("triton", weight, alpha, boundaries, ids, values, dout, **kw, **extra)
        for g, r, what in zip(got, want, ("out", "dweight", "dalpha", "dvalues")):
            _close(g, r, torch.float32, f"{name} {need} {extra} {what}")


@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=CUDA_ONLY)])
def test_half_tables_match_reference_within_dtype_tolerance(device, dtype):
    if dtype == torch.bfloat16 and device == "cpu":
        pytest.skip("numpy (the interpreter) has no bfloat16")
    weight, alpha, boundaries, ids, values, dout = _case(
        30, 12, 3, (16,), hot=True, dtype=dtype, device=device
    )
    want = _run("reference", weight, alpha, boundaries, ids, values, dout, need="wav")
    got = _run("triton", weight, alpha, boundaries, ids, values, dout, need="wav")
    assert got[0].dtype == want[0].dtype == torch.float32  # promote(weight, α=fp32)
    assert got[1].dtype == dtype
    for g, r, what in zip(got, want, ("out", "dweight", "dalpha", "dvalues")):
        _close(g, r, dtype, what)


@pytest.mark.parametrize("chunk,tile", [(2, 1), (4, 2), (5, 4), (3, 32)])
def test_runs_across_chunk_edges(device, chunk, tile, monkeypatch):
    """Runs of equal ids that span 1, 2 and many chunks, ending on and off chunk edges;
    the longest spans several carry tiles (and ends one chunk past a tile edge)."""
    monkeypatch.setattr(weights_kernels, "SEGMENT_CHUNK", chunk)
    monkeypatch.setattr(weights_kernels, "CARRY_TILE", tile)
    counts = [1, chunk, chunk + 1, 3 * chunk, 1, 2 * chunk - 1, 7, (3 * tile + 2) * chunk + 1]
    ids = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    ids = ids[torch.randperm(ids.numel(), generator=torch.Generator().manual_seed(1))]
    weight, alpha, boundaries, _, _, _ = _case(len(counts), 6, 2, (1,), device=device)
    ids = ids.to(device)
    dout = torch.randn(ids.numel(), 6, device=device)
    want = _run("reference", weight, alpha, boundaries, ids, None, dout, need="w")[1]
    got = _run("triton", weight, alpha, boundaries, ids, None, dout, need="w")[1]
    _close(got, want, torch.float32, "dweight")


@pytest.mark.parametrize("rows_per_step", [1, 4, 64])
def test_alpha_finish_sums_many_partials_across_its_steps(device, rows_per_step, monkeypatch):
    """The α step over 13 programs (a tile of 16 lookups each), their partials summed
    1, 4 (a short last step) or 64 (one step) at a time: dα as the reference's, and the
    same bits on a second run."""
    monkeypatch.setattr(kernels, "_tile", lambda dim: (16, 8))
    monkeypatch.setattr(kernels, "_num_programs_cap", lambda device: 64)  # 13 programs
    monkeypatch.setattr(kernels, "_finish_rows", lambda dim: rows_per_step)
    weight, alpha, boundaries, ids, values, dout = _case(40, 6, 3, (200,), hot=True, device=device)
    want = _run("reference", weight, alpha, boundaries, ids, values, dout, need="a", l1=1e-4)
    got = _run("triton", weight, alpha, boundaries, ids, values, dout, need="a", l1=1e-4)
    _close(got[2], want[2], torch.float32, "dalpha")
    again = _run("triton", weight, alpha, boundaries, ids, values, dout, need="a", l1=1e-4)
    assert torch.equal(got[2], again[2])


def test_deterministic_mode_is_bitwise_reproducible(device, monkeypatch):
    monkeypatch.setattr(weights_kernels, "SEGMENT_CHUNK", 4)
    weight, alpha, boundaries, ids, values, dout = _case(16, 7, 3, (60,), hot=True, device=device)
    runs = [
        _run("triton", weight, alpha, boundaries, ids, values, dout, need="wav", l1=1e-4)
        for _ in range(2)
    ]
    for x, y in zip(*runs):
        assert torch.equal(x, y)


@pytest.mark.parametrize("kind", ["sgd", "rowwise_adagrad"])
@pytest.mark.parametrize("with_values", [False, True])
def test_fused_optimizer_matches_reference_update(device, kind, with_values, monkeypatch):
    monkeypatch.setattr(weights_kernels, "SEGMENT_CHUNK", 4)
    weight, alpha, boundaries, ids, values, dout = _case(15, 9, 3, (30,), hot=True, device=device)
    values = values if with_values else None
    w = weight.clone().requires_grad_()
    a = alpha.clone().requires_grad_()
    opt = FusedOptimizer(w, kind, lr=0.3)
    want_w, want_state = weight.clone(), opt.state.clone()
    for step in range(2):  # the second step sees the first's accumulator
        out = soft_select_lookup(
            w, a, boundaries, ids, values, backend="triton", fused_optimizer=opt
        )
        out.backward(dout)
        fused_update_reference(
            dout.reshape(-1, 9), want_w, alpha, boundaries, ids.reshape(-1), values,
            want_state, opt.lr, kind,
        )  # fmt: skip
        assert w.grad is None
        _close(w.detach(), want_w, torch.float32, f"weight after step {step}")
        if kind == "rowwise_adagrad":
            _close(opt.state, want_state, torch.float32, "state")
    # α's gradient was computed from the table before the update
    ref_a = _run("reference", weight, alpha, boundaries, ids, values, dout, need="a")[2]
    a.grad = None
    w2 = weight.clone().requires_grad_()
    soft_select_lookup(
        w2, a, boundaries, ids, values, backend="triton", fused_optimizer=FusedOptimizer(w2, kind)
    ).backward(dout)
    _close(a.grad, ref_a, torch.float32, "dalpha")


def test_out_of_range_ids_raise_or_read_zero():
    weight, alpha, boundaries, _, _, _ = _case(10, 4, 2, (1,))
    bad = torch.tensor([3, 10, -1])
    with pytest.raises(ValueError, match=r"ids\[1\] \(flattened\) = 10 is outside"):
        soft_select_lookup(weight, alpha, boundaries, bad, backend="triton")
    out = soft_select_lookup(weight, alpha, boundaries, bad, backend="triton", check_ids=False)
    assert torch.equal(out[1:], torch.zeros(2, 4))
    torch.testing.assert_close(out[0], weight[3] * alpha[0])


def test_launcher_limits_are_named():
    w, a, b = torch.zeros(100, 4), torch.ones(65, 4), torch.arange(66).long()
    with pytest.raises(ValueError, match="1 ≤ L ≤ 64"):
        kernels.soft_select_fwd(w, a, b, torch.tensor([1]))
    with pytest.raises(ValueError, match="1 ≤ K ≤ 1024"):
        kernels.soft_select_fwd(torch.zeros(4, 1025), torch.ones(1, 1025), torch.tensor([0, 4]),
                                torch.tensor([1]))  # fmt: skip
    with pytest.raises(ValueError, match="lr as a 1-element tensor"):
        weights_kernels.soft_select_bwd_weight(
            torch.zeros(1, 4), torch.zeros(10, 4), torch.ones(1, 4), torch.tensor([0, 10]),
            torch.tensor([1]), optimizer="sgd",
        )  # fmt: skip


def test_unchecked_out_of_range_ids_give_zero_rows_and_a_valid_sparse_grad(device):
    """check_ids=False (the GPU default): bad ids read nothing, and the sparse gradient's
    indices stay inside the table, so accumulating it never indexes past it."""
    torch.manual_seed(0)
    weight, alpha = torch.randn(10, 5, device=device), torch.rand(3, 5, device=device)
    boundaries = torch.tensor([0, 3, 6, 10], device=device)
    ids = torch.tensor([1, 10, 7, -1, 1], device=device)
    good = torch.tensor([True, False, True, False, True], device=device)
    dout = torch.randn(5, 5, device=device)
    w = weight.clone().requires_grad_()
    out = soft_select_lookup(
        w, alpha, boundaries, ids, backend="triton", sparse=True, check_ids=False
    )
    out.backward(dout)
    assert out[~good].eq(0).all()
    grad = w.grad.coalesce()
    assert int(grad.indices().min()) >= 0 and int(grad.indices().max()) < 10
    w_ref = weight.clone().requires_grad_()
    soft_select_lookup(w_ref, alpha, boundaries, ids[good], backend="reference").backward(
        dout[good]
    )
    torch.testing.assert_close(grad.to_dense(), w_ref.grad)
    torch.testing.assert_close(out[good], soft_select_lookup(weight, alpha, boundaries, ids[good]))


def test_launchers_refuse_a_mis_shaped_dout_and_strided_boundaries():
    weight, alpha = torch.randn(10, 5), torch.rand(3, 5)
    boundaries, ids = torch.tensor([0, 3, 6, 10]), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"dout must be a \(2, 5\) tensor with unit column stride"):
        kernels.soft_select_bwd_alpha(torch.ones(2, 4), weight, alpha, boundaries, ids)
    with pytest.raises(ValueError, match="dout must be"):
        weights_kernels.soft_select_bwd_weight(torch.ones(5, 2).t(), weight, alpha, boundaries, ids)
    with pytest.raises(ValueError, match="dout must be"):
        kernels.soft_select_bwd_rows(torch.ones(3, 5), weight, alpha, boundaries, ids)
    strided = torch.tensor([0, 0, 3, 3, 6, 6, 10, 10])[::2]
    with pytest.raises(ValueError, match="boundaries must be contiguous"):
        kernels.soft_select_fwd(weight, alpha, strided, ids)


# ------------------------------------------------------------------ per-id block map


def _with_map(weight, alpha, boundaries, ids, values, dout, *, seed=3):
    """The case with a random (unsorted) block map in place of the boundaries."""
    g = torch.Generator().manual_seed(seed)
    block_map = torch.randint(0, alpha.shape[0], (weight.shape[0],), generator=g)
    return weight, alpha, block_map.to(weight.device), ids, values, dout


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("need,with_values", [("a", False), ("av", True), ("wav", True)])
def test_block_map_variants_match_reference(device, name, need, with_values):
    weight, alpha, block_map, ids, values, dout = _with_map(*_case(**CASES[name], device=device))
    values = values if with_values else None
    kw = dict(l1=1e-3, normalize=True, need=need, block_map=block_map)
    want = _run_lookup("reference", weight, alpha, ids, values, dout, **kw)
    variants = [dict(deterministic=True), dict(deterministic=False), dict(sparse=True)]
    for extra in variants if "w" in need else variants[:1]:
        got = _run_lookup("triton", weight, alpha, ids, values, dout, **kw, **extra)
        for g, r, what in zip(got, want, ("out", "dweight", "dalpha", "dvalues")):
            _close(g, r, torch.float32, f"{name} {need} {extra} {what}")


def _run_lookup(backend, weight, alpha, ids, values, dout, *, need, block_map, **kw):
    w = weight.clone().requires_grad_("w" in need)
    a = alpha.clone().requires_grad_("a" in need)
    v = None if values is None else values.clone().requires_grad_("v" in need)
    out = soft_select_lookup(w, a, None, ids, v, block_map=block_map, backend=backend, **kw)
    out.backward(dout.to(out.dtype))
    grad = w.grad.to_dense() if w.grad is not None and w.grad.is_sparse else w.grad
    return out, grad, a.grad, None if v is None else v.grad


def test_block_map_half_table_and_fused_update(device, monkeypatch):
    monkeypatch.setattr(weights_kernels, "SEGMENT_CHUNK", 4)
    case = _with_map(*_case(30, 12, 3, (16,), hot=True, dtype=torch.float16, device=device))
    weight, alpha, block_map, ids, values, dout = case
    want = _run_lookup("reference", weight, alpha, ids, values, dout, need="wav",
                       block_map=block_map)  # fmt: skip
    got = _run_lookup("triton", weight, alpha, ids, values, dout, need="wav", block_map=block_map)
    for g, r, what in zip(got, want, ("out", "dweight", "dalpha", "dvalues")):
        _close(g, r, torch.float16, what)
    weight = weight.float()
    for kind in ("sgd", "rowwise_adagrad"):
        w = weight.clone().requires_grad_()
        opt = FusedOptimizer(w, kind, lr=0.3)
        want_w, want_state = weight.clone(), opt.state.clone()
        soft_select_lookup(w, alpha, None, ids, values, block_map=block_map, backend="triton",
                           fused_optimizer=opt).backward(dout)  # fmt: skip
        fused_update_reference(dout, want_w, alpha, None, ids, values, want_state, opt.lr, kind,
                               block_map=block_map)  # fmt: skip
        _close(w.detach(), want_w, torch.float32, f"{kind} weight")
        _close(opt.state, want_state, torch.float32, f"{kind} state")


def test_unchecked_block_map_values_are_clamped_never_read_out_of_bounds(device):
    """The launchers do not read the map's values (a host sync on a GPU): a corrupt entry
    is clamped into [0, L) in-kernel, so α is never read out of bounds."""
    weight, alpha = torch.randn(6, 4, device=device), torch.rand(2, 4, device=device)
    corrupt = torch.tensor([0, 7, -3, 1, 0, 1], device=device)
    ids = torch.tensor([1, 2, 3, 1], device=device)
    out = kernels.soft_select_fwd(weight, alpha, None, ids, block_map=corrupt)
    clamped = corrupt.clamp(0, 1)
    torch.testing.assert_close(out, weight[ids] * alpha[clamped[ids]])


def test_launchers_name_a_bad_block_map():
    weight, alpha, ids = torch.randn(6, 4), torch.rand(2, 4), torch.tensor([1, 2])
    bounds, block_map = torch.tensor([0, 3, 6]), torch.zeros(6, dtype=torch.long)
    for b, m, match in (
        (bounds, block_map, "exactly one of boundaries and block_map"),
        (None, None, "exactly one of boundaries and block_map"),
        (None, block_map[:5], r"block_map must be contiguous int64 \(N,\) = \(6,\)"),
        (None, block_map.int(), "block_map must be contiguous int64"),
        (None, torch.zeros(12, dtype=torch.long)[::2], "block_map must be contiguous int64"),
    ):
        with pytest.raises(ValueError, match=match):
            kernels.soft_select_fwd(weight, alpha, b, ids, block_map=m)
    with pytest.raises(ValueError, match="exactly one of boundaries and block_map"):
        weights_kernels.soft_select_bwd_weight(torch.ones(2, 4), weight, alpha, None, ids)


# ------------------------------------------------------- row-strided table and dout


def _strided(t, pad=3):
    """t (..., K) as the column slice [pad, pad + K) of a wider (..., K + 2·pad) tensor
    whose other columns are nan: unit column stride, row stride K + 2·pad. A kernel that
    read past the slice (a wrong row stride) would meet the nans."""
    shape = (*t.shape[:-1], t.shape[-1] + 2 * pad)
    wide = torch.full(shape, float("nan"), dtype=t.dtype, device=t.device)
    wide[..., pad : pad + t.shape[-1]] = t
    return wide[..., pad : pad + t.shape[-1]]


def _spy_launchers(monkeypatch):
    """Record (what, tensor) for the table and dout every launcher is handed."""
    seen = []

    def spy(module, name, *what):
        real = getattr(module, name)

        def wrapped(*args, **kw):
            seen.extend((w, args[i]) for i, w in enumerate(what) if w)
            return real(*args, **kw)

        monkeypatch.setattr(module, name, wrapped)

    spy(kernels, "soft_select_fwd", "weight")
    spy(kernels, "soft_select_bwd_alpha", "dout", "weight")
    spy(kernels, "soft_select_bwd_rows", "dout", "weight")
    spy(weights_kernels, "soft_select_bwd_weight", "dout", "weight")
    return seen


def _run_laid_out(backend, weight, alpha, boundaries, ids, values, dout, *, need, **kw):
    """_run with weight and dout as given (their layouts kept, not cloned contiguous)."""
    w = weight.requires_grad_("w" in need)
    a = alpha.clone().requires_grad_("a" in need)
    v = None if values is None else values.clone().requires_grad_("v" in need)
    out = soft_select_lookup(w, a, boundaries, ids, v, backend=backend, **kw)
    out.backward(dout)
    grad = w.grad.to_dense() if w.grad is not None and w.grad.is_sparse else w.grad
    return out, grad, a.grad, None if v is None else v.grad


@pytest.mark.parametrize("name", ["dup", "K1", "K24-L64", "hot-row", "empty", "one"])
def test_row_strided_table_and_dout_are_read_in_place(device, name, monkeypatch):
    """A table that is a column slice of a wider one and a dout that is a slice of a wider
    gradient reach the kernels themselves (same storage, no copy) and give the
    reference's forward and every gradient."""
    monkeypatch.setattr(weights_kernels, "SEGMENT_CHUNK", 4)
    weight, alpha, boundaries, ids, values, dout = _case(**CASES[name], device=device)
    kw = dict(l1=1e-3, need="wav")
    want = _run("reference", weight, alpha, boundaries, ids, values, dout, **kw)
    seen = _spy_launchers(monkeypatch)
    for extra in (dict(deterministic=True), dict(deterministic=False), dict(sparse=True)):
        w, d = _strided(weight.clone()), _strided(dout.clone())
        got = _run_laid_out("triton", w, alpha, boundaries, ids, values, d, **kw, **extra)
        for g, r, what in zip(got, want, ("out", "dweight", "dalpha", "dvalues")):
            _close(g, r, torch.float32, f"{name} {extra} {what}")
        handed = {"weight": w, "dout": d}
        assert seen, "no launcher ran"
        for what, t in seen:
            assert t.data_ptr() == handed[what].data_ptr(), f"{what} was copied ({extra})"
        seen.clear()


@pytest.mark.parametrize("kind", ["sgd", "rowwise_adagrad"])
@pytest.mark.parametrize("layout", ["column-slice", "column-major"])
def test_fused_optimizer_updates_a_strided_table_itself(device, kind, layout, monkeypatch):
    """The update lands in the caller's tensor: a column slice of a wider table in place
    (the other columns untouched), a column-major table through a copy written back."""
    monkeypatch.setattr(weights_kernels, "SEGMENT_CHUNK", 4)
    weight, alpha, boundaries, ids, values, dout = _case(15, 9, 3, (30,), hot=True, device=device)
    if layout == "column-slice":
        w = _strided(weight.clone())
    else:
        w = weight.t().contiguous().t()
        assert w.stride() == (1, 15)
    w.requires_grad_()
    a = alpha.clone().requires_grad_()
    opt = FusedOptimizer(w, kind, lr=0.3)
    want_w, want_state = weight.clone(), opt.state.clone()
    for step in range(2):
        soft_select_lookup(
            w, a, boundaries, ids, values, backend="triton", fused_optimizer=opt
        ).backward(_strided(dout))
        fused_update_reference(
            dout, want_w, alpha, boundaries, ids, values, want_state, opt.lr, kind
        )  # fmt: skip
        _close(w.detach(), want_w, torch.float32, f"{layout} weight after step {step}")
        _close(opt.state, want_state, torch.float32, f"{layout} state after step {step}")
    if layout == "column-slice":
        wide = w.detach().as_strided((15, 15), (15, 1), w.storage_offset() - 3)
        assert wide[:, :3].isnan().all() and wide[:, 12:].isnan().all()
    assert w.grad is None


# ----------------------------------------------------------------- sort keys


@pytest.mark.parametrize("name", ["dup", "hot-row", "K160", "one"])
def test_weights_step_sorts_int32_keys_and_gives_the_same_results_bitwise(device, name):
    """int32 and int64 ids (both sorted as int32 keys) give the same dense gradient and the
    same fused update, bit for bit, as the reference's within tolerance."""
    weight, alpha, boundaries, ids, values, dout = _case(**CASES[name], device=device)
    flat, d = ids.reshape(-1), dout.reshape(-1, weight.shape[1])
    assert weights_kernels.sort_keys(flat, weight.shape[0]).dtype == torch.int32
    assert weights_kernels.sort_keys(flat.int(), weight.shape[0]).dtype == torch.int32
    assert weights_kernels.sort_keys(flat, 2**31).dtype == torch.int64
    grads = [
        weights_kernels.soft_select_bwd_weight(d, weight, alpha, boundaries, i, values.reshape(-1))
        for i in (flat, flat.int())
    ]
    assert torch.equal(grads[0], grads[1])
    want = _run("reference", weight, alpha, boundaries, ids, values, dout, need="w")[1]
    _close(grads[0], want, torch.float32, "dweight")
    lr, updated = torch.tensor([0.3], device=device), []
    for i in (flat, flat.int()):
        w, state = weight.clone(), torch.zeros(weight.shape[0], device=device)
        weights_kernels.soft_select_bwd_weight(
            d, w, alpha, boundaries, i, None, optimizer="rowwise_adagrad", lr=lr, state=state
        )
        updated.append((w, state))
    assert torch.equal(updated[0][0], updated[1][0]) and torch.equal(updated[0][1], updated[1][1])


def test_int32_sort_keys_never_wrap_an_out_of_range_id_onto_a_row(device):
    """Unchecked int64 ids past int32 (2^32 + 3 would wrap to 3) stay out of range: they
    read and update nothing, the in-range ids' results unchanged bit for bit."""
    weight, alpha, boundaries, _, _, _ = _case(10, 4, 2, (1,), device=device)
    good = torch.tensor([3, 1, 3, 7, 0], device=device)
    bad = torch.tensor([2**32 + 3, -(2**32) + 1, 2**31, -1], device=device)
    ids = torch.cat([good[:2], bad[:2], good[2:], bad[2:]])
    dout = torch.randn(ids.numel(), 4, device=device)
    keep = torch.tensor([True, True, False, False, True, True, True, False, False])
    got = weights_kernels.soft_select_bwd_weight(dout, weight, alpha, boundaries, ids)
    want = weights_kernels.soft_select_bwd_weight(dout[keep], weight, alpha, boundaries, good)
    assert torch.equal(got, want)
    lr, w = torch.tensor([0.5], device=device), weight.clone()
    weights_kernels.soft_select_bwd_weight(dout, w, alpha, boundaries, ids, optimizer="sgd", lr=lr)
    untouched = torch.ones(10, dtype=torch.bool)
    untouched[good.cpu()] = False
    assert torch.equal(w[untouched.to(device)], weight[untouched.to(device)])


# ------------------------------------------------------------- stochastic rounding


def _neighbour_of(got, x):
    """Where got (fp16 / bf16) is one of the two representable neighbours of x (fp32):
    nearest(x) itself, or the value one encoding step away on the other side of x; an
    exactly representable x must come back unchanged."""
    nearest = x.to(got.dtype)
    step = (got.view(torch.int16).int() - nearest.view(torch.int16).int()).abs()
    across = (got.float() - x) * (nearest.float() - x) <= 0
    exact = nearest.float() == x
    return torch.where(exact, got == nearest, (got == nearest) | ((step == 1) & across))


def _assert_neighbours(got, x, what):
    ok = _neighbour_of(got, x)
    bad = (~ok).nonzero()
    assert ok.all(), f"{what}: {len(bad)} values are not a neighbour of fp32, first {bad[:4]}"


@pytest.mark.parametrize("kind", ["sgd", "rowwise_adagrad"])
@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=CUDA_ONLY)])
def test_stochastic_rounding_gives_a_neighbour_of_the_fp32_update(device, kind, dtype):
    """The fused update of a half table, stochastically rounded: every value is one of the
    two neighbours of the fp32 result (the same kernel on the table upcast to fp32), the
    rows not looked up unchanged, and some values differ from round-to-nearest."""
    if dtype == torch.bfloat16 and device == "cpu":
        pytest.skip("numpy (the interpreter) has no bfloat16")
    weight, alpha, boundaries, ids, values, dout = _case(40, 24, 3, (64,), hot=True, device=device)
    weight = (weight * 4).to(dtype)  # several binades, both signs
    ids = ids % 30  # rows 30.. are never looked up
    lr = torch.tensor([0.01], device=device)
    results = {}
    for name, w, rounding in (
        ("fp32", weight.float(), dict()),
        ("nearest", weight.clone(), dict()),
        ("stochastic", weight.clone(), dict(stochastic_rounding=True, seed=2024)),
    ):
        state = torch.zeros(40, device=device)
        weights_kernels.soft_select_bwd_weight(
            dout, w, alpha, boundaries, ids, values, optimizer=kind, lr=lr, state=state,
            **rounding,
        )  # fmt: skip
        results[name] = w
    x, got = results["fp32"], results["stochastic"]
    _assert_neighbours(got, x, kind)
    assert torch.equal(results["nearest"], x.to(dtype))
    assert torch.equal(got[30:], weight[30:])
    assert (got != results["nearest"]).any(), "nothing was rounded away from nearest"


def _small_steps(backend, dtype, steps, *, stochastic_rounding, device, seed=0):
    """A (64, 16) table of ones, SGD with lr·g = 1e-4 per value per step (below half an
    ulp of 1.0 in fp16 and bf16) on every row: the table after ``steps`` steps."""
    torch.manual_seed(seed)
    w = torch.ones(64, 16, dtype=dtype, device=device).requires_grad_()
    opt = FusedOptimizer(w, "sgd", lr=1e-4, stochastic_rounding=stochastic_rounding)
    alpha, bounds = torch.ones(1, 16, device=device), torch.tensor([0, 64], device=device)
    ids, dout = torch.arange(64, device=device), torch.ones(64, 16, device=device)
    for _ in range(steps):
        soft_select_lookup(w, alpha, bounds, ids, backend=backend, fused_optimizer=opt).backward(
            dout
        )
    return w.detach()


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_stochastic_rounding_is_unbiased_where_nearest_loses_the_update(device, backend):
    """Over 1024 values and 6 steps the mean change equals the fp32 update (6e-4) within
    4.5 standard deviations of the mean (2.2e-5 each); round-to-nearest keeps every 1.0."""
    steps, want = 6, 1.0 - 6e-4
    sr = _small_steps(backend, torch.float16, steps, stochastic_rounding=True, device=device)
    nearest = _small_steps(backend, torch.float16, steps, stochastic_rounding=False,
                           device=device)  # fmt: skip
    assert torch.equal(nearest, torch.ones_like(nearest)), "round-to-nearest kept an update"
    mean = float(sr.float().mean())
    assert abs(mean - want) < 1e-4, f"mean {mean} after {steps} steps, fp32 update gives {want}"


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_stochastic_rounding_is_reproducible_and_advances_per_update(device, backend):
    """torch.manual_seed fixes the rounding (the optimizer draws its key from torch's
    generator); another seed, or another step of the same run, draws differently."""
    runs = [
        _small_steps(backend, torch.float16, 2, stochastic_rounding=True, device=device, seed=s)
        for s in (5, 5, 6)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    # the same update of the same table on consecutive steps rounds differently
    torch.manual_seed(0)
    w = torch.ones(64, 16, dtype=torch.float16, device=device).requires_grad_()
    opt = FusedOptimizer(w, "sgd", lr=1e-4)
    alpha, bounds = torch.ones(1, 16, device=device), torch.tensor([0, 64], device=device)
    ids, dout = torch.arange(64, device=device), torch.ones(64, 16, device=device)
    after = []
    for _ in range(2):
        with torch.no_grad():
            w.fill_(1.0)
        soft_select_lookup(w, alpha, bounds, ids, backend=backend, fused_optimizer=opt).backward(
            dout
        )
        after.append(w.detach().clone())
    assert not torch.equal(after[0], after[1])
