"""mixemb.ops.soft_select: the public op against autograd of the unfused expression, its
registered ops (opcheck, gradcheck, their autograd), the eager path against the
registered one, the PT2 story (torch.compile fullgraph, torch.export), argument errors,
and one table looked up several times in a step with a fused optimizer.

The Triton kernels against the reference are tests/test_kernels_soft_select.py.
"""

from __future__ import annotations

import pytest
import torch

from mixemb import SoftSelectEmbedding
from mixemb.nn import FusedOptimizer
from mixemb.ops import soft_select as ops
from mixemb.ops import soft_select_lookup
from mixemb.reference import (
    block_of,
    fused_update_reference,
    normalize_alpha_grad,
    reference_alpha_values_grad,
    soft_select_lookup_reference,
)


def _case(n, k, num_blocks, shape, *, hot=False, seed=0, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=g, dtype=dtype)
    alpha = torch.rand(num_blocks, k, generator=g, dtype=dtype)
    cuts = torch.sort(torch.randperm(n - 1, generator=g)[: num_blocks - 1] + 1).values
    boundaries = torch.cat([torch.tensor([0]), cuts, torch.tensor([n])]).long()
    ids = torch.randint(0, n, shape, generator=g)
    if hot and ids.numel():
        ids.view(-1)[: ids.numel() * 3 // 4] = 0  # one row takes most lookups
    return [t.to(device) for t in (weight, alpha, boundaries, ids)]


# the named edge cases: several blocks with duplicates, K = 1, one block with K odd,
# L = 64 (one row per block), a hot row, an empty batch, one lookup, one table row
CASES = {
    "dup": dict(n=20, k=8, num_blocks=4, shape=(6, 3)),
    "K1": dict(n=20, k=1, num_blocks=2, shape=(5,)),
    "K3-one-block": dict(n=33, k=3, num_blocks=1, shape=(7, 2)),
    "K24-L64": dict(n=64, k=24, num_blocks=64, shape=(9, 4)),
    "hot-row": dict(n=10, k=5, num_blocks=3, shape=(40,), hot=True),
    "empty": dict(n=10, k=5, num_blocks=3, shape=(0, 3)),
    "one": dict(n=10, k=5, num_blocks=3, shape=(1, 1)),
    "one-row-table": dict(n=1, k=6, num_blocks=1, shape=(4,)),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("with_values", [False, True])
@pytest.mark.parametrize("normalize,l1", [(False, 0.0), (True, 0.0), (True, 1e-3), (False, 1e-2)])
def test_forward_and_grads_match_unfused(device, name, with_values, normalize, l1):
    weight, alpha, boundaries, ids = _case(**CASES[name], device=device)
    values = torch.rand(ids.shape, dtype=weight.dtype, device=device) if with_values else None
    dout = torch.randn(*ids.shape, weight.shape[1], dtype=weight.dtype, device=device)
    eps = 1e-8

    w1, a1 = weight.clone().requires_grad_(), alpha.clone().requires_grad_()
    v1 = values.clone().requires_grad_() if values is not None else None
    kw = dict(normalize=normalize, l1=l1, eps=eps, backend="reference")
    out = soft_select_lookup(w1, a1, boundaries, ids, v1, **kw)
    out.backward(dout)

    w2, a2 = weight.clone().requires_grad_(), alpha.clone().requires_grad_()
    v2 = values.clone().requires_grad_() if values is not None else None
    ref = soft_select_lookup_reference(w2, a2, boundaries, ids, v2)
    ref.backward(dout)
    if normalize:
        g = normalize_alpha_grad(a2.grad, alpha, l1, eps)
    else:
        g = a2.grad + l1 * torch.sign(alpha)

    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(w1.grad, w2.grad)
    torch.testing.assert_close(a1.grad, g)
    if values is not None:
        torch.testing.assert_close(v1.grad, v2.grad)


def _step(lookup, weight, alpha, boundaries, ids, values, dout, need="wav", **kw):
    """(out, dweight dense, dalpha, dvalues) of one forward + backward through ``lookup``."""
    w = weight.clone().requires_grad_("w" in need)
    a = alpha.clone().requires_grad_("a" in need)
    v = None if values is None else values.clone().requires_grad_("v" in need)
    out = lookup(w, a, boundaries, ids, v, **kw)
    out.backward(dout)
    dw = w.grad.to_dense() if w.grad is not None and w.grad.is_sparse else w.grad
    return out.detach(), dw, a.grad, None if v is None else v.grad


def _registered(w, a, b, ids, v, *, sparse=False, deterministic=True):
    return torch.ops.mixemb.soft_select(w, a, b, ids, v, True, 1e-3, 1e-8, sparse, deterministic)


@pytest.mark.parametrize("name", ["dup", "hot-row", "empty", "K3-one-block"])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("need", ["wav", "a", "v", "w"])
def test_eager_path_equals_the_registered_op_bitwise(device, name, sparse, need):
    """soft_select_lookup's eager path skips the dispatcher, not the math: the same
    implementation behind torch.ops.mixemb.soft_select and its registered autograd."""
    weight, alpha, boundaries, ids = _case(**CASES[name], dtype=torch.float32, device=device)
    values = torch.rand(ids.shape, device=device)
    dout = torch.randn(*ids.shape, weight.shape[1], device=device)
    args = (weight, alpha, boundaries, ids, values, dout)
    got = _step(soft_select_lookup, *args, need=need, l1=1e-3, sparse=sparse, backend="triton")
    want = _step(_registered, *args, need=need, sparse=sparse)
    for x, y, what in zip(got, want, ("out", "dweight", "dalpha", "dvalues")):
        assert (x is None) == (y is None), what
        assert x is None or torch.equal(x, y), what


def test_eager_calls_take_the_autograd_function_not_the_dispatcher():
    weight, alpha, boundaries, ids = _case(**CASES["dup"])
    for backend in ("reference", "triton"):
        out = soft_select_lookup(weight.requires_grad_(), alpha, boundaries, ids, backend=backend)
        assert type(out.grad_fn).__name__ == "_SoftSelectBackward"
    registered = _registered(weight, alpha, boundaries, ids, None)
    assert "mixemb_soft_select" in type(registered.grad_fn).__name__


def test_sparse_weight_grad_equals_dense_and_int32_ids(device):
    weight, alpha, boundaries, ids = _case(30, 6, 3, (8, 3), hot=True, device=device)
    dout = torch.randn(8, 3, 6, dtype=weight.dtype, device=device)
    w1 = weight.clone().requires_grad_()
    soft_select_lookup(w1, alpha, boundaries, ids.int(), sparse=True).backward(dout)
    assert w1.grad.is_sparse
    w2 = weight.clone().requires_grad_()
    soft_select_lookup(w2, alpha, boundaries, ids).backward(dout)
    torch.testing.assert_close(w1.grad.to_dense(), w2.grad)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_gradcheck_float64(backend):
    weight, alpha, boundaries, ids = _case(6, 3, 2, (4, 2), hot=True)
    values = torch.rand(4, 2, dtype=torch.float64)

    def fn(w, a, v):
        # α's gradient is normalized on purpose, so gradcheck applies with normalize off
        return soft_select_lookup(w, a, boundaries, ids, v, normalize=False, backend=backend)

    args = (weight.requires_grad_(), alpha.requires_grad_(), values.requires_grad_())
    assert torch.autograd.gradcheck(fn, args)


def test_gradcheck_float64_registered_op():
    weight, alpha, boundaries, ids = _case(6, 3, 2, (4, 2), hot=True)
    values = torch.rand(4, 2, dtype=torch.float64)

    def fn(w, a, v):
        return torch.ops.mixemb.soft_select(w, a, boundaries, ids, v, False, 0.0, 1e-8, False, True)

    args = (weight.requires_grad_(), alpha.requires_grad_(), values.requires_grad_())
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("by_map", [False, True])
def test_opcheck_every_op(device, by_map):
    make = _map_case if by_map else _case
    weight, alpha, blocks, ids = make(12, 5, 3, (4, 3), hot=True, dtype=torch.float32,
                                      device=device)  # fmt: skip
    # the block of an id from boundaries, or from the trailing block_map argument
    boundaries, bm = (None, (blocks,)) if by_map else (blocks, ())
    values = torch.rand(ids.shape, device=device)
    dout = torch.randn(*ids.shape, 5, device=device)
    for req in (False, True):
        w, a = weight.clone().requires_grad_(req), alpha.clone().requires_grad_(req)
        for v in (None, values):
            for sparse in (False, True):
                torch.library.opcheck(
                    ops.soft_select,
                    (w, a, boundaries, ids, v, True, 1e-3, 1e-8, sparse, True, *bm),
                )
    torch.library.opcheck(
        ops.soft_select_backward_alpha,
        (dout, weight, alpha, boundaries, ids, values, True, True, 0.0, 1e-8, *bm),
    )
    for sparse in (False, True):
        torch.library.opcheck(
            ops.soft_select_backward_weight,
            (dout, weight, alpha, boundaries, ids, values, sparse, True, *bm),
        )
    state, lr = torch.zeros(12, device=device), torch.tensor([0.1], device=device)
    torch.library.opcheck(
        ops.soft_select_fused_update_,
        (dout, weight.clone(), alpha, boundaries, ids, values, state, lr, "rowwise_adagrad",
         1e-8, *bm),
    )  # fmt: skip
    # an fp16 table rounded stochastically (the seed a runtime int)
    torch.library.opcheck(
        ops.soft_select_fused_update_,
        (dout, weight.half(), alpha, boundaries, ids, values, state, lr, "sgd", 1e-8, *bm),
        dict(stochastic_rounding=True, seed=12345),
    )  # fmt: skip


def test_normalized_rows_have_unit_mean_magnitude():
    weight, alpha, boundaries, ids = _case(100, 16, 5, (200,))
    ids[:150] = torch.arange(150) % 20  # block 0 gets far more lookups than the others
    a = alpha.clone().requires_grad_()
    soft_select_lookup(weight, a, boundaries, ids).sum().backward()
    used = torch.unique(torch.searchsorted(boundaries, ids, right=True) - 1)
    torch.testing.assert_close(a.grad[used].abs().mean(1), torch.ones(len(used), dtype=a.dtype))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_torch_compile_fullgraph_and_export(backend):
    torch._dynamo.reset()
    emb = SoftSelectEmbedding(20, 6, [0, 5, 20], backend=backend)
    ids = torch.tensor([[0, 3, 19], [0, 0, 7]])

    def step(ids):
        return emb(ids).square().sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(ids)
    loss.backward()
    want = SoftSelectEmbedding(20, 6, [0, 5, 20], backend=backend)
    want.load_state_dict(emb.state_dict())
    want(ids).square().sum().backward()
    torch.testing.assert_close(loss, want(ids).square().sum())
    torch.testing.assert_close(emb.alpha.grad, want.alpha.grad)
    torch.testing.assert_close(emb.weight.grad, want.weight.grad)
    exported = torch.export.export(emb, (ids,))
    torch.testing.assert_close(exported.module()(ids), emb(ids))
    called = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert ("mixemb.soft_select.default" in called) == (backend == "triton"), called


def test_fused_optimizer_updates_the_table_and_gives_alpha_its_grad(device):
    weight, alpha, boundaries, ids = _case(15, 9, 3, (30,), hot=True, dtype=torch.float32,
                                           device=device)  # fmt: skip
    dout = torch.randn(30, 9, device=device)
    want = _step(soft_select_lookup, weight, alpha, boundaries, ids, None, dout, need="wa")
    w = weight.clone().requires_grad_()
    a = alpha.clone().requires_grad_()
    opt = FusedOptimizer(w, "sgd", lr=0.5)
    soft_select_lookup(w, a, boundaries, ids, fused_optimizer=opt).backward(dout)
    assert w.grad is None
    torch.testing.assert_close(w.detach(), weight - 0.5 * want[1])  # dense SGD, one step
    torch.testing.assert_close(a.grad, want[2])  # from the table before the update


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_backend_uses_triton_on_cuda(monkeypatch):
    from mixemb.kernels import soft_select as kernels

    calls = []
    real = kernels.soft_select_fwd
    monkeypatch.setattr(
        kernels, "soft_select_fwd", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    w, a, b, ids = _case(10, 4, 2, (3,), dtype=torch.float32, device="cuda")
    soft_select_lookup(w, a, b, ids)
    assert calls


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(alpha=torch.ones(2, 5)), "alpha must be"),
        (dict(boundaries=torch.tensor([0, 10])), "boundaries must be"),
        (dict(boundaries=torch.tensor([0, 5, 10], dtype=torch.int32)), "int64"),
        # once silently put ids in the wrong block
        (dict(boundaries=torch.tensor([0, 11, 10])), "strictly increasing, got \\[0, 11, 10\\]"),
        (dict(boundaries=torch.tensor([0, 5, 12])), "run from 0 to N=10, got"),
        (dict(boundaries=torch.tensor([-1, 5, 10])), "run from 0 to N=10"),
        (dict(boundaries=torch.tensor([0, 0, 10])), "strictly increasing"),
        (dict(ids=torch.zeros(3)), "ids must be int32 or int64"),
        (dict(values=torch.ones(4)), "values must match"),
        (dict(backend="cuda-magic"), "backend must be"),
        (dict(ids=torch.tensor([1, 10])), r"ids\[1\] \(flattened\) = 10 is outside"),
        (dict(sparse=True, fused=True), "sparse must be False"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    args = dict(
        weight=torch.ones(10, 4),
        alpha=torch.ones(2, 4),
        boundaries=torch.tensor([0, 5, 10]),
        ids=torch.tensor([1, 2, 3]),
        values=None,
    )
    backend = kwargs.pop("backend", "auto")
    if kwargs.pop("fused", False):
        kwargs["fused_optimizer"] = FusedOptimizer(args["weight"])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        soft_select_lookup(**args, backend=backend)


def test_embedding_rejects_bad_boundaries_at_construction_and_load():
    """SoftSelectEmbedding checks its boundaries where they are set, so the CUDA forward
    (which cannot read them without a host sync) never sees an unchecked one."""
    with pytest.raises(ValueError, match="strictly increasing"):
        SoftSelectEmbedding(10, 4, [0, 6, 3, 10])
    emb = SoftSelectEmbedding(10, 4, [0, 3, 10])
    state = emb.state_dict()
    for bad, match in (([0, 11, 10], "strictly increasing"), ([0, 3, 9], "run from 0 to N=10")):
        with pytest.raises(ValueError, match=f"boundaries in the state: .*{match}"):
            emb.load_state_dict({**state, "boundaries": torch.tensor(bad)})
    assert emb.boundaries.tolist() == [0, 3, 10]  # nothing was copied in
    emb.load_state_dict({**state, "boundaries": torch.tensor([0, 4, 10])})
    assert emb.boundaries.tolist() == [0, 4, 10]


# ------------------------------------------------------------------ per-id block map


def _map_case(n, k, num_blocks, shape, *, hot=False, seed=0, dtype=torch.float64, device="cpu"):
    """_case with a random per-id block map instead of boundaries; with L > 1 the last
    block gets no ids (a block no lookup touches)."""
    weight, alpha, _, ids = _case(n, k, num_blocks, shape, hot=hot, seed=seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 1)
    block_map = torch.randint(0, max(num_blocks - 1, 1), (n,), generator=g)
    return [t.to(device) for t in (weight, alpha, block_map, ids)]


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("with_values", [False, True])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_block_map_forward_and_grads_match_unfused(device, name, with_values, backend):
    weight, alpha, block_map, ids = _map_case(**CASES[name], device=device)
    values = torch.rand(ids.shape, dtype=weight.dtype, device=device) if with_values else None
    dout = torch.randn(*ids.shape, weight.shape[1], dtype=weight.dtype, device=device)
    l1, eps = 1e-3, 1e-8

    def lookup(w, a, _, ids, v):
        return soft_select_lookup(w, a, None, ids, v, block_map=block_map, l1=l1, backend=backend)

    def unfused(w, a, _, ids, v):
        return soft_select_lookup_reference(w, a, None, ids, v, block_map=block_map)

    got = _step(lookup, weight, alpha, None, ids, values, dout)
    want = _step(unfused, weight, alpha, None, ids, values, dout)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    torch.testing.assert_close(got[2], normalize_alpha_grad(want[2], alpha, l1, eps))
    if with_values:
        torch.testing.assert_close(got[3], want[3])
    if alpha.shape[0] > 1:  # the block no id maps to: zero gradient, then only the L1 term
        h = l1 * torch.sign(alpha[-1])
        torch.testing.assert_close(got[2][-1], h / (h.abs().mean() + eps))


@pytest.mark.parametrize("name", ["dup", "hot-row", "empty", "K3-one-block"])
@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("sparse", [False, True])
def test_block_map_of_the_boundaries_gives_the_same_results_bitwise(device, name, backend, sparse):
    """A block map that puts every id in its boundaries' block is the same op."""
    weight, alpha, boundaries, ids = _case(**CASES[name], dtype=torch.float32, device=device)
    block_map = block_of(torch.arange(weight.shape[0], device=device), boundaries)
    values = torch.rand(ids.shape, device=device)
    dout = torch.randn(*ids.shape, weight.shape[1], device=device)
    kw = dict(l1=1e-3, sparse=sparse, backend=backend)

    def by_map(w, a, _, ids, v, **kw):
        return soft_select_lookup(w, a, None, ids, v, block_map=block_map, **kw)

    got = _step(by_map, weight, alpha, None, ids, values, dout, **kw)
    want = _step(soft_select_lookup, weight, alpha, boundaries, ids, values, dout, **kw)
    for x, y, what in zip(got, want, ("out", "dweight", "dalpha", "dvalues")):
        assert torch.equal(x, y), what
    w1, w2 = weight.clone(), weight.clone()
    opt1, opt2 = FusedOptimizer(w1, "rowwise_adagrad"), FusedOptimizer(w2, "rowwise_adagrad")
    if not sparse:
        by_map(w1.requires_grad_(), alpha, None, ids, values, fused_optimizer=opt1,
               backend=backend).backward(dout)  # fmt: skip
        soft_select_lookup(w2.requires_grad_(), alpha, boundaries, ids, values,
                           fused_optimizer=opt2, backend=backend).backward(dout)  # fmt: skip
        assert torch.equal(w1, w2) and torch.equal(opt1.state, opt2.state)


def test_block_map_registered_op_gradcheck_and_compile():
    weight, alpha, block_map, ids = _map_case(6, 3, 3, (4, 2), hot=True)
    values = torch.rand(4, 2, dtype=torch.float64)

    def fn(w, a, v):
        return torch.ops.mixemb.soft_select(
            w, a, None, ids, v, False, 0.0, 1e-8, False, True, block_map
        )

    args = (weight.requires_grad_(), alpha.requires_grad_(), values.requires_grad_())
    assert torch.autograd.gradcheck(fn, args)
    torch._dynamo.reset()

    def step(w, a):
        return soft_select_lookup(w, a, None, ids, block_map=block_map, backend="triton").sum()

    w1, a1 = weight.detach().clone().requires_grad_(), alpha.detach().clone().requires_grad_()
    torch.compile(step, fullgraph=True, backend="aot_eager")(w1, a1).backward()
    w2, a2 = weight.detach().clone().requires_grad_(), alpha.detach().clone().requires_grad_()
    step(w2, a2).backward()
    torch.testing.assert_close(a1.grad, a2.grad)
    torch.testing.assert_close(w1.grad, w2.grad)


@pytest.mark.parametrize(
    "block_map,boundaries,match",
    [
        (torch.tensor([0, 1, 2, 0, 1]), None, r"block_map\[2\] = 2 is outside the blocks \[0, 2\)"),
        (torch.tensor([0, 1, -1, 0, 1]), None, r"block_map\[2\] = -1 is outside"),
        (torch.tensor([0, 1, 1, 0]), None, r"block_map must be \(N,\) = \(5,\), got \(4,\)"),
        (torch.tensor([0.0, 1, 1, 0, 1]), None, "block_map must be int64, got torch.float32"),
        (torch.tensor([0, 1, 1, 0, 1], dtype=torch.int32), None, "block_map must be int64"),
        (torch.tensor([0, 1, 1, 0, 1]), torch.tensor([0, 2, 5]), "exactly one of boundaries"),
        (None, None, "exactly one of boundaries"),
    ],
)
def test_bad_block_map_is_named(block_map, boundaries, match):
    with pytest.raises(ValueError, match=match):
        soft_select_lookup(torch.ones(5, 3), torch.ones(2, 3), boundaries, torch.tensor([0, 2]),
                           block_map=block_map)  # fmt: skip


def test_a_call_checks_the_block_map_entries_it_looks_up():
    """Per call, O(M): the entries the ids look up (the whole map, O(N), is checked where a
    twin sets or loads it)."""
    weight, alpha, block_map = torch.ones(5, 3), torch.ones(2, 3), torch.tensor([0, 1, 0, 7, 1])
    with pytest.raises(ValueError, match=r"block_map\[3\] = 7 is outside the blocks \[0, 2\)"):
        soft_select_lookup(weight, alpha, None, torch.tensor([4, 3, 3]), block_map=block_map)
    out = soft_select_lookup(weight, alpha, None, torch.tensor([0, 4]), block_map=block_map)
    assert torch.equal(out, torch.ones(2, 3))


# ------------------------------------------------- one table, several lookups, fused update


def _fused_lookups_reference(weight, alpha, boundaries, lookups, kind, lr, l1):
    """The documented rule, step by step: the lookups' backward calls in reverse forward
    order, each computing its α and values gradients from the table as the earlier ones
    left it, then applying its own update. Returns (table, state, dalpha, [dvalues])."""
    w, k = weight.clone(), weight.shape[1]
    state = torch.zeros(weight.shape[0] if kind == "rowwise_adagrad" else 0, device=w.device)
    dalpha, dvalues = torch.zeros_like(alpha), [None] * len(lookups)
    for i in reversed(range(len(lookups))):
        ids, values, dout = lookups[i]
        da, dv = reference_alpha_values_grad(
            dout.reshape(-1, k), w, alpha, boundaries, ids.reshape(-1), values.reshape(-1),
            True, True, True, l1, 1e-8,
        )  # fmt: skip
        dalpha, dvalues[i] = dalpha + da, dv.reshape(ids.shape)
        fused_update_reference(dout.reshape(-1, k), w, alpha, boundaries, ids.reshape(-1),
                               values.reshape(-1), state, lr, kind)  # fmt: skip
    return w, state, dalpha, dvalues


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("kind", ["sgd", "rowwise_adagrad"])
def test_a_table_looked_up_three_times_in_one_step_with_a_fused_optimizer(device, backend, kind):
    """Three lookups of one table sharing rows (a hot row in all three): one backward
    applies three updates and α's gradient follows the documented rule."""
    weight, alpha, boundaries, ids = _case(15, 6, 3, (12,), hot=True, dtype=torch.float32,
                                           device=device)  # fmt: skip
    g = torch.Generator().manual_seed(4)
    id_sets = [ids, torch.randint(0, 15, (4, 2), generator=g).to(device), ids[:5]]
    lookups = [
        (i, torch.rand(i.shape, generator=g).to(device),
         torch.randn(*i.shape, 6, generator=g).to(device))
        for i in id_sets
    ]  # fmt: skip
    w, a = weight.clone().requires_grad_(), alpha.clone().requires_grad_()
    opt = FusedOptimizer(w, kind, lr=0.3)
    vs = [v.clone().requires_grad_() for _, v, _ in lookups]
    outs = [
        soft_select_lookup(w, a, boundaries, i, v, l1=1e-3, backend=backend, fused_optimizer=opt)
        for (i, _, _), v in zip(lookups, vs)
    ]
    for out, (i, v, _) in zip(outs, lookups):  # every forward read the forward's table
        torch.testing.assert_close(out, soft_select_lookup_reference(weight, alpha, boundaries,
                                                                     i, v))  # fmt: skip
    sum((out * d).sum() for out, (_, _, d) in zip(outs, lookups)).backward()
    want_w, want_state, want_da, want_dv = _fused_lookups_reference(
        weight, alpha, boundaries, lookups, kind, opt.lr, 1e-3
    )
    tol = dict(atol=2e-5, rtol=2e-5)
    assert w.grad is None
    torch.testing.assert_close(w.detach(), want_w, **tol)
    torch.testing.assert_close(opt.state, want_state, **tol)
    torch.testing.assert_close(a.grad, want_da, **tol)
    for got, want in zip(vs, want_dv):
        torch.testing.assert_close(got.grad, want, **tol)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_a_fused_update_bumps_the_table_version_for_other_autograd_users(device, backend):
    """Another op that saved the table for its backward sees the in-place update as any
    in-place write: autograd's error, not stale values (both backends alike)."""
    weight, alpha, boundaries, ids = _case(10, 4, 2, (6,), dtype=torch.float32, device=device)
    w = weight.clone().requires_grad_()
    opt = FusedOptimizer(w, "sgd", lr=0.1)
    loss = (
        w.square().sum()
        + soft_select_lookup(w, alpha, boundaries, ids, backend=backend, fused_optimizer=opt).sum()
    )  # the lookup's backward runs first (created last), then square's
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
