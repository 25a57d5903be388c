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
    assert repr(opt) == f"FusedOptimizer({kind!r}, lr=0.5, eps=1e-06)"


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
