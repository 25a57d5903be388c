"""DNIS on a user's own model: α stays in [0, 1] and moves, the validation loss falls, ids
are counted, a resumed run equals an uninterrupted one, a planted table keeps its signal
dims, bad arguments are one-line errors, and a hand-written loop of DnisStep equals dnis."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mixemb.nn.searchable import searchable, searchable_modules
from mixemb.search import DnisResult, DnisStep, dnis
from mixemb.search.any_model import count_ids
from mixemb.train.checkpoint import CheckpointError
from mixemb.train.loop import TrainingDiverged

USERS, ITEMS, TAGS, DIM = 40, 30, 12, 6


class Toy(nn.Module):
    """score = head(user ⊙ (mean of 2 items + weighted sum of 3 tags)): an nn.Embedding,
    an nn.EmbeddingBag(mode="mean") and an nn.EmbeddingBag(mode="sum") with
    per_sample_weights, a dropout and a dense layer."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.user = nn.Embedding(USERS, DIM, padding_idx=0)
        self.items = nn.EmbeddingBag(ITEMS, DIM, mode="mean")
        self.tags = nn.EmbeddingBag(TAGS, DIM, mode="sum")
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(DIM, 1)

    def forward(self, user, items, tags, tag_weights):
        ctx = self.items(items) + self.tags(tags, per_sample_weights=tag_weights)
        return self.head(self.drop(self.user(user) * ctx)).squeeze(-1)


def _toy(seed: int = 0, dropout: float = 0.0, **kwargs) -> Toy:
    torch.manual_seed(seed)
    return searchable(Toy(dropout), num_blocks=3, **kwargs)


def _rows(n: int, seed: int):
    """(user, items (n, 2), tags (n, 3), tag weights (n, 3)) and a target from a planted Toy."""
    g = torch.Generator().manual_seed(seed)
    user = torch.randint(1, USERS, (n,), generator=g)
    items = torch.randint(0, ITEMS, (n, 2), generator=g)
    tags = torch.randint(0, TAGS, (n, 3), generator=g)
    weights = torch.rand(n, 3, generator=g)
    torch.manual_seed(1000)
    truth = Toy()
    for p in truth.parameters():
        nn.init.normal_(p)
    with torch.no_grad():
        y = truth(user, items, tags, weights) + 0.1 * torch.randn(n, generator=g)
    return (user, items, tags, weights), y


def _batches(n: int, seed: int, size: int = 64) -> list:
    inputs, y = _rows(n, seed)
    return [(tuple(x[s : s + size] for x in inputs), y[s : s + size]) for s in range(0, n, size)]


class _Rows(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        self.inputs, self.y = _rows(n, seed)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return tuple(x[i] for x in self.inputs), self.y[i]


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out - y).pow(2).mean()


TRAIN, VALID = _batches(2048, 1), _batches(256, 2)
QUIET = dict(log=lambda line: None)


def _alphas(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.alpha.detach().clone() for name, t in searchable_modules(model).items()}


def test_alpha_stays_in_unit_interval_and_moves():
    model = _toy()
    seen = []

    def log(line: str) -> None:  # after every epoch
        seen.extend(_alphas(model).values())

    # a large α rate: without the clamp α would leave [0, 1] on the first step
    result = dnis(model, TRAIN, VALID, mse, epochs=3, alpha_lr=2.0, lr=1e-2, patience=5, log=log)
    assert isinstance(result, DnisResult) and len(result.history) == 3
    for alpha in seen:
        assert alpha.min() >= 0 and alpha.max() <= 1
    final = torch.cat([a.flatten() for a in _alphas(model).values()])
    assert (final == 0).any(), "no α reached the clamp at 0"
    assert (final < 1).float().mean() > 0.2, final


def test_validation_loss_decreases_and_best_state_is_kept():
    model = _toy()
    result = dnis(model, TRAIN, VALID, mse, epochs=5, lr=5e-2, alpha_lr=1e-2, patience=5, **QUIET)
    losses = [row["valid_loss"] for row in result.history]
    assert losses[-1] < 0.25 * losses[0], losses
    assert result.best_valid_loss == min(losses)
    assert result.history[result.best_epoch - 1]["valid_loss"] == result.best_valid_loss
    with torch.no_grad():
        model.eval()
        now = sum(float(mse(model(*x), y)) for x, y in VALID) / len(VALID)
    assert now == pytest.approx(result.best_valid_loss, rel=1e-5)
    assert all(row["alpha_mean"].keys() == {"user", "items", "tags"} for row in result.history)


def test_early_stop_restores_the_best_epoch():
    epochs_logged = []

    def rising(out, y):  # a constant that grows each epoch: the same gradients as mse
        return mse(out, y) + 10.0 * len(epochs_logged)

    def log(line: str) -> None:
        if line.startswith("dnis "):
            epochs_logged.append(line)

    kwargs = dict(lr=1e-2, alpha_lr=0.1)
    model = _toy()
    result = dnis(model, TRAIN, VALID, rising, epochs=4, patience=0, log=log, **kwargs)
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert result.best_epoch == 1 and result.stopped_early
    once = _toy()
    dnis(once, TRAIN, VALID, mse, epochs=1, **kwargs, **QUIET)
    for key, value in once.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_warmup_keeps_alpha_and_search_moves_it():
    model = _toy()
    kwargs = dict(lr=1e-2, alpha_lr=0.1, device="cpu", progress=True)
    rows = dnis(model, TRAIN, VALID, mse, epochs=1, warmup_epochs=2, **kwargs, **QUIET)
    phases = [(r["epoch"], r["phase"]) for r in rows.history]
    assert phases == [(1, "warmup"), (2, "warmup"), (3, "search")]
    assert all(v == 1.0 for r in rows.history[:2] for v in r["alpha_mean"].values())
    assert "alpha_step_loss" not in rows.history[0] and "alpha_step_loss" in rows.history[2]
    assert rows.best_epoch == 3
    assert any(v < 1.0 for v in rows.history[2]["alpha_mean"].values())


def test_frequencies_counted_equal_a_bincount():
    model = _toy()
    inputs = [x for x, _ in TRAIN]
    expected = {
        "user": torch.bincount(torch.cat([x[0] for x in inputs]), minlength=USERS),
        "items": torch.bincount(torch.cat([x[1].flatten() for x in inputs]), minlength=ITEMS),
        "tags": torch.bincount(torch.cat([x[2].flatten() for x in inputs]), minlength=TAGS),
    }
    counts, batches = count_ids(model, TRAIN)
    assert batches == len(TRAIN)
    for name, want in expected.items():
        assert torch.equal(counts[name], want), name
    lines = []
    dnis(model, TRAIN, VALID, mse, epochs=1, log=lines.append)
    assert sum("counted id frequencies" in line for line in lines) == 1
    reference = _toy()
    for name, twin in searchable_modules(reference).items():
        twin.set_frequencies(expected[name])
        got = searchable_modules(model)[name]
        assert bool(got.has_frequencies)
        assert torch.equal(got.block_map, twin.block_map), name


def test_given_frequencies_are_not_recounted():
    model = _toy()
    for twin in searchable_modules(model).values():
        twin.set_frequencies(torch.arange(twin.num_embeddings))
    maps = {n: t.block_map.clone() for n, t in searchable_modules(model).items()}
    lines = []
    dnis(model, TRAIN, VALID, mse, epochs=1, log=lines.append)
    assert not any("counted" in line for line in lines)
    for name, twin in searchable_modules(model).items():
        assert torch.equal(twin.block_map, maps[name])


def _loader(seed: int) -> DataLoader:
    return DataLoader(_Rows(384, seed), batch_size=64, shuffle=True)


def test_resumed_run_equals_uninterrupted(tmp_path):
    """Shuffled DataLoaders (lists of [inputs, target]) and dropout: the RNG is restored."""
    kwargs = dict(epochs=3, warmup_epochs=1, lr=1e-2, alpha_lr=0.05, patience=5)
    full = _toy(dropout=0.2)
    ref = dnis(full, _loader(1), _loader(2), mse, checkpoint=tmp_path / "a.pt", **kwargs, **QUIET)

    class Kill(Exception):
        pass

    def killer(line: str) -> None:
        if line.startswith("dnis   2/"):
            raise Kill

    with pytest.raises(Kill):
        dnis(
            _toy(dropout=0.2),
            _loader(1),
            _loader(2),
            mse,
            checkpoint=tmp_path / "b.pt",
            **kwargs,
            log=killer,
        )
    resumed = _toy(dropout=0.2)
    torch.manual_seed(123)  # the checkpoint's RNG state wins
    lines = []
    out = dnis(
        resumed,
        _loader(1),
        _loader(2),
        mse,
        checkpoint=tmp_path / "b.pt",
        resume=True,
        **kwargs,
        log=lines.append,
    )
    assert "resumed" in lines[0] and not any("counted" in line for line in lines)
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key

    def strip(history):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert strip(out.history) == strip(ref.history)
    assert (out.best_epoch, out.best_valid_loss) == (ref.best_epoch, ref.best_valid_loss)


def test_resume_refuses_other_settings(tmp_path):
    path = tmp_path / "c.pt"
    dnis(_toy(), TRAIN, VALID, mse, epochs=1, checkpoint=path, **QUIET)
    with pytest.raises(CheckpointError, match="alpha_lr"):
        dnis(_toy(), TRAIN, VALID, mse, epochs=2, alpha_lr=0.5, checkpoint=path, resume=True)


class PlantedMF(nn.Module):
    """score = <user, item bag>; both tables of width 6, the truth lives in dims 0 and 1."""

    def __init__(self) -> None:
        super().__init__()
        self.user = nn.Embedding(USERS, DIM)
        self.items = nn.EmbeddingBag(ITEMS, DIM, mode="sum")

    def forward(self, user, items, weights):
        return (self.user(user) * self.items(items, per_sample_weights=weights)).sum(-1)


def test_planted_signal_dims_keep_the_largest_alpha():
    """A pretrained-looking table: dims 0-1 hold the true factors, dims 2-5 noise that only
    adds error; the α step on validation batches turns the noise dims down."""
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(USERS, 2, generator=g), torch.randn(ITEMS, 2, generator=g)

    def data(n: int):
        user = torch.randint(0, USERS, (n,), generator=g)
        items = torch.randint(0, ITEMS, (n, 2), generator=g)
        weights = torch.rand(n, 2, generator=g)
        bag = (q[items] * weights.unsqueeze(-1)).sum(1)
        y = (p[user] * bag).sum(-1)
        return [
            ((user[s : s + 64], items[s : s + 64], weights[s : s + 64]), y[s : s + 64])
            for s in range(0, n, 64)
        ]

    model = PlantedMF()
    with torch.no_grad():
        model.user.weight.copy_(torch.cat([p, torch.randn(USERS, DIM - 2, generator=g)], 1))
        model.items.weight.copy_(torch.cat([q, torch.randn(ITEMS, DIM - 2, generator=g)], 1))
    searchable(model, num_blocks=2)
    dnis(model, data(1024), data(512), mse, epochs=3, lr=1e-4, alpha_lr=0.05, patience=3, **QUIET)
    for name, alpha in _alphas(model).items():
        assert alpha[:, :2].min() > alpha[:, 2:].max(), (name, alpha)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=0.0), "lr must be a finite number > 0"),
        (dict(lr=float("nan")), "lr must be a finite number > 0"),
        (dict(alpha_lr=-1.0), "alpha_lr must be a finite number > 0"),
        (dict(l1=float("inf")), "l1 must be a finite number >= 0"),
        (dict(epochs=0), "epochs must be an int >= 1"),
        (dict(warmup_epochs=-1), "warmup_epochs must be an int >= 0"),
        (dict(patience=-1), "patience must be an int >= 0"),
        (dict(train_data=[]), "train_data is empty"),
        (dict(valid_data=[]), "valid_data is empty"),
        (dict(train_data=iter(TRAIN)), "train_data must be re-iterable"),
        (dict(train_data=[(TRAIN[0][0],)]), r"a batch must be an \(inputs, target\) pair"),
        (dict(valid_data=[TRAIN[0] + (None,)]), "got a tuple of length 3"),
        (dict(loss_fn=lambda out, y: (out - y) ** 2), r"loss_fn must return a 0-d tensor"),
        (dict(resume=True), "resume=True needs a checkpoint path"),
    ],
)
def test_bad_arguments_are_one_line_value_errors(kwargs, match):
    args = dict(train_data=TRAIN, valid_data=VALID, loss_fn=mse)
    args.update({k: kwargs.pop(k) for k in list(kwargs) if k in args})
    with pytest.raises(ValueError, match=match) as err:
        dnis(_toy(), args["train_data"], args["valid_data"], args["loss_fn"], **kwargs, **QUIET)
    assert "\n" not in str(err.value)


def test_model_without_searchable_table_is_refused():
    with pytest.raises(ValueError, match="call mixemb.searchable"):
        dnis(Toy(), TRAIN, VALID, mse, **QUIET)
    with pytest.raises(ValueError, match="no searchable embedding"):
        DnisStep(nn.Linear(2, 2), mse)


def test_non_finite_loss_names_the_epoch():
    def nan_loss(out, y):
        return mse(out, y) * float("nan")

    with pytest.raises(TrainingDiverged, match="dnis epoch 1"):
        dnis(_toy(), TRAIN, VALID, nan_loss, epochs=2, **QUIET)


def test_own_loop_with_dnis_step_equals_dnis():
    """One epoch of dnis is a loop of DnisStep.step over train batches with the validation
    batches cycled."""

    def prepared():
        model = _toy()
        for twin in searchable_modules(model).values():
            twin.set_frequencies(torch.arange(twin.num_embeddings).flip(0))
        return model

    kwargs = dict(lr=1e-2, alpha_lr=0.1, l1=1e-4)
    mine = prepared()
    step = DnisStep(mine, mse, **kwargs)
    mine.train()
    for train_batch, valid_batch in zip(TRAIN, itertools.cycle(VALID)):
        loss, valid_loss = step.step(train_batch, valid_batch)
        assert loss.dim() == 0 and valid_loss.dim() == 0 and not loss.requires_grad
        for alpha in _alphas(mine).values():
            assert alpha.min() >= 0 and alpha.max() <= 1
    assert all(p.requires_grad for p in mine.parameters())  # flags restored after each step
    assert all(t.l1 == 1e-4 for t in searchable_modules(mine).values())

    theirs = prepared()
    dnis(theirs, TRAIN, VALID, mse, epochs=1, **kwargs, **QUIET)
    for key, value in mine.state_dict().items():
        assert torch.equal(value, theirs.state_dict()[key]), key
    assert any(not torch.equal(a, torch.ones_like(a)) for a in _alphas(mine).values())

    # the optimizers' state round-trips
    again = DnisStep(prepared(), mse, **kwargs)
    again.load_state_dict(step.state_dict())
    assert again.opt_w.state_dict()["state"].keys() == step.opt_w.state_dict()["state"].keys()


def test_dnis_step_trains_only_the_given_params():
    model = _toy()
    head = [p.detach().clone() for p in model.head.parameters()]
    step = DnisStep(model, mse, params=[t.weight for t in searchable_modules(model).values()])
    step.step(TRAIN[0], VALID[0])
    assert all(torch.equal(a, b) for a, b in zip(head, model.head.parameters()))
    assert all(p.grad is None for p in model.head.parameters())
    with pytest.raises(ValueError, match="alpha"):
        DnisStep(model, mse, params=[model.user.alpha])


def test_a_samplers_set_epoch_is_called_every_epoch():
    """A DataLoader with a DistributedSampler-like sampler reshuffles per epoch, as torch
    asks: dnis calls its set_epoch(epoch) before each epoch, train and valid alike."""
    calls = []

    class Sampler(torch.utils.data.SequentialSampler):
        def set_epoch(self, epoch: int) -> None:
            calls.append((self.data_source, epoch))

    train_rows, valid_rows = _Rows(128, 1), _Rows(64, 2)
    train = DataLoader(train_rows, batch_size=64, sampler=Sampler(train_rows))
    valid = DataLoader(valid_rows, batch_size=64, sampler=Sampler(valid_rows))
    dnis(_toy(), train, valid, mse, epochs=2, warmup_epochs=1, patience=5, **QUIET)
    assert calls == [(rows, e) for e in range(3) for rows in (train_rows, valid_rows)]


def test_batches_move_objects_with_a_to_method_like_a_kjt():
    from mixemb.search.batches import to_device

    class Jagged:  # stands in for a KeyedJaggedTensor: moved by its own .to
        def __init__(self):
            self.moved_to = None

        def to(self, device):
            self.moved_to = device
            return self

    batch = to_device(((torch.ones(2), Jagged()), {"y": torch.zeros(1)}), torch.device("cpu"))
    assert batch[0][1].moved_to == torch.device("cpu")
    assert torch.equal(batch[1]["y"], torch.zeros(1))
