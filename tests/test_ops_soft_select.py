"""soft_select_lookup (reference backend) vs autograd of the unfused expression."""

from __future__ import annotations

import pytest
import torch

from mixemb.ops import soft_select_lookup


def _unfused(weight, alpha, boundaries, ids, values, l1, eps, normalize):
    """Autograd of E[ids] ⊙ α[block(ids)] (⊙ v); α grad post-processed as the op documents."""
    blocks = torch.searchsorted(boundaries, ids.long(), right=True) - 1
    out = weight[ids.long()] * alpha[blocks]
    if values is not None:
        out = out * values.unsqueeze(-1)
    return out


def _case(n, k, num_blocks, shape, *, hot=False, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=g, dtype=dtype)
    alpha = torch.rand(num_blocks, k, generator=g, dtype=dtype)
    cuts = torch.sort(torch.randperm(n - 1, generator=g)[: num_blocks - 1] + 1).values
    boundaries = torch.cat([torch.tensor([0]), cuts, torch.tensor([n])]).long()
    ids = torch.randint(0, n, shape, generator=g)
    if hot and ids.numel():
        ids.view(-1)[: ids.numel() * 3 // 4] = 0  # one row takes most lookups
    return weight, alpha, boundaries, ids


CASES = [
    dict(n=20, k=8, num_blocks=4, shape=(6, 3)),
    dict(n=20, k=1, num_blocks=2, shape=(5,)),
    dict(n=33, k=3, num_blocks=1, shape=(7, 2)),  # one block, K odd
    dict(n=64, k=24, num_blocks=64, shape=(9, 4)),  # L=64: one row per block
    dict(n=10, k=5, num_blocks=3, shape=(40,), hot=True),  # duplicates, a hot row
    dict(n=10, k=5, num_blocks=3, shape=(0, 3)),  # empty batch
    dict(n=10, k=5, num_blocks=3, shape=(1, 1)),  # one lookup
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"n{c['n']}k{c['k']}L{c['num_blocks']}")
@pytest.mark.parametrize("with_values", [False, True])
@pytest.mark.parametrize("normalize,l1", [(False, 0.0), (True, 0.0), (True, 1e-3), (False, 1e-2)])
def test_forward_and_grads_match_unfused(case, with_values, normalize, l1):
    weight, alpha, boundaries, ids = _case(**case)
    values = torch.rand(ids.shape, dtype=weight.dtype) if with_values else None
    dout = torch.randn(*ids.shape, weight.shape[1], dtype=weight.dtype)
    eps = 1e-8

    w1, a1 = weight.clone().requires_grad_(), alpha.clone().requires_grad_()
    v1 = values.clone().requires_grad_() if values is not None else None
    out = soft_select_lookup(w1, a1, boundaries, ids, v1, normalize=normalize, l1=l1, eps=eps)
    out.backward(dout)

    w2, a2 = weight.clone().requires_grad_(), alpha.clone().requires_grad_()
    v2 = values.clone().requires_grad_() if values is not None else None
    ref = _unfused(w2, a2, boundaries, ids, v2, l1, eps, normalize)
    ref.backward(dout)
    g = a2.grad + l1 * torch.sign(alpha)  # L1 term inside, then per-row normalization
    if normalize:
        g = g / (g.abs().mean(1, keepdim=True) + eps)

    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(w1.grad, w2.grad)
    torch.testing.assert_close(a1.grad, g.to(alpha.dtype))
    if values is not None:
        torch.testing.assert_close(v1.grad, v2.grad)


def test_sparse_weight_grad_equals_dense_and_int32_ids():
    weight, alpha, boundaries, ids = _case(30, 6, 3, (8, 3), hot=True)
    dout = torch.randn(8, 3, 6, dtype=weight.dtype)
    w1 = weight.clone().requires_grad_()
    soft_select_lookup(w1, alpha, boundaries, ids.int(), sparse=True).backward(dout)
    assert w1.grad.is_sparse
    w2 = weight.clone().requires_grad_()
    soft_select_lookup(w2, alpha, boundaries, ids).backward(dout)
    torch.testing.assert_close(w1.grad.to_dense(), w2.grad)


def test_gradcheck_float64():
    weight, alpha, boundaries, ids = _case(6, 3, 2, (4, 2), hot=True)
    values = torch.rand(4, 2, dtype=torch.float64)
    fn = lambda w, v: soft_select_lookup(w, alpha, boundaries, ids, v)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (weight.requires_grad_(), values.requires_grad_()))
    # α's gradient is normalized on purpose, so gradcheck applies only with normalize off.
    fa = lambda a: soft_select_lookup(weight.detach(), a, boundaries, ids, normalize=False)  # noqa: E731
    assert torch.autograd.gradcheck(fa, (alpha.clone().requires_grad_(),))


def test_normalized_rows_have_unit_mean_magnitude():
    weight, alpha, boundaries, ids = _case(100, 16, 5, (200,))
    ids[:150] = torch.arange(150) % 20  # block 0 gets far more lookups than the others
    a = alpha.clone().requires_grad_()
    soft_select_lookup(weight, a, boundaries, ids).sum().backward()
    used = torch.unique(torch.searchsorted(boundaries, ids, right=True) - 1)
    torch.testing.assert_close(a.grad[used].abs().mean(1), torch.ones(len(used), dtype=a.dtype))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(alpha=torch.ones(2, 5)), "alpha must be"),
        (dict(boundaries=torch.tensor([0, 10])), "boundaries must be"),
        (dict(boundaries=torch.tensor([0, 5, 10], dtype=torch.int32)), "int64"),
        (dict(ids=torch.zeros(3)), "ids must be int32 or int64"),
        (dict(values=torch.ones(4)), "values must match"),
        (dict(backend="cuda-magic"), "backend must be"),
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
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        soft_select_lookup(**args, backend=backend)
