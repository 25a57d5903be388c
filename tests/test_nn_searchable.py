"""mixemb.nn.searchable: the twins against nn.Embedding / nn.EmbeddingBag (α all ones),
their α gradient against the reference op composed with pooling, set_frequencies,
merged_weight, searchable() on a user's model, state and argument errors."""

from __future__ import annotations

import copy
import importlib
import subprocess
import sys

import pytest
import torch
from torch import nn

from mixemb.nn import SearchableEmbedding, SearchableEmbeddingBag, searchable, searchable_modules
from mixemb.reference import normalize_alpha_grad, soft_select_lookup_reference

N, K = 11, 5

# bag inputs as (input, offsets, per-sample weights?); ids 0 and 3 repeat, 3 is hot
BAGS = {
    "offsets": ([3, 1, 3, 7, 3, 10, 0, 3], [0, 3, 3, 6], False),  # bag 1 empty
    "offsets-psw": ([3, 1, 3, 7, 3, 10, 0, 3], [0, 3, 3, 6], True),
    "one-id": ([4], [0], True),
    "empty-input": ([], [0, 0, 0], True),
    "2-D": ([[3, 1, 3], [7, 3, 0]], None, True),
    "2-D-empty": (torch.empty(0, 3, dtype=torch.long), None, True),
}


def _bag_args(name, device, dtype=torch.float64, *, last=False, seed=0):
    ids, offsets, with_psw = BAGS[name]
    ids = torch.as_tensor(ids, dtype=torch.long, device=device)
    if offsets is not None:
        offsets = torch.tensor(offsets + ([ids.numel()] if last else []), device=device)
    g = torch.Generator().manual_seed(seed)
    psw = torch.rand(ids.shape, generator=g, dtype=dtype).to(device) if with_psw else None
    return ids, offsets, psw


def _table(n=N, k=K, *, seed=0, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g, dtype=dtype).to(device)


def _grads(module, args, dout_seed=1):
    """(output, weight grad, per-sample-weight grad) of output · dout."""
    module.zero_grad()
    psw = args[2] if len(args) > 2 else None
    if psw is not None:
        psw = psw.clone().requires_grad_()
        args = (*args[:2], psw)
    out = module(*args)
    g = torch.Generator().manual_seed(dout_seed)
    dout = torch.randn(out.shape, generator=g, dtype=out.dtype).to(out.device)
    out.backward(dout)
    return out.detach(), module.weight.grad.clone(), None if psw is None else psw.grad


@pytest.mark.parametrize("padding_idx", [None, 3, -1])
@pytest.mark.parametrize("shape", [(7,), (2, 4), (0,), (1,)])
def test_embedding_twin_equals_nn_embedding(device, padding_idx, shape):
    emb = nn.Embedding(N, K, padding_idx=padding_idx).double().to(device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, N, shape, generator=g).to(device)
    if ids.numel() > 2:
        ids.view(-1)[:2] = emb.padding_idx if padding_idx is not None else 0
    want = _grads(emb, (ids,))
    twin = SearchableEmbedding.from_module(copy.deepcopy(emb), num_blocks=3)
    got = _grads(twin, (ids,))
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


# include_last_offset changes only 1-D input with offsets
_LAST = [(n, False) for n in BAGS] + [(n, True) for n in BAGS if BAGS[n][1] is not None]


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("name,last", _LAST)
@pytest.mark.parametrize("padding_idx", [None, 3])
def test_bag_twin_equals_nn_embedding_bag(device, mode, name, last, padding_idx):
    bag = nn.EmbeddingBag(N, K, mode=mode, include_last_offset=last, padding_idx=padding_idx)
    bag = bag.double().to(device)
    ids, offsets, psw = _bag_args(name, device, last=last)
    args = (ids, offsets, psw if mode == "sum" else None)
    want = _grads(bag, args)
    twin = SearchableEmbeddingBag.from_module(copy.deepcopy(bag), num_blocks=3)
    assert (twin.mode, twin.include_last_offset) == (mode, last)
    got = _grads(twin, args)
    for x, y, what in zip(got, want, ("out", "dweight", "dpsw")):
        assert (x is None) == (y is None), what
        if x is not None:
            torch.testing.assert_close(x, y, msg=what)


def _pool_reference(rows, ids, offsets, mode, num_bags, last, padding_idx):
    """Bags pooled one by one in plain PyTorch (the definition, not the twin's code)."""
    if offsets is None:
        size = ids.shape[1] if ids.dim() == 2 else 0
        starts = [b * size for b in range(num_bags + 1)]
    else:
        starts = offsets.tolist() + ([] if last else [ids.numel()])
    flat = ids.reshape(-1)
    out = []
    for b in range(num_bags):
        keep = [i for i in range(starts[b], starts[b + 1]) if int(flat[i]) != padding_idx]
        if not keep:  # zeros, still in the graph
            out.append(rows[:0].sum(0))
        elif mode == "sum":
            out.append(rows[keep].sum(0))
        elif mode == "mean":
            out.append(rows[keep].mean(0))
        else:
            out.append(rows[keep].max(0).values)
    return torch.stack(out) if out else rows[:0]


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max", "embedding"])
@pytest.mark.parametrize("name", ["offsets-psw", "2-D", "empty-input", "one-id"])
@pytest.mark.parametrize("num_blocks", [1, 4, 14])  # 14 > N: blocks no id maps to
def test_gradients_equal_the_reference_op_composed_with_pooling(
    device, backend, mode, name, num_blocks
):
    l1, eps, pad = 1e-3, 1e-8, 7
    weight = _table(device=device)
    alpha = torch.rand(
        num_blocks, K, generator=torch.Generator().manual_seed(2), dtype=weight.dtype
    )
    alpha = alpha.to(device)
    counts = torch.tensor([50, 3, 8, 90, 3, 1, 0, 7, 7, 2, 30])  # ties: lower id first
    ids, offsets, psw = _bag_args(name, device)
    if mode == "embedding":
        twin = SearchableEmbedding(N, K, num_blocks, padding_idx=pad, l1=l1, backend=backend)
        args = (ids,)
    else:
        twin = SearchableEmbeddingBag(N, K, num_blocks, mode=mode, padding_idx=pad, l1=l1,
                                      backend=backend)  # fmt: skip
        args = (ids, offsets, psw if mode == "sum" else None)
    twin = twin.double().to(device)
    with torch.no_grad():
        twin.weight.copy_(weight)
        twin.alpha.copy_(alpha)
    twin.set_frequencies(counts)
    got = _grads(twin, args)

    w = weight.clone().requires_grad_()
    a = alpha.clone().requires_grad_()
    v = None if len(args) < 3 or args[2] is None else args[2].clone().requires_grad_()
    rows = soft_select_lookup_reference(
        w, a, None, ids.reshape(-1), None if v is None else v.reshape(-1),
        block_map=twin.block_map,
    )  # fmt: skip
    if mode == "embedding":
        keep = (ids.reshape(-1) != pad).unsqueeze(1)
        out = torch.where(keep, rows, w[pad].detach()).reshape(*ids.shape, K)
    else:
        num_bags = ids.shape[0] if ids.dim() == 2 else offsets.numel()
        out = _pool_reference(rows, ids, offsets, mode, num_bags, False, pad)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    out.backward(dout.to(device))
    torch.testing.assert_close(got[0], out.detach())
    torch.testing.assert_close(got[1], w.grad)
    torch.testing.assert_close(twin.alpha.grad, normalize_alpha_grad(a.grad, alpha, l1, eps))
    if v is not None:
        torch.testing.assert_close(got[2], v.grad)


def test_set_frequencies_ranks_ids_into_equal_blocks():
    twin = SearchableEmbedding(7, 2, num_blocks=3)
    assert twin.block_map.tolist() == [0] * 7 and not twin.has_frequencies
    with torch.no_grad():
        twin.alpha.mul_(0.5)
    twin.set_frequencies([5, 1, 5, 0, 9, 2, 2])  # ranks 4 0 2 | 5 6 | 1 3
    assert twin.block_map.tolist() == [0, 2, 0, 2, 0, 1, 1]
    assert bool(twin.has_frequencies) and torch.equal(twin.alpha, torch.full((3, 2), 0.5))
    small = SearchableEmbeddingBag(3, 2, num_blocks=5)  # fewer ids than blocks
    small.set_frequencies(torch.tensor([0.5, 2.0, 1.0]))
    assert small.block_map.tolist() == [2, 0, 1]
    for bad in (torch.ones(6), torch.ones(7, 1), torch.ones(7, dtype=torch.bool)):
        with pytest.raises(ValueError, match=r"counts must be \(7,\) int/float"):
            twin.set_frequencies(bad)


def test_merged_weight_is_what_the_lookups_see(device):
    twin = SearchableEmbedding(N, K, 4, padding_idx=2).to(device)
    with torch.no_grad():
        twin.alpha.uniform_()
        twin.weight[2] = 1.5  # a padding row changed after construction: served as stored
    twin.set_frequencies(torch.arange(N))
    merged = twin.merged_weight()
    assert not merged.requires_grad
    torch.testing.assert_close(merged, twin(torch.arange(N, device=device)).detach())
    torch.testing.assert_close(merged[2], torch.full((K,), 1.5, device=device))


class _UserModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.users = nn.Embedding(10, 4, padding_idx=0)
        self.tower = nn.Sequential(nn.EmbeddingBag(12, 4, mode="mean"), nn.Linear(4, 4))
        self.shared = self.users  # one module under two names
        self.head = nn.Linear(8, 1)

    def forward(self, user, items, offsets):
        bag = self.tower[1](self.tower[0](items, offsets))
        return self.head(torch.cat([self.shared(user), bag], dim=1)).squeeze(1)


def test_searchable_replaces_tables_in_place_and_keeps_outputs():
    torch.manual_seed(0)
    model = _UserModel()
    original = copy.deepcopy(model)
    users_weight = model.users.weight
    args = (torch.tensor([1, 0, 9]), torch.tensor([1, 2, 11, 5]), torch.tensor([0, 1, 1]))
    assert searchable(model, {"tower.0": torch.arange(12)}, num_blocks=3) is model
    twins = searchable_modules(model)
    assert list(twins) == ["users", "tower.0"]
    assert model.shared is model.users and model.users.weight is users_weight
    assert isinstance(model.tower[0], SearchableEmbeddingBag) and model.tower[0].num_blocks == 3
    assert bool(model.tower[0].has_frequencies) and not bool(model.users.has_frequencies)
    torch.testing.assert_close(model(*args), original(*args))


def test_searchable_include_and_errors():
    model = searchable(_UserModel(), include=["tower.0"])
    assert list(searchable_modules(model)) == ["tower.0"]
    assert type(model.users) is nn.Embedding
    with pytest.raises(ValueError, match=r"include names no embedding module.*\['head'\]"):
        searchable(_UserModel(), include=["head"])
    with pytest.raises(ValueError, match=r"frequencies names no embedding module.*\['nope'\]"):
        searchable(_UserModel(), {"nope": torch.ones(3)})
    with pytest.raises(ValueError, match="'users', which is not made searchable"):
        searchable(_UserModel(), {"users": torch.ones(10)}, include=["tower.0"])
    with pytest.raises(ValueError, match="wrap it in a module"):
        searchable(nn.Embedding(3, 2))
    for option in (dict(max_norm=1.0), dict(scale_grad_by_freq=True), dict(sparse=True)):
        model = nn.ModuleDict({"emb": nn.Embedding(4, 2, **option)})
        with pytest.raises(ValueError, match=f"emb: {next(iter(option))}=.* not supported"):
            searchable(model)
        assert type(model["emb"]) is nn.Embedding  # nothing replaced


@pytest.mark.skipif(
    importlib.util.find_spec("torchrec") is None, reason="torchrec is not installed"
)
def test_a_model_without_torchrec_modules_never_imports_torchrec():
    """searchable, searchable_modules and to_ragged look for TorchRec collections by class
    name: torchrec, installed, stays unimported for a model that holds none."""
    code = (
        "import sys, mixemb\n"
        "from torch import nn\n"
        "m = mixemb.searchable(nn.ModuleDict({'e': nn.Embedding(30, 4)}))\n"
        "mixemb.to_ragged(m, ratio=1.0)\n"
        "print(sorted(k for k in sys.modules if k.partition('.')[0] == 'torchrec'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_state_round_trip_and_corrupted_block_map():
    twin = SearchableEmbeddingBag(6, 3, 2, mode="sum")
    twin.set_frequencies(torch.tensor([1, 2, 3, 4, 5, 6]))
    state = twin.state_dict()
    assert set(state) == {"weight", "alpha", "block_map", "has_frequencies"}
    fresh = SearchableEmbeddingBag(6, 3, 2, mode="sum")
    fresh.load_state_dict(state)
    assert torch.equal(fresh.block_map, twin.block_map) and bool(fresh.has_frequencies)
    for bad, match in (
        (torch.tensor([0, 1, 2, 0, 1, 0]), r"block_map\[2\] = 2 is outside the blocks \[0, 2\)"),
        (torch.tensor([0, 1, 1]), r"block_map must be \(N,\) = \(6,\), got \(3,\)"),
        (torch.zeros(6), r"block_map must be int64, got torch.float32"),
    ):
        with pytest.raises(ValueError, match=f"block_map in the state: {match}"):
            fresh.load_state_dict({**state, "block_map": bad})


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda t: t(torch.tensor([1, 2])), "offsets must be a 1-D tensor"),
        (lambda t: t(torch.tensor([[1, 2]]), torch.tensor([0])), "offsets must be None"),
        (lambda t: t(torch.tensor([1, 2]), torch.tensor([1])), r"offsets\[0\] must be 0, got 1"),
        (lambda t: t(torch.ones(1, 1, 1, dtype=torch.long)), "input must be 1-D or 2-D"),
        (lambda t: t(torch.tensor([1]), torch.tensor([0]), torch.ones(2)), "input's shape"),
    ],
)
def test_bag_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call(SearchableEmbeddingBag(4, 2, 2, mode="sum"))
    with pytest.raises(ValueError, match="only supported with mode 'sum', got 'max'"):
        SearchableEmbeddingBag(4, 2, mode="max")(
            torch.tensor([1]), torch.tensor([0]), torch.ones(1)
        )
    with pytest.raises(ValueError, match="mode must be one of"):
        SearchableEmbeddingBag(4, 2, mode="median")


def test_compiled_model_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = searchable(_UserModel(), {"users": torch.arange(10)}, num_blocks=2)
    args = (torch.tensor([1, 0, 9]), torch.tensor([1, 2, 11, 5]), torch.tensor([0, 1, 1]))
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled(*args).square().sum().backward()
    eager(*args).square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_bag_twin_is_one_fused_op_call_and_drops_lookups_past_the_last_offset(
    device, mode, backend, monkeypatch
):
    """sum and mean run mixemb.ops.soft_select_pooled once; with include_last_offset, ids past
    the last offset are in no bag (as the CSR form says; PyTorch's CPU EmbeddingBag adds
    them to the last bag) and get no gradient."""
    module = importlib.import_module("mixemb.nn.searchable")  # mixemb.nn.searchable: a function
    calls = []
    fused = module.soft_select_bag
    monkeypatch.setattr(
        module, "soft_select_bag", lambda *a, **k: calls.append(1) or fused(*a, **k)
    )
    twin = SearchableEmbeddingBag(N, K, 3, mode=mode, include_last_offset=True, padding_idx=3,
                                  backend=backend).double().to(device)  # fmt: skip
    with torch.no_grad():
        twin.alpha.uniform_()
    twin.set_frequencies(torch.arange(N))
    ids = torch.tensor([3, 1, 3, 7, 3, 10, 0, 5, 9], device=device)
    offsets = torch.tensor([0, 3, 3, 6], device=device)  # 0, 5, 9 are past the last bag
    psw = torch.rand(9, dtype=torch.float64, device=device) if mode == "sum" else None
    out, dweight, dpsw = _grads(twin, (ids, offsets, psw))
    assert len(calls) == 1
    bag = nn.EmbeddingBag(N, K, mode=mode, include_last_offset=True, padding_idx=3).double()
    with torch.no_grad():
        bag.weight.copy_(twin.merged_weight().cpu())
    inside = (ids[:6].cpu(), offsets.cpu(), None if psw is None else psw[:6].cpu())
    torch.testing.assert_close(out.cpu(), bag(*inside))
    assert not dweight[[0, 3, 5, 9]].any()
    if psw is not None:
        assert not dpsw[[0, 2, 4, 6, 7, 8]].any() and dpsw[[1, 3, 5]].all()
