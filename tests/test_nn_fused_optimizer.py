"""mixemb.nn.FusedOptimizer: the state of the in-backward table update."""

from __future__ import annotations

import pytest
import torch

from mixemb.nn import FusedOptimizer


@pytest.mark.parametrize("kind,rows", [("sgd", 0), ("rowwise_adagrad", 6)])
def test_state_lives_on_the_table_device(device, kind, rows):
    opt = FusedOptimizer(torch.zeros(6, 3, device=device), kind, lr=0.25, eps=1e-6)
    assert opt.state.shape == (rows,) and opt.state.dtype == torch.float32
    assert opt.lr.device.type == opt.state.device.type == device
    assert float(opt.lr) == 0.25 and opt.eps == 1e-6
    opt.set_lr(0.5)
    assert float(opt.lr) == 0.5
    assert repr(opt) == f"FusedOptimizer({kind!r}, lr=0.5, eps=1e-06, stochastic_rounding=True)"


def test_state_dict_round_trip_and_mismatch():
    opt = FusedOptimizer(torch.zeros(4, 2), "rowwise_adagrad", lr=0.1)
    opt.state.fill_(3.0)
    other = FusedOptimizer(torch.zeros(4, 2), "rowwise_adagrad", lr=0.9, eps=1e-3)
    other.load_state_dict(opt.state_dict())
    assert torch.equal(other.state, opt.state) and float(other.lr) == pytest.approx(0.1)
    assert other.eps == opt.eps
    with pytest.raises(ValueError, match="state is for 'rowwise_adagrad'"):
        FusedOptimizer(torch.zeros(4, 2), "sgd").load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="state shape"):
        FusedOptimizer(torch.zeros(5, 2), "rowwise_adagrad").load_state_dict(opt.state_dict())


def test_rejects_bad_settings():
    w = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="kind must be"):
        FusedOptimizer(w, "adam")
    with pytest.raises(ValueError, match="lr must be"):
        FusedOptimizer(w, lr=-1.0)


def test_rounding_is_stochastic_for_half_tables_only_and_advances_its_seed():
    opt = FusedOptimizer(torch.zeros(4, 2, dtype=torch.float16))
    again = FusedOptimizer(torch.zeros(4, 2, dtype=torch.float16))
    assert opt.rounding(torch.float32) == (False, 0) and opt.rounding(torch.float64) == (False, 0)
    assert opt.seed is None  # nothing drawn until a stochastic update
    torch.manual_seed(11)
    first, second = opt.rounding(torch.float16), opt.rounding(torch.bfloat16)
    torch.manual_seed(11)
    again.rounding(torch.float16)
    assert opt.seed == again.seed  # drawn from torch's default generator
    assert first == (True, opt.seed) and second == (True, opt.seed + 1)
    assert opt.updates == 2


def test_an_fp32_table_leaves_the_callers_random_stream_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    opt = FusedOptimizer(torch.zeros(4, 2))
    opt.rounding(torch.float32)
    torch.testing.assert_close(torch.rand(3), expected)
    off = FusedOptimizer(torch.zeros(4, 2, dtype=torch.bfloat16), stochastic_rounding=False)
    assert off.rounding(torch.bfloat16) == (False, 0) and off.updates == 0


def test_state_dict_keeps_the_rounding_stream():
    opt = FusedOptimizer(torch.zeros(4, 2), "rowwise_adagrad", stochastic_rounding=False)
    opt.rounding(torch.float16)
    opt.seed, opt.updates = 1234, 7
    other = FusedOptimizer(torch.zeros(4, 2), "rowwise_adagrad")
    other.load_state_dict(opt.state_dict())
    assert (other.seed, other.updates, other.stochastic_rounding) == (1234, 7, False)


def test_embedding_passes_the_rounding_choice():
    from mixemb import SoftSelectEmbedding

    emb = SoftSelectEmbedding(10, 4, [0, 4, 10])
    assert emb.use_fused_optimizer("sgd").stochastic_rounding
    assert not emb.use_fused_optimizer("sgd", stochastic_rounding=False).stochastic_rounding
