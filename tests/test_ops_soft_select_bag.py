"""mixemb.ops.soft_select_bag: the fused bag op (both backends) against its unfused
reference (lookup, then F.embedding_bag) — forward, the table's gradient, α's normalized
gradient and the per-sample weights' — over the named edge cases, modes sum and mean,
boundaries and block maps, padding; the registered ops (opcheck, gradcheck, compile);
the Triton launchers' index, determinism and argument errors.

On this CPU machine backend="triton" runs the kernels in Triton's interpreter (conftest
sets TRITON_INTERPRET=1), so shapes stay tiny; on a GPU the same bodies run on CUDA.
"""

from __future__ import annotations

import pytest
import torch

from mixemb.kernels import soft_select_bag as kernels
from mixemb.kernels import soft_select_weights as weights_kernels
from mixemb.kernels.soft_select import INTERPRET
from mixemb.ops import soft_select_pooled as ops
from mixemb.ops.soft_select_pooled import bag_of_lookups, soft_select_bag
from mixemb.reference import normalize_alpha_grad, soft_select_bag_reference

HAS_CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(
    not (HAS_CUDA or INTERPRET), reason="needs CUDA or TRITON_INTERPRET=1"
)
# the kernels reorder sums (per-bag chunks, per-block one-hot matmul, id runs before the
# α scale): fp32 agrees to a few ulps of the summed magnitude, fp64 to rounding
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float64: dict(atol=1e-12, rtol=1e-10)}
L1, EPS = 1e-3, 1e-8

# bag sizes (the last bag of 40 crosses the kernels' 32-lookup chunk); tail: lookups past
# the last offset (nn.EmbeddingBag's include_last_offset drops them)
CASES = {
    "dup-empty-bag": dict(n=20, k=8, num_blocks=4, sizes=[3, 0, 5, 6]),
    "K5-hot-long-bag": dict(n=10, k=5, num_blocks=3, sizes=[2, 40, 1, 7], hot=True),
    "K1": dict(n=20, k=1, num_blocks=2, sizes=[4, 3]),
    "K3-one-block": dict(n=33, k=3, num_blocks=1, sizes=[5, 5, 2]),
    "K24-L64": dict(n=64, k=24, num_blocks=64, sizes=[9, 4, 11]),
    "K160": dict(n=12, k=160, num_blocks=3, sizes=[6, 3], hot=True),
    "one": dict(n=10, k=5, num_blocks=3, sizes=[1]),
    "empty-input": dict(n=10, k=5, num_blocks=3, sizes=[0, 0, 0]),
    "no-bags": dict(n=10, k=5, num_blocks=3, sizes=[]),
    "tail": dict(n=10, k=5, num_blocks=2, sizes=[3, 2], tail=4),
}


def _case(n, k, num_blocks, sizes, *, hot=False, tail=0, seed=0, dtype=torch.float32, device="cpu"):
    """weight, alpha, boundaries, block_map (an unsorted map), ids, offsets (B+1,), psw,
    dout (B, K)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=g, dtype=dtype)
    alpha = torch.rand(num_blocks, k, generator=g, dtype=dtype)
    cuts = torch.sort(torch.randperm(n - 1, generator=g)[: num_blocks - 1] + 1).values
    boundaries = torch.cat([torch.tensor([0]), cuts, torch.tensor([n])]).long()
    block_map = torch.randint(0, num_blocks, (n,), generator=g)
    m = sum(sizes) + tail
    ids = torch.randint(0, n, (m,), generator=g)
    if hot and m:
        ids[: m * 3 // 4] = 0  # one row takes most lookups
        ids = ids[torch.randperm(m, generator=g)]
    offsets = torch.tensor([0, *sizes]).cumsum(0)
    psw = torch.rand(m, generator=g, dtype=dtype)
    dout = torch.randn(len(sizes), k, generator=g, dtype=dtype)
    t = (weight, alpha, boundaries, block_map, ids, offsets, psw, dout)
    return [x.to(device) for x in t]


def _step(fn, weight, alpha, psw, dout):
    """(out, dweight, dalpha, dpsw) of fn(w, a, v) · dout; dpsw None without psw."""
    w, a = weight.clone().requires_grad_(), alpha.clone().requires_grad_()
    v = None if psw is None else psw.clone().requires_grad_()
    out = fn(w, a, v)
    out.backward(dout.to(out.dtype))
    return out.detach(), w.grad, a.grad, None if v is None else v.grad


def _bag(fn, bounds, ids, offsets, **kw):
    """fn(w, a, v): the bag op (or its reference) with everything else fixed."""
    return lambda w, a, v: fn(w, a, bounds, ids, offsets, v, **kw)


def _want(weight, alpha, bounds, ids, offsets, psw, dout, **kw):
    """The reference's step, α's gradient normalized as the op does (L1 inside)."""
    bag = _bag(soft_select_bag_reference, bounds, ids, offsets, **kw)
    out, dw, da, dv = _step(bag, weight, alpha, psw, dout)
    return out, dw, normalize_alpha_grad(da, alpha, L1, EPS), dv


def _close(got, want, dtype, what):
    for g, r, name in zip(got, want, ("out", "dweight", "dalpha", "dpsw")):
        assert (g is None) == (r is None), f"{what} {name}"
        if g is not None:
            torch.testing.assert_close(g, r, **TOL[dtype], msg=f"{what} {name}")


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("mode,with_psw", [("sum", False), ("sum", True), ("mean", False)])
@pytest.mark.parametrize("by_map", [False, True])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_forward_and_every_gradient_match_reference(device, name, mode, with_psw, by_map, backend):
    weight, alpha, boundaries, block_map, ids, offsets, psw, dout = _case(
        **CASES[name], device=device
    )
    bounds, bm = (None, block_map) if by_map else (boundaries, None)
    psw = psw if with_psw else None
    for pad in (None, int(ids[0]) if ids.numel() else 0):
        kw = dict(mode=mode, padding_idx=pad, block_map=bm)
        want = _want(weight, alpha, bounds, ids, offsets, psw, dout, **kw)
        bag = _bag(soft_select_bag, bounds, ids, offsets, l1=L1, backend=backend, **kw)
        got = _step(bag, weight, alpha, psw, dout)
        _close(got, want, torch.float32, f"{name} {mode} psw={with_psw} pad={pad}")
        if pad is not None and ids.numel():
            assert not got[1][pad].any(), "the padding row got a gradient"


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_only_the_needed_gradients_and_int32_ids(device, mode):
    case = _case(**CASES["dup-empty-bag"], device=device)
    weight, alpha, boundaries, _, ids, offsets, psw, dout = case
    psw = psw if mode == "sum" else None
    want = _want(weight, alpha, boundaries, ids, offsets, psw, dout, mode=mode)
    for need in ("w", "a", "v"):
        if need == "v" and psw is None:
            continue
        w = weight.clone().requires_grad_(need == "w")
        a = alpha.clone().requires_grad_(need == "a")
        v = None if psw is None else psw.clone().requires_grad_(need == "v")
        out = soft_select_bag(
            w, a, boundaries, ids.int(), offsets.int(), v, mode=mode, l1=L1, backend="triton"
        )
        out.backward(dout)
        got = {"w": w.grad, "a": a.grad, "v": None if v is None else v.grad}
        torch.testing.assert_close(got[need], want["wav".index(need) + 1], **TOL[torch.float32])
        assert all(g is None for k, g in got.items() if k != need), need


def test_weights_step_crosses_chunk_edges_and_is_bitwise_reproducible(device, monkeypatch):
    """A hot id's run over many 3-lookup chunks (carries over several tiles of 2)."""
    monkeypatch.setattr(weights_kernels, "SEGMENT_CHUNK", 3)
    monkeypatch.setattr(weights_kernels, "CARRY_TILE", 2)
    weight, alpha, boundaries, _, ids, offsets, psw, dout = _case(
        **CASES["K5-hot-long-bag"], device=device
    )
    want = _want(weight, alpha, boundaries, ids, offsets, psw, dout)
    bag = _bag(soft_select_bag, boundaries, ids, offsets, l1=L1, backend="triton")
    runs = [_step(bag, weight, alpha, psw, dout) for _ in range(2)]
    _close(runs[0], want, torch.float32, "chunked")
    for x, y in zip(*runs):
        assert torch.equal(x, y)


def test_index_kernel_matches_bag_of_lookups(device):
    """Each lookup's bag (2 = none: padding id 4, or past the last offset) and mean's counts."""
    weight = torch.randn(10, 3, device=device)
    ids = torch.tensor([1, 4, 2, 4, 7, 0, 4, 1, 3], device=device)
    offsets = torch.tensor([0, 3, 5], device=device)
    bag_of, counts = kernels.soft_select_bag_index(weight, ids, offsets, mode="mean", padding_idx=4)
    assert bag_of.tolist() == [0, 2, 0, 2, 1, 2, 2, 2, 2]
    assert torch.equal(bag_of.long(), bag_of_lookups(ids, offsets, 4))
    assert counts.tolist() == [2.0, 1.0]


def test_unchecked_out_of_range_ids_read_and_count_nothing(device):
    weight, alpha, boundaries = torch.randn(6, 3), torch.rand(2, 3), torch.tensor([0, 2, 6])
    weight, alpha, boundaries = weight.to(device), alpha.to(device), boundaries.to(device)
    ids = torch.tensor([1, 6, 4, -1, 5], device=device)
    offsets = torch.tensor([0, 2, 5], device=device)
    out = soft_select_bag(
        weight, alpha, boundaries, ids, offsets, mode="mean", backend="triton", check_ids=False
    )
    want = torch.stack([weight[1] * alpha[0], (weight[4] + weight[5]) * alpha[1] / 2])
    torch.testing.assert_close(out, want)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_gradcheck_float64(backend, mode):
    weight, alpha, boundaries, _, ids, offsets, psw, _ = _case(
        6, 3, 2, [3, 0, 4], hot=True, dtype=torch.float64
    )
    psw = psw if mode == "sum" else None

    def fn(w, a, *v):
        # α's gradient is normalized on purpose, so gradcheck applies with normalize off
        return soft_select_bag(
            w,
            a,
            boundaries,
            ids,
            offsets,
            *v,
            mode=mode,
            padding_idx=2,
            normalize=False,
            backend=backend,
        )

    args = [weight.requires_grad_(), alpha.requires_grad_()]
    if psw is not None:
        args.append(psw.requires_grad_())
    assert torch.autograd.gradcheck(fn, tuple(args))


def test_gradcheck_float64_registered_op():
    weight, alpha, _, block_map, ids, offsets, psw, _ = _case(
        6, 3, 3, [2, 5], hot=True, dtype=torch.float64
    )

    def fn(w, a, v):
        return torch.ops.mixemb.soft_select_bag(
            w, a, None, ids, offsets, v, "sum", 1, False, 0.0, 1e-8, block_map
        )

    args = (weight.requires_grad_(), alpha.requires_grad_(), psw.requires_grad_())
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("by_map", [False, True])
def test_opcheck_every_op(device, by_map):
    weight, alpha, boundaries, block_map, ids, offsets, psw, dout = _case(
        12, 5, 3, [4, 0, 6], hot=True, device=device
    )
    bounds, bm = (None, (block_map,)) if by_map else (boundaries, ())
    for req in (False, True):
        w, a = weight.clone().requires_grad_(req), alpha.clone().requires_grad_(req)
        for v, mode in ((None, "sum"), (psw, "sum"), (None, "mean")):
            torch.library.opcheck(
                ops.soft_select_bag_forward,
                (w, a, bounds, ids, offsets, v, mode, 3, True, 1e-3, 1e-8, *bm),
            )
    for need in ((True, True, True), (False, True, False), (True, False, False)):
        torch.library.opcheck(
            ops.soft_select_bag_backward,
            (
                dout,
                weight,
                alpha,
                bounds,
                ids,
                offsets,
                psw,
                "sum",
                -1,
                *need,
                True,
                0.0,
                1e-8,
                *bm,
            ),
        )


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_torch_compile_fullgraph_matches_eager(backend):
    torch._dynamo.reset()
    weight, alpha, _, block_map, ids, offsets, psw, _ = _case(12, 5, 3, [4, 0, 6], hot=True)

    def step(w, a, v):
        out = soft_select_bag(
            w, a, None, ids, offsets, v, block_map=block_map, padding_idx=0, l1=L1, backend=backend
        )
        return out.square().sum()

    compiled = _step(
        torch.compile(step, fullgraph=True, backend="aot_eager"),
        weight,
        alpha,
        psw,
        torch.tensor(1.0),
    )
    eager = _step(step, weight, alpha, psw, torch.tensor(1.0))
    _close(compiled, eager, torch.float32, "compiled")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mode="max"), r"mode must be one of \('sum', 'mean'\) \(max: soft_select_lookup"),
        (dict(mode="mean", per_sample_weights=True), "per_sample_weights need mode 'sum'"),
        (dict(offsets=[1, 3, 5]), r"offsets\[0\] must be 0, got 1"),
        (dict(offsets=[0, 3, 2]), "offsets must be non-decreasing"),
        (dict(offsets=[0, 6]), r"offsets\[-1\] = 6 is past the 5 ids"),
        (dict(offsets=[]), r"offsets must be \(B\+1,\) int32/int64, got \(0,\)"),
        (dict(offsets=[0.0, 5.0]), r"offsets must be \(B\+1,\) int32/int64"),
        (dict(ids=[[1, 2]]), r"ids must be 1-D \(M,\), got shape \(1, 2\)"),
        (dict(padding_idx=6), r"padding_idx must be in \[-6, 6\), got 6"),
        (dict(ids=[1, 2, 3, 4, 6]), r"ids\[4\] \(flattened\) = 6 is outside"),
        (dict(backend="cuda"), "backend must be one of"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    weight, alpha, boundaries = torch.randn(6, 3), torch.rand(2, 3), torch.tensor([0, 2, 6])
    args = dict(ids=[1, 2, 3, 4, 5], offsets=[0, 2, 5], per_sample_weights=None)
    args.update(kwargs)
    ids, offsets = torch.tensor(args.pop("ids")), torch.tensor(args.pop("offsets"))
    if args["per_sample_weights"] is True:
        args["per_sample_weights"] = torch.ones(ids.shape)
    with pytest.raises(ValueError, match=match):
        soft_select_bag(weight, alpha, boundaries, ids, offsets, **args)


def test_launchers_name_bad_bag_arguments():
    weight, alpha, boundaries = torch.randn(6, 3), torch.rand(2, 3), torch.tensor([0, 2, 6])
    ids, offsets = torch.tensor([1, 2, 3]), torch.tensor([0, 1, 3])
    with pytest.raises(ValueError, match="offsets must be contiguous int64"):
        kernels.soft_select_bag_fwd(weight, alpha, boundaries, ids, offsets.int())
    with pytest.raises(ValueError, match="mode must be one of"):
        kernels.soft_select_bag_fwd(weight, alpha, boundaries, ids, offsets, mode="max")
    with pytest.raises(ValueError, match="per_sample_weights need mode 'sum'"):
        kernels.soft_select_bag_fwd(
            weight, alpha, boundaries, ids, offsets, torch.ones(3), mode="mean"
        )
    with pytest.raises(ValueError, match=r"dout must be a \(2, 3\) tensor with unit column stride"):
        kernels.soft_select_bag_bwd_weight(
            torch.ones(3, 3), weight, alpha, boundaries, ids, offsets
        )
    with pytest.raises(ValueError, match=r"dout must be a \(2, 3\) tensor with unit column stride"):
        kernels.soft_select_bag_bwd_alpha(
            torch.ones(3, 2).t(), weight, alpha, boundaries, ids, offsets
        )


def _column_slice(t, pad=2):
    """t (R, K) as the columns [pad, pad + K) of a wider (R, K + 2·pad) tensor of nans."""
    wide = torch.full((t.shape[0], t.shape[1] + 2 * pad), float("nan"), dtype=t.dtype,
                      device=t.device)  # fmt: skip
    wide[:, pad : pad + t.shape[1]] = t
    return wide[:, pad : pad + t.shape[1]]


@pytest.mark.parametrize("name", ["dup-empty-bag", "K5-hot-long-bag", "K1", "one", "no-bags"])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_row_strided_table_and_dout_match_reference_without_copies(
    device, name, backend, monkeypatch
):
    """A table that is a column slice of a wider one and a dout sliced from a wider
    gradient: the reference's results, and the kernels get those tensors themselves."""
    weight, alpha, boundaries, _, ids, offsets, psw, dout = _case(**CASES[name], device=device)
    want = _want(weight, alpha, boundaries, ids, offsets, psw, dout)
    seen = []
    for launcher, at in (("soft_select_bag_fwd", 0), ("soft_select_bag_bwd_alpha", 1),
                         ("soft_select_bag_bwd_weight", 1)):  # fmt: skip
        real = getattr(kernels, launcher)

        def spy(*args, _real=real, _at=at, **kw):
            seen.append((args[_at], args[0] if _at else None))
            return _real(*args, **kw)

        monkeypatch.setattr(kernels, launcher, spy)
    w, d = _column_slice(weight.clone()).requires_grad_(), _column_slice(dout.clone())
    a, v = alpha.clone().requires_grad_(), psw.clone().requires_grad_()
    out = soft_select_bag(w, a, boundaries, ids, offsets, v, l1=L1, backend=backend)
    out.backward(d)
    _close((out.detach(), w.grad, a.grad, v.grad), want, torch.float32, name)
    assert bool(seen) == (backend == "triton")
    for table, grad in seen:
        assert table.data_ptr() == w.data_ptr(), "the table was copied"
        assert grad is None or grad.data_ptr() == d.data_ptr(), "dout was copied"
