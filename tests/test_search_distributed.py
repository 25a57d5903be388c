"""Data-parallel dnis: 2 gloo ranks under torchrun (``process_group=WORLD``) equal one
process on the concatenated batches, the α step normalizes the averaged gradient (not the
average of normalized ones), every rank ends identical and resumes from rank 0's
checkpoint, and what cannot be averaged (DDP wrapping, a fused optimizer, sparse
gradients, unequal shards) is a one-line ValueError on every rank. With
``process_group=None`` the initialized default group changes nothing: each rank is one
process on its own batches.

The ranks run this file as a script (``torchrun --standalone --nproc_per_node 2
test_search_distributed.py OUT``) and save what they hold to OUT; the tests compare it
with one process here.

Tolerance: TOL = 1e-5 (absolute, on parameters of size ~1). The two runs do the same math
but sum each gradient in a different order (two half batches averaged vs one batch): fp32
rounding, ~1e-7 a step, which the 24 steps here keep near 2e-7 — TOL leaves a 40× margin,
while the wrong α-gradient order is off by > 100·TOL after a single step.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from mixemb.nn import SoftSelectEmbedding
from mixemb.nn.searchable import searchable, searchable_modules
from mixemb.reference import normalize_alpha_grad
from mixemb.search import DnisStep, dnis
from mixemb.search.distributed import resolve_group
from mixemb.train.checkpoint import CheckpointError

WORLD, TOL, TIMEOUT = 2, 1e-5, 240
USERS, ITEMS, DIM, ROWS = 40, 30, 6, 32  # ROWS: one rank's batch size
SEARCH = dict(epochs=3, warmup_epochs=1, lr=1e-2, alpha_lr=0.05, l1=1e-3, patience=5)


class Net(nn.Module):
    """head([user ; mean of 3 items]): an nn.Embedding, an nn.EmbeddingBag and a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.user = nn.Embedding(USERS, DIM)
        self.items = nn.EmbeddingBag(ITEMS, DIM, mode="mean")
        self.head = nn.Linear(2 * DIM, 1)

    def forward(self, user, items):
        return self.head(torch.cat([self.user(user), self.items(items)], 1)).squeeze(1)


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out - y).pow(2).mean()


def _data(batches: int, seed: int) -> list:
    """``batches`` joined batches of WORLD·ROWS rows: ((user, items (n, 3)), target)."""
    g = torch.Generator().manual_seed(seed)
    n = batches * WORLD * ROWS
    user = torch.randint(0, USERS, (n,), generator=g)
    items = torch.randint(0, ITEMS, (n, 3), generator=g)
    y = (
        torch.sin(user.float())
        + torch.cos(items.float()).mean(1)
        + 0.1 * torch.randn(n, generator=g)
    )
    size = WORLD * ROWS
    return [((user[s : s + size], items[s : s + size]), y[s : s + size]) for s in range(0, n, size)]


def _shard(joined: list, rank: int) -> list:
    """Rank ``rank``'s part of every joined batch: its concatenation over ranks is the batch."""
    part = slice(rank * ROWS, (rank + 1) * ROWS)
    return [((u[part], i[part]), y[part]) for (u, i), y in joined]


TRAIN, VALID = _data(6, 1), _data(3, 2)


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return searchable(Net(), num_blocks=3)


def _alpha_start(model: nn.Module) -> None:
    """α inside (0, 1), so one α step moves it both ways without reaching the clamp."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for twin in searchable_modules(model).values():
            twin.alpha.copy_(0.3 + 0.4 * torch.rand(twin.alpha.shape, generator=g))


def _expect_error(run) -> str:
    try:
        run()
    except ValueError as err:
        return str(err)
    return "no error"


def _one_alpha_step(model: nn.Module, batch, group, **rates) -> dict[str, torch.Tensor]:
    """α of every twin after one α step of a fresh DnisStep over ``group`` from the
    frequencies and α of ``_alpha_start``."""
    for twin in searchable_modules(model).values():
        twin.set_frequencies(torch.arange(twin.num_embeddings))
    _alpha_start(model)
    DnisStep(model, mse, process_group=group, **rates).alpha_step(batch)
    return {n: t.alpha.detach() for n, t in searchable_modules(model).items()}


def _refusals(train, valid, rank: int) -> dict[str, str]:
    """The error each refused search raises on this rank ('no error' where none)."""
    quiet = dict(epochs=1, log=print, process_group=dist.group.WORLD)
    ddp = nn.parallel.DistributedDataParallel(_model(0))
    fused = _model(0)
    fused.ids = SoftSelectEmbedding(USERS, DIM, [0, USERS])
    fused.ids.use_fused_optimizer("sgd", lr=0.1)
    sparse = _model(0)
    sparse.extra = nn.Embedding(USERS, DIM, sparse=True)
    sparse.forward = lambda user, items: Net.forward(sparse, user, items) + sparse.extra(user)[:, 0]
    uneven = train[: len(train) - rank]
    return {
        "ddp": _expect_error(lambda: dnis(ddp, train, valid, mse, **quiet)),
        "fused": _expect_error(lambda: DnisStep(fused, mse, process_group=dist.group.WORLD)),
        "sparse": _expect_error(lambda: dnis(sparse, train, valid, mse, **quiet)),
        "uneven": _expect_error(lambda: dnis(_model(0), uneven, valid, mse, **quiet)),
    }


def worker(out: Path) -> None:
    """One rank: a search, a stopped-and-resumed search, one α step, the refusals."""
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    train, valid = _shard(TRAIN, rank), _shard(VALID, rank)
    saved = {}
    search = dict(SEARCH, process_group=dist.group.WORLD)

    lines = []  # each rank starts from other parameters: dnis copies rank 0's
    model = _model(seed=rank)
    result = dnis(model, train, valid, mse, checkpoint=out / "full.pt", log=lines.append, **search)
    saved.update(full=model.state_dict(), history=result.history, lines=lines)

    part = dict(search, epochs=SEARCH["epochs"] - 1)
    resumed = _model(seed=rank)  # as the full run
    dnis(resumed, train, valid, mse, checkpoint=out / "part.pt", log=print, **part)
    resumed = _model(seed=20 + rank)
    dnis(resumed, train, valid, mse, checkpoint=out / "part.pt", resume=True, **search, log=print)
    saved["resumed"] = resumed.state_dict()

    rates = dict(alpha_lr=SEARCH["alpha_lr"], l1=SEARCH["l1"])
    saved["alpha_step"] = _one_alpha_step(_model(seed=rank), valid[0], dist.group.WORLD, **rates)

    # process_group=None under the initialized default group: one process a rank (its own
    # α step, no copy of rank 0's parameters, its own counts and log)
    alone = {"alpha_step": _one_alpha_step(_model(seed=0), valid[0], None, **rates)}
    own = _model(seed=10 + rank)
    alone["one_process"] = DnisStep(own, mse).group is None
    alone["own"] = own.state_dict()
    alone["lines"] = []
    dnis(_model(seed=rank), train, valid, mse, epochs=1, log=alone["lines"].append)
    saved["alone"] = alone

    saved["errors"] = _refusals(train, valid, rank)
    torch.save(saved, out / f"rank{rank}.pt")
    gc.collect()  # the refused DDP wrapper's reducer goes before the group it was built on
    dist.barrier()  # no rank tears the group down while another still uses it
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> tuple[list[dict], Path]:
    """What each of the 2 ranks saved, and the folder of rank 0's checkpoints."""
    out = tmp_path_factory.mktemp("ranks")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={WORLD}", __file__, str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers: this session only
        proc.communicate()
        pytest.fail(f"torchrun did not finish within {TIMEOUT} s (a hang)")
    assert proc.returncode == 0, output[-4000:]
    saved = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return saved, out


def _max_diff(a: dict, b: dict) -> tuple[float, str]:
    diffs = {k: float((a[k].double() - b[k].double()).abs().max()) for k in a}
    key = max(diffs, key=diffs.get)
    return diffs[key], key


def test_two_ranks_equal_one_process_on_the_joined_batches(ranks):
    saved, _ = ranks
    one = _model(seed=0)
    lines = []
    result = dnis(one, TRAIN, VALID, mse, log=lines.append, **SEARCH)
    want = one.state_dict()
    for rank in range(WORLD):
        got = saved[rank]["full"]
        assert got.keys() == want.keys()
        diff, key = _max_diff(got, want)
        assert diff <= TOL, f"rank {rank}: {key} differs by {diff:.2e} from one process"
        assert any(not torch.equal(got[k], torch.ones_like(got[k])) for k in got if "alpha" in k)
    for key, value in saved[0]["full"].items():  # identical ranks, bit for bit
        assert torch.equal(value, saved[1]["full"][key]), key
    for mine, theirs in zip(saved[0]["history"], result.history):
        assert mine["valid_loss"] == pytest.approx(theirs["valid_loss"], rel=1e-5)
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
    assert _strip(saved[0]["history"]) == _strip(saved[1]["history"])  # the same decisions
    assert len(result.history) == len(saved[0]["history"])
    counted = "dnis: counted id frequencies of user, items over 12 batches"  # 6 a rank
    assert saved[0]["lines"][0] == counted and len(saved[0]["lines"]) == len(lines)
    assert saved[1]["lines"] == []  # rank 0 logs, alone


def _strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_alpha_step_normalizes_the_averaged_gradient(ranks):
    """One α step on the ranks equals normalize(mean of the raw shard gradients) — the
    joined batch's — and is far from the mean of the normalized shard gradients."""
    saved, _ = ranks
    l1, lr = SEARCH["l1"], SEARCH["alpha_lr"]
    model = _model(seed=0)
    for twin in searchable_modules(model).values():
        twin.set_frequencies(torch.arange(twin.num_embeddings))
        twin.l1 = l1
    _alpha_start(model)
    twins = searchable_modules(model)

    def alpha_grads(batch) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        (x, y) = batch
        mse(model(*x), y).backward()
        return {n: t.alpha.grad.clone() for n, t in twins.items()}

    joined = alpha_grads(VALID[0])
    shards = [alpha_grads(_shard(VALID, r)[0]) for r in range(WORLD)]
    for twin in twins.values():
        twin.normalize, twin.l1 = False, 0.0
    raw = [alpha_grads(_shard(VALID, r)[0]) for r in range(WORLD)]
    for name, twin in twins.items():
        alpha = twin.alpha.detach()
        right = normalize_alpha_grad(sum(g[name] for g in raw) / WORLD, alpha, l1, twin.eps)
        wrong = sum(g[name] for g in shards) / WORLD
        torch.testing.assert_close(right, joined[name], rtol=0, atol=TOL)
        got = saved[0]["alpha_step"][name]
        torch.testing.assert_close(got, (alpha - lr * right).clamp(0, 1), rtol=0, atol=TOL)
        wrong_step = (alpha - lr * wrong).clamp(0, 1)
        assert float((got - wrong_step).abs().max()) > 100 * TOL, name
        assert torch.equal(got, saved[1]["alpha_step"][name])


def test_resumed_from_rank_0_checkpoint_equals_uninterrupted(ranks):
    saved, out = ranks
    for rank in range(WORLD):
        for key, value in saved[rank]["full"].items():
            assert torch.equal(value, saved[rank]["resumed"][key]), (rank, key)
    state = torch.load(out / "full.pt", weights_only=True)
    assert state["config"]["world_size"] == WORLD and len(state["rank_rng"]) == WORLD
    with pytest.raises(CheckpointError, match="world_size"):  # one process, two ranks' file
        dnis(_model(0), TRAIN, VALID, mse, checkpoint=out / "full.pt", resume=True, **SEARCH)


@pytest.mark.parametrize(
    "case, match",
    [
        ("ddp", r"model is wrapped in DistributedDataParallel"),
        ("fused", r"ids updates its table with a fused optimizer"),
        ("sparse", r"extra.weight has a sparse gradient"),
        ("uneven", r"train_data must have the same number of batches on every rank, got 5 to 6"),
    ],
)
def test_what_cannot_be_averaged_is_a_one_line_error_on_every_rank(ranks, case, match):
    saved, _ = ranks
    for rank in range(WORLD):
        message = saved[rank]["errors"][case]
        assert "\n" not in message
        assert re.search(match, message), (rank, message)


def test_process_group_none_under_an_initialized_default_group_is_one_process(ranks):
    """Each rank's process_group=None step is the one-process step on its own shard: no
    averaging, no copy of rank 0's parameters, its own id counts and log lines."""
    saved, _ = ranks
    rates = dict(alpha_lr=SEARCH["alpha_lr"], l1=SEARCH["l1"])
    counted = "dnis: counted id frequencies of user, items over 6 batches"  # its own 6
    for rank in range(WORLD):
        alone = saved[rank]["alone"]
        assert alone["one_process"], rank
        want = _one_alpha_step(_model(seed=0), _shard(VALID, rank)[0], None, **rates)
        for name, alpha in want.items():
            torch.testing.assert_close(alone["alpha_step"][name], alpha, rtol=0, atol=TOL)
        own = _model(seed=10 + rank).state_dict()
        assert all(torch.equal(alone["own"][k], v) for k, v in own.items()), rank
        assert alone["lines"][0] == counted, (rank, alone["lines"])
    first, second = (saved[r]["alone"]["alpha_step"] for r in range(WORLD))
    assert max(float((first[n] - second[n]).abs().max()) for n in first) > 100 * TOL


def test_process_group_none_without_torch_distributed_is_one_process():
    assert not dist.is_initialized()
    assert resolve_group(None) is None
    with pytest.raises(ValueError, match="process_group must be a torch.distributed"):
        DnisStep(_model(0), mse, process_group="gloo")


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
