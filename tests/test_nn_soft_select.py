"""SoftSelectEmbedding and its block boundaries."""

from __future__ import annotations

import pytest
import torch

from mixemb.nn import SoftSelectEmbedding, make_boundaries


def test_equal_blocks_cover_all_ids():
    assert make_boundaries(10, num_blocks=3).tolist() == [0, 4, 7, 10]
    assert make_boundaries(5, num_blocks=1).tolist() == [0, 5]
    assert make_boundaries(4, num_blocks=4).tolist() == [0, 1, 2, 3, 4]


def test_fractions_counts_thresholds():
    assert make_boundaries(100, fractions=[0.1, 0.3, 1.0]).tolist() == [0, 10, 30, 100]
    assert make_boundaries(100, fractions=[0.5]).tolist() == [0, 50, 100]
    assert make_boundaries(6, counts=[1, 2, 3]).tolist() == [0, 1, 3, 6]
    freq = torch.tensor([500, 120, 100, 40, 9, 3, 1])
    # >=100: ids 0-2; >=10: id 3; rest: ids 4-6
    assert make_boundaries(7, thresholds=[100, 10], frequencies=freq).tolist() == [0, 3, 4, 7]
    # an empty block (nothing seen >= 1000) is dropped
    got = make_boundaries(7, thresholds=[1000, 100], frequencies=freq).tolist()
    assert got == [0, 3, 7]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(), "exactly one"),
        (dict(num_blocks=2, counts=[1, 1]), "exactly one"),
        (dict(num_blocks=0), "num_blocks"),
        (dict(fractions=[0.5, 0.2]), "fractions"),
        (dict(counts=[3, 3]), "sum to 10"),
        (dict(thresholds=[10]), "frequencies"),
        (dict(thresholds=[1, 10], frequencies=torch.ones(10)), "decreasing"),
    ],
)
def test_bad_block_recipes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_boundaries(10, **kwargs)


def test_module_forward_scales_by_block_alpha():
    emb = SoftSelectEmbedding(10, 4, make_boundaries(10, num_blocks=2))
    with torch.no_grad():
        emb.alpha[1] = torch.tensor([1.0, 0.0, 0.5, 0.0])
    ids = torch.tensor([[1, 7]])
    out = emb(ids)
    assert out.shape == (1, 2, 4)
    torch.testing.assert_close(out[0, 0], emb.weight[1].detach())
    torch.testing.assert_close(out[0, 1], emb.weight[7].detach() * emb.alpha[1].detach())
    assert "blocks=2" in repr(emb)
    assert emb.alpha.shape == (2, 4) and bool((emb.alpha[0] == 1).all())


def test_module_trains_with_models():
    from mixemb.models import build_model

    emb = SoftSelectEmbedding(30, 8, make_boundaries(30, num_blocks=3), l1=1e-5)
    model = build_model("fm", 30, 3, 8, embedding=emb)
    ids = torch.randint(0, 30, (16, 3))
    model(ids).sum().backward()
    assert emb.weight.grad is not None and emb.alpha.grad is not None
    assert torch.isfinite(emb.alpha.grad).all()


@pytest.mark.parametrize("b", [[0, 5], [1, 10], [0, 6, 6, 10]])
def test_bad_boundaries(b):
    with pytest.raises(ValueError, match="boundaries"):
        SoftSelectEmbedding(10, 4, b)


@pytest.mark.slow
def test_compiles_without_graph_breaks_and_matches_eager():
    emb = SoftSelectEmbedding(100, 8, make_boundaries(100, num_blocks=4), l1=1e-3)
    ids = torch.randint(0, 100, (16, 3))
    compiled = torch.compile(lambda i: emb(i).square().sum(), fullgraph=True)
    compiled(ids).backward()
    grads = emb.weight.grad.clone(), emb.alpha.grad.clone()
    emb.zero_grad(set_to_none=True)
    emb(ids).square().sum().backward()
    torch.testing.assert_close(grads[0], emb.weight.grad)
    torch.testing.assert_close(grads[1], emb.alpha.grad)


@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_module_fused_optimizer_trains_and_saves_state(device, backend):
    torch.manual_seed(0)
    emb = SoftSelectEmbedding(30, 8, [0, 10, 30], backend=backend).to(device)
    opt = emb.use_fused_optimizer("rowwise_adagrad", lr=0.5)
    ids = torch.randint(0, 30, (40,), device=device)
    target = torch.randn(40, 8, device=device)
    losses = []
    for _ in range(5):
        loss = (emb(ids) - target).square().mean()
        loss.backward()
        losses.append(float(loss.detach()))
        emb.alpha.grad = None
    assert losses[-1] < losses[0]
    assert emb.weight.grad is None
    assert "fused_state" in emb.state_dict() and float(emb.fused_state.sum()) > 0
    opt.set_lr(0.0)
    before = emb.weight.detach().clone()
    emb(ids).sum().backward()
    assert torch.equal(emb.weight.detach(), before)
    assert "fused='rowwise_adagrad'" in repr(emb)
