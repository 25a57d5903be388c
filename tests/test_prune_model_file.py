"""save / load of a user's model served from ragged tables: identical outputs after a load
into a fresh instance; a crafted file is a one-line ValueError naming it."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from mixemb.nn.ragged import RaggedEmbedding
from mixemb.nn.ragged_bag import RaggedEmbeddingBag
from mixemb.prune.model_file import load, save


class TwoTables(nn.Module):
    """A model mixemb has never seen: an nn.Embedding, a nested nn.EmbeddingBag, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.user = nn.Embedding(20, 8, padding_idx=0)
        self.tower = nn.Module()
        self.tower.items = nn.EmbeddingBag(30, 12, mode="mean", padding_idx=1)
        self.head = nn.Sequential(nn.Linear(20, 4), nn.ReLU(), nn.Linear(4, 1))
        self.register_buffer("scale", torch.ones(1))

    def forward(self, users, items, offsets):
        pooled = self.tower.items(items, offsets)
        return self.head(torch.cat([self.user(users), pooled], 1)) * self.scale


def _pruned(weight: torch.Tensor) -> torch.Tensor:
    w = weight.detach().clone()
    w[w.abs() < 0.7] = 0
    return w


def _served(value_dtype=None) -> TwoTables:
    """A trained-looking TwoTables whose tables are ragged (pruned by magnitude)."""
    torch.manual_seed(0)
    model = TwoTables()
    with torch.no_grad():
        model.scale.fill_(1.5)
    f32 = {"out_dtype": torch.float32}  # an fp16 table serving this fp32 model
    model.user = RaggedEmbedding.from_dense(_pruned(model.user.weight), dtype=value_dtype, **f32)
    model.tower.items = RaggedEmbeddingBag.from_dense(
        _pruned(model.tower.items.weight), dtype=value_dtype, mode="mean", padding_idx=1, **f32
    )
    return model.eval()


def _inputs():
    g = torch.Generator().manual_seed(3)
    users = torch.randint(0, 20, (6,), generator=g)
    items = torch.randint(0, 30, (15,), generator=g)
    items[::4] = 1
    return users, items, torch.tensor([0, 2, 2, 7, 9, 14])


@pytest.mark.parametrize("value_dtype", [None, torch.float16, "int8"])
def test_round_trip_into_a_fresh_instance_gives_identical_outputs(tmp_path, value_dtype):
    served = _served(value_dtype)
    path = save(served, tmp_path / "m.pt")
    torch.load(path, weights_only=True)  # safe to load
    fresh = TwoTables()
    assert load(path, fresh) is fresh
    assert type(fresh.user) is RaggedEmbedding
    assert type(fresh.tower.items) is RaggedEmbeddingBag
    assert fresh.tower.items.mode == "mean" and fresh.tower.items.padding_idx == 1
    assert torch.equal(fresh(*_inputs()), served(*_inputs()))
    assert fresh.tower.items.nbytes() == served.tower.items.nbytes()


def test_save_overwrites_and_loads_into_a_model_already_ragged(tmp_path):
    served = _served()
    path = save(served, tmp_path / "m.pt")
    save(served, path)
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]  # no temporary file left
    again = load(path, _served())
    assert torch.equal(again(*_inputs()), served(*_inputs()))


def test_a_table_shared_under_two_names_round_trips(tmp_path):
    served = _served()
    served.alias = served.user
    fresh = TwoTables()
    fresh.alias = fresh.user
    load(save(served, tmp_path / "m.pt"), fresh)
    assert fresh.alias is fresh.user and type(fresh.user) is RaggedEmbedding
    assert torch.equal(fresh(*_inputs()), served(*_inputs()))


@pytest.mark.parametrize("value_dtype", [None, "int8"])
def test_a_model_built_on_the_meta_device_loads_and_scores_identically(tmp_path, value_dtype):
    """No dense table allocated: the ragged tables on the CPU, the rest the file's."""
    served = _served(value_dtype)
    path = save(served, tmp_path / "m.pt")
    with torch.device("meta"):
        fresh = TwoTables()
    assert fresh.user.weight.is_meta
    assert load(path, fresh) is fresh
    assert type(fresh.user) is RaggedEmbedding and type(fresh.tower.items) is RaggedEmbeddingBag
    tensors = [*fresh.parameters(), *fresh.buffers()]
    assert all(t.device.type == "cpu" for t in tensors)
    assert float(fresh.scale) == 1.5 and fresh.head[0].weight.requires_grad
    assert torch.equal(fresh(*_inputs()), served(*_inputs()))
    normal = load(path, TwoTables())
    assert torch.equal(fresh(*_inputs()), normal(*_inputs()))
    with torch.device("meta"):  # loaded inside the block too: the tables still on the CPU
        inside = load(path, TwoTables())
    assert torch.equal(inside(*_inputs()), normal(*_inputs()))


def test_load_places_the_tables_on_device(tmp_path, device):
    path = save(_served(), tmp_path / "m.pt")
    with torch.device("meta"):
        fresh = TwoTables()
    load(path, fresh, device=device)
    assert {t.device.type for t in [*fresh.parameters(), *fresh.buffers()]} == {device}
    want = _served()(*_inputs())
    got = fresh(*(x.to(device) for x in _inputs()))
    assert torch.equal(got.cpu(), want)
    with pytest.raises(ValueError, match="device must be a real device, got meta"):
        load(path, TwoTables(), device="meta")


def test_a_meta_tensor_the_file_lacks_is_named_and_the_model_left(tmp_path):
    path = save(_served(), tmp_path / "m.pt")
    with torch.device("meta"):
        fresh = TwoTables()
        fresh.register_buffer("cache", torch.zeros(3), persistent=False)
    with pytest.raises(ValueError, match=r"TwoTables\.cache is on the meta device and not in"):
        load(path, fresh)
    assert type(fresh.user) is nn.Embedding and fresh.head[0].weight.is_meta


def test_save_needs_a_ragged_table_below_the_model(tmp_path):
    with pytest.raises(ValueError, match="to_ragged"):
        save(TwoTables(), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="itself"):
        save(_served().user, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def _entry(obj, name="user"):
    return obj["tables"][name]


def _swap_kind(o):
    o["tables"]["user"]["module"] = "embedding_bag"
    o["tables"]["user"]["options"] = {
        "mode": "mean",
        "padding_idx": None,
        "include_last_offset": False,
    }


TAMPERED = [
    ("wrong kind", lambda o: o.update(kind="mixemb.pruned"), "expected a 'mixemb.ragged_model'"),
    ("future version", lambda o: o.update(format_version=2), "format version"),
    ("no tables", lambda o: o.update(tables={}), "no tables"),
    ("state not a dict", lambda o: o.update(state=[1]), "no state"),
    ("missing values", lambda o: _entry(o)["table"].pop("values"), "lacks"),
    (
        "bad group_offsets",
        lambda o: _entry(o)["table"].update(group_offsets=torch.tensor([0, 5])),
        "group_offsets",
    ),
    (
        "masks of -1",
        lambda o: _entry(o)["table"]["masks"].fill_(-1),
        "keep dims at or past",
    ),
    ("not a module", lambda o: o["tables"].update(nope=o["tables"].pop("user")), "no such module"),
    (
        "a Linear",
        lambda o: o["tables"].update({"head.0": o["tables"].pop("user")}),
        "a Linear",
    ),
    ("the root", lambda o: o["tables"].update({"": o["tables"].pop("user")}), "submodule name"),
    ("an embedding as a bag", _swap_kind, "no nn.EmbeddingBag there"),
    ("unknown module kind", lambda o: _entry(o).update(module="linear"), "module must be"),
    (
        "a huge embedding_dim",
        lambda o: _entry(o)["table"].update(embedding_dim=10**15),
        "embedding_dim",
    ),
    (
        "a huge group_size",
        lambda o: _entry(o)["table"].update(group_size=2**62),
        "group_offsets",
    ),
    (
        "more rows than the model",
        lambda o: _entry(o)["table"].update(
            masks=torch.zeros(25, 1, dtype=torch.int64),
            values=torch.zeros(0),
            group_offsets=torch.zeros(3, dtype=torch.int64),
        ),
        "25 rows in the file, 20",
    ),
    (
        "another mode",
        lambda o: _entry(o, "tower.items")["options"].update(mode="sum"),
        "mode='sum' in the file, 'mean' in the model",
    ),
    (
        "options of a bad type",
        lambda o: _entry(o, "tower.items")["options"].update(padding_idx=torch.tensor(1)),
        "bad options",
    ),
    ("options on an embedding", lambda o: _entry(o).update(options={"x": 1}), "no options"),
    ("a missing weight", lambda o: o["state"].pop("head.0.bias"), "lacks 'head.0.bias'"),
    ("an unexpected weight", lambda o: o["state"].update(extra=torch.ones(1)), "unexpected"),
    ("a wrong shape", lambda o: o["state"].update(scale=torch.ones(10**3)), "(1000,) in the file"),
    (
        "state onto a table",
        lambda o: o["state"].update({"user.values": torch.zeros(3)}),
        "would overwrite the ragged table",
    ),
]


@pytest.mark.parametrize("what,edit,needle", TAMPERED, ids=[t[0] for t in TAMPERED])
def test_a_crafted_file_is_one_line_naming_it_and_leaves_the_model(tmp_path, what, edit, needle):
    obj = torch.load(save(_served(), tmp_path / "m.pt"), weights_only=True)
    edit(obj)
    bad = tmp_path / "bad.pt"
    torch.save(obj, bad)
    fresh = TwoTables()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load(bad, fresh)
    message = str(info.value)
    assert message.startswith(str(bad)) and "\n" not in message, message
    assert needle in message, message
    assert type(fresh.user) is nn.Embedding and type(fresh.tower.items) is nn.EmbeddingBag
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())


def test_truncated_missing_and_malicious_files(tmp_path):
    path = save(_served(), tmp_path / "m.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:200])

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"kind": "mixemb.ragged_model", "x": Payload()}, evil)
    for bad, needle in [
        (cut, "truncated or corrupted"),
        (tmp_path / "none.pt", "no such"),
        (evil, "not a mixemb file"),
    ]:
        with pytest.raises(ValueError, match=needle) as info:
            load(bad, TwoTables())
        assert str(bad) in str(info.value)
