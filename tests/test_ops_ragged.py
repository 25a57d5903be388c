"""Compiled ragged ops (mixemb._C) vs the pure-PyTorch references, opcheck, gradcheck, compile."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import NEEDS_CUDA_EXT

from mixemb import _ext
from mixemb.ops import ragged_bag, ragged_dot, ragged_gather
from mixemb.ragged import RaggedTable
from mixemb.reference import (
    ragged_bag_reference,
    ragged_dot_reference,
    ragged_gather_reference,
)

pytestmark = pytest.mark.skipif(not _ext.HAS_EXT, reason=f"mixemb._C missing: {_ext.LOAD_ERROR}")

# The CUDA kernel variants, keyword arguments of the ops (mixemb.ops.ragged): every test
# that takes `variant` (`gather_variant`) runs each on the GPU. The CPU kernels check and
# ignore them, so on CPU only the default runs there, and
# test_cpu_kernels_accept_every_cuda_variant_and_ignore_it covers the rest.
GATHER_VARIANTS = {
    "default": {},
    "one_warp": {"one_warp": True},
    **{f"u{u}": {"lookups_at_once": u} for u in (1, 2, 4, 8)},
}
BAG_VARIANTS = {
    **GATHER_VARIANTS,
    "lanes": {"bag_kernel": "lanes"},  # its own default U
    **{f"lanes-u{u}": {"bag_kernel": "lanes", "lookups_at_once": u} for u in (1, 8)},
}


@pytest.fixture
def device(device: str) -> str:
    """The shared device fixture (tests/conftest.py), CUDA only where _C has CUDA kernels."""
    if device == "cuda" and not _ext.HAS_CUDA_KERNELS:
        pytest.skip("needs mixemb._C built with CUDA")
    return device


def _variant(name: str, variants: dict, device: str) -> dict:
    if device == "cpu" and name != "default":
        pytest.skip("a CUDA kernel variant: the CPU kernels check it and ignore it")
    return variants[name]


@pytest.fixture(params=list(BAG_VARIANTS))
def variant(request, device: str) -> dict:
    """Keyword arguments of one kernel variant of every op ("bag_kernel": ragged_bag only,
    see `no_bag`)."""
    return _variant(request.param, BAG_VARIANTS, device)


@pytest.fixture(params=list(GATHER_VARIANTS))
def gather_variant(request, device: str) -> dict:
    """Keyword arguments of one kernel variant of ragged_gather / ragged_dot."""
    return _variant(request.param, GATHER_VARIANTS, device)


def no_bag(variant: dict) -> dict:
    """A variant's arguments that ragged_gather and ragged_dot take."""
    return {k: v for k, v in variant.items() if k != "bag_kernel"}


# "int8": an int8 table (uint8 codes, a per-row scale and bias), served as float32 rows.
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, "int8"]
# Reordered fp accumulation (bags, dots) vs the reference: tolerances per dtype (int8
# tables accumulate their dequantized values in float32).
TOL = {
    "int8": dict(rtol=1e-5, atol=1e-5),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


def _table(n, k, keep=0.3, seed=0, dtype=torch.float32, group_size=16, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g, dtype=torch.float64)
    x[torch.rand(n, k, generator=g) > keep] = 0
    if n > 2:
        x[0] = 0  # a row with no kept dims
        x[1] = torch.randn(k, generator=g, dtype=torch.float64).abs() + 0.5  # all kept
    if dtype == "int8":  # the dense table as served: its kept values dequantized
        table = RaggedTable.from_dense(x.float(), group_size=group_size, dtype="int8")
        return table.to_dense().to(device), table.to(device)
    x = x.to(dtype)
    return x.to(device), RaggedTable.from_dense(x, group_size=group_size).to(device)


def _rows(dtype) -> torch.dtype:
    """The dtype of the rows a table of `dtype` serves (float32 for int8)."""
    return torch.float32 if dtype == "int8" else dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", [1, 7, 64, 160])
@pytest.mark.parametrize("ids_dtype", [torch.int32, torch.int64])
def test_gather_matches_reference_exactly(dtype, k, ids_dtype, device, gather_variant):
    x, table = _table(40, k, dtype=dtype, device=device)
    ids = torch.randint(0, 40, (9, 4)).to(device=device, dtype=ids_dtype)
    ids[0] = 1  # duplicates of the all-kept row
    ids[1, 0] = 0
    got = ragged_gather(table, ids, backend="extension", **gather_variant)
    assert torch.equal(got, ragged_gather_reference(table, ids))
    assert torch.equal(got, x[ids.long()])
    empty = ragged_gather(table, ids[:0], backend="extension", **gather_variant)
    assert empty.shape == (0, 4, k)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", [1, 7, 64, 160])
def test_gather_into_a_reused_out_buffer_matches_reference(dtype, k, device, gather_variant):
    """out= writes every element (zeros at pruned dims over NaN garbage) and returns out."""
    x, table = _table(40, k, dtype=dtype, device=device)
    out = torch.full((9, 4, k), float("nan"), dtype=_rows(dtype), device=device)
    for seed in (0, 1):  # the same buffer twice
        ids = torch.randint(0, 40, (9, 4), generator=torch.Generator().manual_seed(seed))
        ids[0] = 1
        ids[1, 0] = 0
        ids = ids.to(device)
        got = ragged_gather(table, ids, out=out, backend="extension", **gather_variant)
        assert got is out
        assert torch.equal(out, x[ids])
    empty = torch.empty(0, 4, k, dtype=_rows(dtype), device=device)
    assert ragged_gather(table, ids[:0], out=empty, backend="extension") is empty
    ref_out = torch.full_like(out, float("nan"))
    assert torch.equal(ragged_gather(table, ids, out=ref_out, backend="reference"), x[ids])


@pytest.mark.parametrize("k", [64, 100])
def test_huge_gather_into_out_streams_and_matches(k):
    """A caller's buffer of 32 MiB and more is streamed too (a fresh output that big is
    not: its pages would be zeroed through the cache first). K = 100 keeps plain stores."""
    dense, _ = _table(3000, k, keep=0.2, seed=k)
    table = RaggedTable.from_dense(dense)
    ids = torch.randint(0, 3000, ((33 << 20) // (4 * k) + 1,), generator=torch.Generator())
    ids[1::5] = 11  # a hot row
    out = torch.full((ids.numel(), k), float("nan"))
    assert out.nbytes >= 32 << 20
    for ids_ in (ids, ids.int()):
        out.fill_(float("nan"))
        ragged_gather(table, ids_, out=out, backend="extension")
        assert torch.equal(out, dense[ids])


def test_bad_out_buffers_are_refused_with_what_was_expected():
    _, table = _table(10, 8)
    ids = torch.tensor([[1, 2, 3]])
    cases = [
        (torch.empty(3, 8), r"out must have shape \(1, 3, 8\)"),
        (torch.empty(1, 3, 8, dtype=torch.float64), "out must be torch.float32"),
        (torch.empty(1, 8, 3).transpose(1, 2), "out must be contiguous"),
        (torch.empty(1, 3, 8, requires_grad=True), "out must not require grad"),
    ]
    for out, message in cases:
        with pytest.raises(ValueError, match=message):
            ragged_gather(table, ids, out=out)
    t = (table.masks, table.values, table.group_offsets, table.group_size, 8)
    with pytest.raises(RuntimeError, match=r"out must have shape \[1, 3, 8\]"):
        torch.ops.mixemb.ragged_gather_out(*t, ids, torch.empty(3, 8), True)
    with pytest.raises(RuntimeError, match="out must be Float"):
        torch.ops.mixemb.ragged_gather_out(*t, ids, torch.empty(1, 3, 8).half(), True)
    with pytest.raises(RuntimeError, match="id 10 at position 1"):
        ragged_gather(table, torch.tensor([1, 10]), out=torch.empty(2, 8))


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
@pytest.mark.parametrize("k", [7, 64, 100, 128, 160])
def test_every_row_density_path(k, int8, device, variant):
    """The CPU kernels write a 64-dim word one of three ways — a copy when every dim is
    kept, zeros plus a scatter when at most 16 are, 8-dim permutes otherwise — and a word
    may be narrower than 64 (the last one when K % 64 != 0): rows keeping 0, 1, 16, 17,
    40, 63 and all dims of every word, gathered and pooled against the reference (int8
    rows: 16 dims a step on AVX-512, the scatter elsewhere)."""
    g = torch.Generator().manual_seed(k)
    kept_counts = [0, 1, 16, 17, 40, 63, 64, 0, 64, 1]
    x = torch.zeros(len(kept_counts) * 3, k)
    for r in range(x.shape[0]):
        for base in range(0, k, 64):
            width = min(64, k - base)
            c = min(kept_counts[(r + base // 64) % len(kept_counts)], width)
            cols = base + torch.randperm(width, generator=g)[:c]
            x[r, cols] = torch.randn(c, generator=g).abs() + 0.1
    table = RaggedTable.from_dense(x, dtype="int8" if int8 else None)
    x, table = table.to_dense().to(device), table.to(device)
    ids = torch.randperm(x.shape[0], generator=g).repeat(3).to(device)
    assert torch.equal(ragged_gather(table, ids, backend="extension", **no_bag(variant)), x[ids])
    offsets = torch.arange(0, ids.numel(), 4, device=device)
    weights = torch.rand(ids.numel(), generator=g).to(device)
    got = ragged_bag(
        table, ids, offsets, per_sample_weights=weights, backend="extension", **variant
    )
    want = ragged_bag_reference(table, ids, offsets, per_sample_weights=weights)
    torch.testing.assert_close(got, want, **TOL[torch.float32])


@pytest.mark.parametrize("k", [64, 100, 160])
def test_large_gather_streams_its_output_and_matches(k):
    """fp32 gathers with an output of 2 MiB or more write it with non-temporal stores on
    AVX-512 when K % 16 == 0 (K = 100 keeps ordinary stores): the same rows either way,
    with hot, duplicate and zero-kept rows, every thread's part fenced."""
    dense, _ = _table(3000, k, keep=0.2, seed=k)
    dense[7] = 0
    table = RaggedTable.from_dense(dense)
    g = torch.Generator().manual_seed(k)
    ids = torch.randint(0, 3000, (9000,), generator=g)
    ids[::5] = 7  # a zero-kept hot row
    ids[1::5] = 11  # a hot row
    assert ids.numel() * k * 4 >= 2 << 20
    for ids_ in (ids, ids.int()):
        assert torch.equal(ragged_gather(table, ids_, backend="extension"), dense[ids])


def _anon_huge_kib(address: int) -> int | None:
    """AnonHugePages (KiB) of the mapping of this process that holds `address`."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == "AnonHugePages:":
            return int(line.split()[1])
    return None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_huge_gather_output_is_advised_huge_pages_and_matches(dtype):
    """A gather output of 32 MiB or more (a fresh mmap) is advised MADV_HUGEPAGE before it
    is written: the rows are the same, and where THP is in madvise mode the output's
    mapping holds huge pages."""
    k = 64
    dense, _ = _table(5000, k, keep=0.3, seed=3)
    dense = dense.to(dtype)
    dense[5] = 0
    table = RaggedTable.from_dense(dense)
    ids = torch.randint(0, 5000, (140_000,), generator=torch.Generator().manual_seed(3))
    ids[::7] = 5
    out = ragged_gather(table, ids, backend="extension")
    assert out.nbytes >= 32 << 20 or dtype != torch.float32
    assert torch.equal(out, dense[ids])
    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if dtype != torch.float32 or not mode.exists() or "[madvise]" not in mode.read_text():
        return
    if os.environ.get("MIXEMB_NO_HUGE_PAGES", "0") != "0":
        return
    huge = 2 << 20  # the first 2 MiB boundary inside the output: its head is a separate mapping
    found = []
    for _ in range(3):  # a huge page may be refused under fragmentation; the hint, never
        out = ragged_gather(table, ids, backend="extension")
        found.append(_anon_huge_kib((out.data_ptr() + huge - 1) // huge * huge) or 0)
        if found[-1] > 0:
            break
        del out
    assert max(found) > 0, found


@pytest.mark.parametrize("isa", ["avx2", "scalar"])
def test_narrower_cpu_paths_under_an_isa_cap(isa):
    """The other tests run the widest vector path this CPU has (AVX-512 here); with
    MIXEMB_CPU_ISA capping it, the AVX2 and scalar row kernels pass the same tests."""
    env = {**os.environ, "MIXEMB_CPU_ISA": isa}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
         "-k", "density or gather_matches or bag_matches or dot_matches or any_group_size"],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout


def test_extension_is_built_with_openmp():
    """ATen's at::parallel_for is an OpenMP loop inlined from its headers: an extension
    compiled without -fopenmp silently runs every CPU op on one thread."""
    from mixemb import _C

    assert b"GOMP_parallel" in Path(_C.__file__).read_bytes()


def test_extension_uses_the_shared_cpp_runtime():
    """_C.so must call the process's libstdc++, not carry a static copy: with a second C++
    runtime inside it, an error raised by a CUDA op after GPU work crashed the process
    (segfault) instead of raising RuntimeError (seen on a GPU machine whose build linked
    libstdc++ statically; setup.py now names -lstdc++)."""
    import shutil

    from mixemb import _C

    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) not found")
    so = _C.__file__
    dynamic = subprocess.run(["readelf", "-d", "-W", so], capture_output=True, text=True)
    assert "libstdc++.so" in dynamic.stdout, dynamic.stdout
    syms = subprocess.run(["readelf", "--dyn-syms", "-W", so], capture_output=True, text=True)
    defined = {
        f[7].split("@")[0]
        for f in (line.split() for line in syms.stdout.splitlines())
        if len(f) >= 8 and f[6] != "UND"
    }
    assert not {"__cxa_throw", "__gxx_personality_v0", "_Znwm"} & defined


@pytest.mark.parametrize("group_size", [1, 5, 8, 16, 32])
def test_every_row_any_group_size(group_size, device, variant):
    """Rows are located through their group's offset (a shift for power-of-two group
    sizes on CUDA, a division otherwise); groups of <= 16 one-word rows take a vector
    popcount path on AVX-512 CPUs, the rest a loop; on CUDA one-word rows take 16 lanes
    per lookup serving lookups_at_once = 1, 2, 4 or 8 lookups at once, or one warp per
    lookup (per bag) with one_warp; bags also on bag_kernel "lanes", whose lanes locate 32
    lookups at once (its default U, 1 or 8).
    70 rows: a short last group; K = 1, 7, 62 (tails of the 4-dim lanes), 64 and 70 (two
    words); gather, weighted mean bags of odd and even lengths, dots; a bad id."""
    kw = {"backend": "extension", **no_bag(variant)}
    bag_kw = {"backend": "extension", **variant}
    for k in (1, 7, 62, 64, 70):
        x, table = _table(70, k, group_size=group_size, device=device)
        ids = torch.cat([torch.arange(70), torch.tensor([1, 1, 69, 0, 1])]).to(device)
        assert torch.equal(ragged_gather(table, ids, **kw), x[ids])
        offsets = torch.tensor([0, 3, 3, 4, 40], device=device)  # lengths 3, 0, 1, 36, 35
        weights = torch.rand(ids.numel(), generator=torch.Generator().manual_seed(k))
        for mode in ("sum", "mean"):
            w = weights.to(device) if mode == "sum" else None
            got = ragged_bag(table, ids, offsets, mode=mode, per_sample_weights=w, **bag_kw)
            want = ragged_bag_reference(table, ids, offsets, mode=mode, per_sample_weights=w)
            torch.testing.assert_close(got, want, **TOL[torch.float32])
        other = ids.flip(0)
        torch.testing.assert_close(
            ragged_dot(table, ids, table, other, **kw),
            (x[ids].double() * x[other].double()).sum(1).float(),
            **TOL[torch.float32],
        )
        bad = torch.tensor([3, 70, 1], device=device)  # position 1 is out of range
        out = ragged_gather(table, bad, check_bounds=False, **kw)
        assert torch.equal(out[[0, 2]], x[[3, 1]]) and not out[1].any()
        with pytest.raises(RuntimeError, match="id 70 at position 1"):
            ragged_gather(table, bad, check_bounds=True, **kw)
        with pytest.raises(RuntimeError, match="position 1"):
            ragged_bag(table, bad, offsets[:2], check_bounds=True, **bag_kw)
        with pytest.raises(RuntimeError, match="position 1"):
            ragged_dot(table, bad, table, bad.flip(0), check_bounds=True, **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", [1, 7, 64, 160])
@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("include_last", [False, True])
def test_bag_matches_reference(dtype, k, mode, include_last, device, variant):
    _, table = _table(30, k, dtype=dtype, device=device)
    ids = torch.tensor([1, 1, 0, 29, 5, 5, 5, 12], device=device)
    offsets = torch.tensor([0, 3, 3, 4], device=device)  # an empty bag
    if include_last:
        offsets = torch.cat([offsets, torch.tensor([8], device=device)])
    got = ragged_bag(
        table,
        ids,
        offsets,
        mode=mode,
        include_last_offset=include_last,
        backend="extension",
        **variant,
    )
    ref = ragged_bag_reference(table, ids, offsets, mode=mode, include_last_offset=include_last)
    torch.testing.assert_close(got, ref, **TOL[dtype])
    empty = ragged_bag(table, ids[:0], offsets[:0], backend="extension", **variant)
    assert empty.shape == (0, k)


@pytest.mark.parametrize("k", [7, 64, 100])
def test_long_bags_across_tiles_match_reference(k):
    """Row starts are precomputed for a thread's lookups 64 at a time and values
    prefetched ahead, so bags spanning several tiles, of uneven lengths, with hot and
    zero-kept rows, weighted or averaged, must still sum to the reference; K = 64 takes
    the register-resident AVX-512 sum, K = 100 the per-row path."""
    _, table = _table(500, k, keep=0.25, seed=k)
    g = torch.Generator().manual_seed(k)
    ids = torch.randint(0, 500, (2000,), generator=g)
    ids[::3] = 1  # the all-kept hot row
    ids[1::7] = 0  # the zero-kept row
    offsets = torch.tensor([0, 0, 5, 300, 301, 1100, 1990])  # an empty bag first
    weights = torch.rand(2000, generator=g)
    for mode, w in (("sum", None), ("mean", None), ("sum", weights)):
        got = ragged_bag(table, ids, offsets, mode=mode, per_sample_weights=w, backend="extension")
        ref = ragged_bag_reference(table, ids, offsets, mode=mode, per_sample_weights=w)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)
    # with include_last_offset the lookups after the last offset belong to no bag
    got = ragged_bag(table, ids, offsets, include_last_offset=True, backend="extension")
    ref = ragged_bag_reference(table, ids, offsets, include_last_offset=True)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k", [7, 64, 100])
def test_many_bags_empty_anywhere_split_across_threads_match_reference(k):
    """The AVX-512 bag walks a thread's lookups tile by tile and stores each bag when its
    last lookup is in: empty bags first, in runs, and last, bags ending on a tile edge
    (64 lookups), and hundreds of bags (split between threads) must all come out right."""
    _, table = _table(300, k, keep=0.3, seed=k)
    g = torch.Generator().manual_seed(k)
    lengths = torch.randint(0, 9, (400,), generator=g)
    lengths[:3] = 0  # leading empty bags
    lengths[100:110] = 0  # a run of empty bags
    lengths[-4:] = 0  # trailing empty bags
    lengths[200], lengths[201] = 64 - int(lengths[:200].sum()) % 64, 64  # ends on tile edges
    ids = torch.randint(0, 300, (int(lengths.sum()),), generator=g)
    ids[::4] = 1  # the all-kept hot row
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    weights = torch.rand(ids.numel(), generator=g)
    for mode, w in (("sum", None), ("mean", None), ("sum", weights)):
        got = ragged_bag(table, ids, offsets, mode=mode, per_sample_weights=w, backend="extension")
        ref = ragged_bag_reference(table, ids, offsets, mode=mode, per_sample_weights=w)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)
        assert got[-4:].eq(0).all() and got[:3].eq(0).all()
    bad = ids.clone()
    bad[17] = 300
    with pytest.raises(RuntimeError, match="id 300 at position 17"):
        ragged_bag(table, bad, offsets, backend="extension")


@pytest.mark.parametrize("ids_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("k", [7, 64])
def test_bags_over_hot_and_cold_rows_match_reference_call_after_call(k, ids_dtype):
    """The AVX-512 bag copies a chunk's first rows (the hottest, ids being frequency-sorted;
    up to 4096, at most a sixteenth of the chunk's lookups) into a per-thread buffer at the
    start of every call and serves the other rows by locating them: bags mixing both, with
    every row of the table looked up (so whatever the thread count makes the boundary,
    rows on both sides of it are read), must match the reference, and a later call on
    another table with the same ids must not see the first table's rows."""
    g = torch.Generator().manual_seed(k)
    tables = []
    for seed in (1, 2):
        _, table = _table(6000, k, keep=0.4, seed=seed + k)
        tables.append(table)
    ids = torch.randint(0, 6000, (70_000,), generator=g)
    ids[::3] = torch.randint(0, 4096, (23_334,), generator=g)  # hot rows, many repeated
    ids[1::9] = 0  # the zero-kept row, hot
    ids[: 6000 * 5 : 5] = torch.arange(6000)  # every row
    ids = ids.to(ids_dtype)
    offsets = torch.arange(0, 70_000, 10)
    weights = torch.rand(70_000, generator=g)
    weights[::7] = 0.0
    for table in (*tables, tables[0]):
        for mode, w in (("sum", None), ("mean", None), ("sum", weights)):
            got = ragged_bag(
                table, ids, offsets, mode=mode, per_sample_weights=w, backend="extension"
            )
            ref = ragged_bag_reference(table, ids, offsets, mode=mode, per_sample_weights=w)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)
    # unchecked out-of-range ids add nothing: as row 0, which keeps no dim
    bad = ids.clone()
    bad[7::101], bad[8::101] = -1, 6000
    clean = torch.where((bad < 0) | (bad >= 6000), 0, bad)
    for w in (None, weights):
        got = ragged_bag(
            tables[0], bad, offsets, per_sample_weights=w, check_bounds=False, backend="extension"
        )
        ref = ragged_bag_reference(tables[0], clean, offsets, per_sample_weights=w)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)


def _table_with_corrupt_row_100():
    """(dense (5000, 60) float32, its RaggedTable, the same table but for row 100's mask,
    which keeps a dim at or past dim: that row no longer fits)."""
    x, table = _table(5000, 60, keep=0.4, seed=3)
    masks = table.masks.clone()
    masks[100, 0] |= 1 << 62
    corrupt = RaggedTable(
        masks, table.values, table.group_offsets, 60, table.group_size, validate=False
    )
    return x, table, corrupt


def test_corrupt_row_among_the_copied_rows_raises_only_when_looked_up():
    """The rows copied at the start of a bag call are checked as they are copied; a row
    that does not fit ends the copy there (the rows after it are located per lookup), so
    it raises only when a lookup reads it, like every other row."""
    x, table, corrupt = _table_with_corrupt_row_100()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 5000, (80_000,), generator=g)
    ids[::2] = torch.randint(0, 400, (40_000,), generator=g)
    ids[(ids >= 96) & (ids < 112)] = 5  # nothing from row 100's group of 16
    offsets = torch.arange(0, 80_000, 20)
    got = ragged_bag(corrupt, ids, offsets, backend="extension")
    ref = torch.nn.functional.embedding_bag(ids, x.float(), offsets, mode="sum")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)
    ids[12_345] = 100
    with pytest.raises(ValueError, match="inconsistent ragged table: the mask of row 100"):
        ragged_bag(corrupt, ids, offsets, backend="extension")


def test_bag_per_sample_weights_gradcheck_and_matches_embedding_bag():
    x, table = _table(12, 9, dtype=torch.float64)
    ids, offsets = torch.tensor([2, 3, 3, 11, 1]), torch.tensor([0, 2, 2])
    w = torch.rand(5, dtype=torch.float64, requires_grad=True)

    def f(w):
        return ragged_bag(table, ids, offsets, per_sample_weights=w, backend="extension")

    ref = torch.nn.functional.embedding_bag(ids, x, offsets, mode="sum", per_sample_weights=w)
    torch.testing.assert_close(f(w), ref)
    assert torch.autograd.gradcheck(f, (w,))


@pytest.mark.parametrize("include_last", [False, True])
@pytest.mark.parametrize("offsets_dtype", [torch.int64, torch.int32], ids=str)
def test_bag_weights_grad_matches_embedding_bag_with_empty_bags(include_last, offsets_dtype):
    """The C++ autograd's bag of each lookup: empty bags (first, middle, last), duplicate
    ids, int32 offsets, include_last_offset; the weights' gradient is F.embedding_bag's."""
    x, table = _table(30, 19, seed=3, dtype=torch.float64)
    ids = torch.tensor([4, 4, 29, 0, 7, 7, 7, 12, 3])
    starts = [0, 0, 3, 3, 8, 9] if include_last else [0, 0, 3, 3, 8, 9, 9]
    offsets = torch.tensor(starts, dtype=offsets_dtype)
    w = torch.rand(ids.numel(), dtype=torch.float64, requires_grad=True)
    w_ref = w.detach().clone().requires_grad_(True)
    got = ragged_bag(
        table, ids, offsets, per_sample_weights=w, include_last_offset=include_last,
        backend="extension",
    )  # fmt: skip
    ref = torch.nn.functional.embedding_bag(
        ids, x, offsets.long(), mode="sum", per_sample_weights=w_ref,
        include_last_offset=include_last,
    )  # fmt: skip
    torch.testing.assert_close(got, ref)
    grad = torch.randn_like(ref)
    got.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(w.grad, w_ref.grad)


def test_bag_without_a_weight_gradient_records_no_graph():
    """Weights that need no gradient (none, requires_grad False, or grad mode off) go
    straight to the kernel: the output has no grad_fn; weights that need one get it."""
    _, table = _table(12, 9, dtype=torch.float64)
    ids, offsets = torch.tensor([2, 3, 3, 11, 1]), torch.tensor([0, 2, 2])
    w = torch.rand(5, dtype=torch.float64, requires_grad=True)
    assert ragged_bag(table, ids, offsets, backend="extension").grad_fn is None
    plain = w.detach()
    assert ragged_bag(table, ids, offsets, per_sample_weights=plain).grad_fn is None
    with torch.no_grad():
        assert ragged_bag(table, ids, offsets, per_sample_weights=w).grad_fn is None
    assert ragged_bag(table, ids, offsets, per_sample_weights=w).grad_fn is not None


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", [1, 7, 64, 160])
@pytest.mark.parametrize("ids_dtype", [torch.int64, torch.int32], ids=str)
def test_dot_matches_reference(dtype, k, ids_dtype, device, gather_variant):
    xa, ta = _table(25, k, keep=0.5, seed=1, dtype=dtype, device=device)
    xb, tb = _table(18, k, keep=0.5, seed=2, dtype=dtype, group_size=4, device=device)
    ia = torch.randint(0, 25, (30,), device=device)
    ib = torch.randint(0, 18, (30,), device=device)
    ia[:3] = 1
    ib[:3] = torch.tensor([0, 1, 1], device=device)
    ia, ib = ia.to(ids_dtype), ib.to(ids_dtype)
    got = ragged_dot(ta, ia, tb, ib, backend="extension", **gather_variant)
    torch.testing.assert_close(got, ragged_dot_reference(ta, ia, tb, ib), **TOL[dtype])
    assert ragged_dot(ta, ia[:0], tb, ib[:0], backend="extension", **gather_variant).shape == (0,)


@pytest.mark.parametrize("ids_dtype", [torch.int64, torch.int32], ids=str)
def test_long_dot_over_hot_rows_matches_reference(ids_dtype):
    """Thousands of pairs (several threads' chunks, the pipeline's prologue and tail), hot
    rows repeated, a row keeping every dim, different group sizes on the two sides."""
    xa, ta = _table(300, 64, keep=0.4, seed=5)
    xb, tb = _table(200, 64, keep=0.4, seed=6, group_size=8)
    g = torch.Generator().manual_seed(7)
    ia = (torch.randint(0, 300, (3001,), generator=g) ** 2 // 300).to(ids_dtype)
    ib = torch.randint(0, 200, (3001,), generator=g).to(ids_dtype)
    ia[:5], ib[:5] = 1, 1  # row 1 keeps every dim on both sides
    got = ragged_dot(ta, ia, tb, ib, backend="extension")
    want = (xa[ia.long()] * xb[ib.long()]).sum(1).float()
    torch.testing.assert_close(got, want, **TOL[torch.float32])


@pytest.mark.parametrize("ids_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("k", [7, 64])
def test_dots_over_hot_and_cold_rows_match_reference_call_after_call(k, ids_dtype):
    """The AVX-512 dot copies each side's first rows (the hottest; up to 4096 for a table
    dotted with itself, 2048 a side for two tables, at most one per 16 looked-up rows) into
    a per-thread buffer at the start of every call and locates the other rows: pairs mixing
    both, every row of both tables looked up, must match the reference on one table dotted
    with itself and on two tables, and a later call on other tables with the same ids must
    not see the first call's rows; unchecked out-of-range ids score 0."""
    g = torch.Generator().manual_seed(k)
    tables = [_table(6000, k, keep=0.4, seed=seed + k)[1] for seed in (1, 2, 3)]
    n = 70_000
    ids_a = torch.randint(0, 6000, (n,), generator=g)
    ids_b = torch.randint(0, 6000, (n,), generator=g)
    ids_a[::3] = torch.randint(0, 2048, (len(ids_a[::3]),), generator=g)  # hot, repeated
    ids_b[1::2] = torch.randint(0, 4096, (len(ids_b[1::2]),), generator=g)
    ids_a[: 6000 * 5 : 5] = torch.arange(6000)  # every row, on both sides
    ids_b[1 : 6000 * 7 : 7] = torch.arange(6000)
    ids_a, ids_b = ids_a.to(ids_dtype), ids_b.to(ids_dtype)
    pairs = [(tables[0], tables[0]), (tables[0], tables[1]), (tables[2], tables[2])]
    for ta, tb in (*pairs, pairs[0]):
        got = ragged_dot(ta, ids_a, tb, ids_b, backend="extension")
        want = ragged_dot_reference(ta, ids_a, tb, ids_b)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    bad = ids_a.clone()
    bad[7::101], bad[8::101] = -1, 6000
    got = ragged_dot(tables[0], bad, tables[1], ids_b, check_bounds=False, backend="extension")
    want = ragged_dot_reference(tables[0], bad.clamp(0, 5999), tables[1], ids_b)
    want[7::101], want[8::101] = 0, 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_corrupt_row_among_the_dots_copied_rows_raises_only_when_looked_up():
    """As the bag: a row that does not fit ends the copy of the hot rows there, so a dot
    raises only when a pair reads it, and names the side."""
    x, table, corrupt = _table_with_corrupt_row_100()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 400, (40_000,), generator=g)
    ids[(ids >= 96) & (ids < 112)] = 5  # nothing from row 100's group of 16
    other = torch.randint(0, 5000, (40_000,), generator=g)
    got = ragged_dot(corrupt, ids, table, other, backend="extension")
    torch.testing.assert_close(got, (x[ids] * x[other]).sum(1), rtol=1e-5, atol=1e-4)
    other[12_345] = 100
    with pytest.raises(ValueError, match="table b.*row 100|row 100.*table b"):
        ragged_dot(table, ids, corrupt, other, backend="extension")


def test_out_of_range_id_is_named_on_every_device(device, variant):
    _, table = _table(10, 8, device=device)
    ids = torch.tensor([0, 1, 10], device=device)
    kw = {"backend": "extension", **no_bag(variant)}
    with pytest.raises(RuntimeError, match=r"id 10 at position 2 is out of range"):
        ragged_gather(table, ids, check_bounds=True, **kw)
    # unchecked: the bad id reads nothing and gives a zero row / zero score
    out = ragged_gather(table, ids, check_bounds=False, **kw)
    assert out[2].eq(0).all() and out[1].ne(0).any()
    offsets = torch.tensor([0, 2], device=device)
    bag = ragged_bag(table, ids, offsets, check_bounds=False, backend="extension", **variant)
    assert bag[1].eq(0).all()
    dot = ragged_dot(table, ids, table, ids, check_bounds=False, **kw)
    assert dot[2] == 0 and dot[1] > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, "int8"], ids=str)
def test_gather_into_an_out_buffer_that_starts_off_alignment(dtype, device, gather_variant):
    """A contiguous out= view one element into its storage (K % 4 == 0, so the CUDA kernel's
    4-dim vector stores would be misaligned if it assumed an aligned base)."""
    x, table = _table(30, 8, dtype=dtype, device=device)
    storage = torch.full((6 * 8 + 1,), float("nan"), dtype=_rows(dtype), device=device)
    out = storage[1:].view(6, 8)
    ids = torch.tensor([0, 3, 3, 29, 1, 7], device=device)
    assert ragged_gather(table, ids, out=out, backend="extension", **gather_variant) is out
    assert torch.equal(out, x[ids]) and storage[0].isnan()


def test_malformed_bag_offsets_and_weights_are_refused(device):
    _, table = _table(10, 8, device=device)
    ids = torch.tensor([0, 1, 2, 3], device=device)
    for offsets, what in (
        ([0, 3, 2], "non-decreasing"),
        ([0, 5], "non-decreasing"),
        ([0, -1], "non-decreasing"),
        ([1, 2], "start at 0"),
    ):
        with pytest.raises(RuntimeError, match=f"offsets must.*{what}"):
            ragged_bag(
                table,
                ids,
                torch.tensor(offsets, device=device),
                check_bounds=True,
                backend="extension",
            )
    with pytest.raises(RuntimeError, match="one weight per id"):
        ragged_bag(
            table,
            ids,
            torch.tensor([0, 2], device=device),
            per_sample_weights=torch.ones(3, device=device),
            backend="extension",
        )


@pytest.mark.cuda
@NEEDS_CUDA_EXT
def test_cuda_ops_refuse_inputs_on_another_device():
    _, table = _table(10, 8, device="cuda")
    ids = torch.tensor([0, 1])
    with pytest.raises(RuntimeError, match="ids must be on cuda"):
        ragged_gather(table, ids, backend="extension")
    with pytest.raises(RuntimeError, match="ids must be on cuda"):
        ragged_bag(table, ids, torch.tensor([0]), backend="extension")
    with pytest.raises(RuntimeError, match="ids_a must be on cuda"):
        ragged_dot(table, ids, table, ids, backend="extension")


def test_cpu_kernels_accept_every_cuda_variant_and_ignore_it():
    """Every variant argument reaches the CPU kernels through the schema and changes
    nothing there: the same rows, bags and scores, bit for bit."""
    _, table = _table(40, 7)
    ids = torch.randint(0, 40, (50,), generator=torch.Generator().manual_seed(0))
    offsets = torch.tensor([0, 3, 3, 20])
    gather = ragged_gather(table, ids, backend="extension")
    bag = ragged_bag(table, ids, offsets, mode="mean", backend="extension")
    dot = ragged_dot(table, ids, table, ids.flip(0), backend="extension")
    for kw in BAG_VARIANTS.values():
        got = ragged_bag(table, ids, offsets, mode="mean", backend="extension", **kw)
        assert torch.equal(got, bag)
        assert torch.equal(ragged_gather(table, ids, backend="extension", **no_bag(kw)), gather)
        got = ragged_dot(table, ids, table, ids.flip(0), backend="extension", **no_bag(kw))
        assert torch.equal(got, dot)


def test_bad_kernel_variants_are_refused_naming_argument_and_value(device):
    """By the Python ops (ValueError, on every backend) and by the kernels themselves
    (RuntimeError from TORCH_CHECK), on every device."""
    _, table = _table(10, 8, device=device)
    ids = torch.tensor([0, 1], device=device)
    offsets = torch.tensor([0], device=device)
    for backend in ("extension", "reference"):
        with pytest.raises(ValueError, match="lookups_at_once must be 1, 2, 4 or 8.*got 3"):
            ragged_gather(table, ids, lookups_at_once=3, backend=backend)
        with pytest.raises(ValueError, match="bag_kernel must be one of.*'fast'"):
            ragged_bag(table, ids, offsets, bag_kernel="fast", backend=backend)
        with pytest.raises(ValueError, match="lookups_at_once must be 1, 2, 4 or 8.*got 16"):
            ragged_dot(table, ids, table, ids, lookups_at_once=16, backend=backend)
    t = (table.masks, table.values, table.group_offsets, table.group_size, 8)
    ops = torch.ops.mixemb
    with pytest.raises(RuntimeError, match="ragged_gather: lookups_at_once must be.*got 3"):
        ops.ragged_gather(*t, ids, True, False, 3)
    with pytest.raises(RuntimeError, match="ragged_gather_out: lookups_at_once must be.*got 0"):
        ops.ragged_gather_out(*t, ids, torch.empty(2, 8, device=device), True, False, 0)
    with pytest.raises(RuntimeError, match="bag_kernel must be 'halves' or 'lanes', got 'fast'"):
        ops.ragged_bag(*t, ids, offsets, 0, None, False, True, "fast")
    with pytest.raises(RuntimeError, match="ragged_bag: lookups_at_once must be.*got 5"):
        ops.ragged_bag(*t, ids, offsets, 0, None, False, True, "lanes", False, 5)
    with pytest.raises(RuntimeError, match="ragged_dot: lookups_at_once must be.*got -1"):
        ops.ragged_dot(*t[:4], *t[:4], 8, ids, ids, True, False, -1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=str)
def test_bag_variants_match_float64_sums(dtype, index_dtype, device, variant):
    """Every bag kernel across dtypes and id types: hot and duplicate ids, bags of 0, 1,
    31, 32, 33 and 70 lookups (the lanes kernel's chunks of 32 and their tails), sum, mean
    and weighted sum, include_last_offset; against float64 sums of the stored values."""
    x, table = _table(50, 64, dtype=dtype, device=device)
    x = x.cpu().double()
    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor([0, 1, 31, 32, 33, 70, 0])
    ids = torch.randint(0, 50, (int(lengths.sum()),), generator=g) ** 2 // 50  # hot low ids
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    weights = torch.rand(ids.numel(), generator=g, dtype=torch.float64).to(_rows(dtype))
    bag_of = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    for mode, w, last in (("sum", None, False), ("mean", None, True), ("sum", weights, True)):
        rows = x[ids] * (1.0 if w is None else w.double().unsqueeze(1))
        want = torch.zeros(len(lengths), 64, dtype=torch.float64).index_add_(0, bag_of, rows)
        if mode == "mean":
            want /= lengths.clamp(min=1).unsqueeze(1)
        got = ragged_bag(
            table,
            ids.to(device, index_dtype),
            (offsets if last else offsets[:-1]).to(device, index_dtype),
            mode=mode,
            per_sample_weights=None if w is None else w.to(device),
            include_last_offset=last,
            backend="extension",
            **variant,
        )
        torch.testing.assert_close(got.cpu().double(), want, **TOL[dtype])


def test_out_of_range_ids_are_named():
    _, table = _table(10, 8)
    with pytest.raises(RuntimeError, match="id -1"):
        ragged_bag(table, torch.tensor([-1]), torch.tensor([0]), backend="extension")
    with pytest.raises(RuntimeError, match="id 99"):
        ragged_dot(table, torch.tensor([99]), table, torch.tensor([0]), backend="extension")
    with pytest.raises(RuntimeError, match="offsets must start at 0"):
        ragged_bag(table, torch.tensor([1, 2]), torch.tensor([1]), backend="extension")


def test_opcheck_every_op(device):
    _, table = _table(20, 10, dtype=torch.float64, device=device)
    t = (table.masks, table.values, table.group_offsets, table.group_size, 10)
    ids = torch.tensor([[1, 3], [19, 0]], device=device)
    torch.library.opcheck(torch.ops.mixemb.ragged_gather.default, (*t, ids, True))
    out = torch.empty(2, 2, 10, dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.mixemb.ragged_gather_out.default, (*t, ids, out, True))
    w = torch.rand(4, dtype=torch.float64, device=device, requires_grad=True)
    flat, offsets = ids.reshape(-1), torch.tensor([0, 1], device=device)
    torch.library.opcheck(
        torch.ops.mixemb.ragged_bag.default, (*t, flat, offsets, 0, w, False, True)
    )
    torch.library.opcheck(
        torch.ops.mixemb.ragged_bag.default, (*t, flat, offsets, 1, None, False, True)
    )
    torch.library.opcheck(
        torch.ops.mixemb.ragged_dot.default, (*t[:4], *t[:4], 10, flat, flat, True)
    )
    # the kernel variant arguments, through the schema and the fake kernels
    torch.library.opcheck(torch.ops.mixemb.ragged_gather.default, (*t, ids, True, True, 2))
    torch.library.opcheck(
        torch.ops.mixemb.ragged_gather_out.default, (*t, ids, out, True, False, 8)
    )
    torch.library.opcheck(
        torch.ops.mixemb.ragged_bag.default,
        (*t, flat, offsets, 0, w, False, True, "lanes", False, 1),
    )
    torch.library.opcheck(
        torch.ops.mixemb.ragged_dot.default, (*t[:4], *t[:4], 10, flat, flat, True, True, 4)
    )


def test_opcheck_every_op_on_an_int8_table(device):
    """The scale_bias arguments through the schema, the fake kernels (float32 outputs) and
    ragged_bag's autograd (its backward gathers the int8 rows)."""
    _, table = _table(20, 10, dtype="int8", device=device)
    t = (table.masks, table.values, table.group_offsets, table.group_size, 10)
    sb = {"scale_bias": table.scale_bias}
    ids = torch.tensor([[1, 3], [19, 0]], device=device)
    ops = torch.ops.mixemb
    torch.library.opcheck(ops.ragged_gather.default, (*t, ids, True), sb)
    out = torch.empty(2, 2, 10, device=device)
    torch.library.opcheck(ops.ragged_gather_out.default, (*t, ids, out, True), sb)
    w = torch.rand(4, device=device, requires_grad=True)
    flat, offsets = ids.reshape(-1), torch.tensor([0, 1], device=device)
    torch.library.opcheck(ops.ragged_bag.default, (*t, flat, offsets, 0, w, False, True), sb)
    torch.library.opcheck(ops.ragged_bag.default, (*t, flat, offsets, 1, None, False, True), sb)
    both = {"scale_bias_a": table.scale_bias, "scale_bias_b": table.scale_bias}
    torch.library.opcheck(ops.ragged_dot.default, (*t[:4], *t[:4], 10, flat, flat, True), both)


def test_int8_bag_weight_gradient_matches_reference(device):
    _, table = _table(20, 10, dtype="int8", device=device)
    ids = torch.tensor([1, 3, 19, 0, 3], device=device)
    offsets = torch.tensor([0, 2], device=device)
    w = torch.rand(5, device=device, requires_grad=True)
    w_ref = w.detach().clone().requires_grad_(True)
    got = ragged_bag(table, ids, offsets, per_sample_weights=w, backend="extension")
    want = ragged_bag_reference(table, ids, offsets, per_sample_weights=w_ref)
    grad = torch.randn_like(got)
    got.backward(grad)
    want.backward(grad)
    torch.testing.assert_close(w.grad, w_ref.grad, **TOL["int8"])


@pytest.mark.parametrize("k", [1, 7, 64, 100])
def test_int8_edge_tables_match_reference(k, device, variant):
    """One row; no kept value at all; a constant row (scale 0); rows of fp16-edge values;
    every op, every kernel variant, against the reference and quant's dequantization."""
    from mixemb.quant import round_segments

    g = torch.Generator().manual_seed(k)
    one = torch.randn(1, k, generator=g)
    edge = torch.randn(6, k, generator=g)
    edge[0] = 0  # no kept dim
    edge[1] = 3.0  # constant: scale 0, bias 3
    edge[2, : (k + 1) // 2] = 60000.0  # near fp16's max, with the rest far below
    edge[3] = -1e-6 * torch.arange(1, k + 1)
    for dense in (one, torch.zeros(3, k), edge):
        table = RaggedTable.from_dense(dense, dtype="int8")
        present = dense != 0
        served = torch.zeros_like(dense)
        served[present] = round_segments(dense[present], present.sum(1), "int8")
        n = dense.shape[0]
        table = table.to(device)
        ids = (torch.arange(3 * n) % n).flip(0).to(device)
        rows = ragged_gather(table, ids, backend="extension", **no_bag(variant))
        assert rows.dtype == torch.float32
        assert torch.equal(rows.cpu(), served[ids.cpu()])
        assert torch.equal(rows, ragged_gather_reference(table, ids))
        offsets = torch.tensor([0, 0, 2], device=device)  # an empty bag first
        got = ragged_bag(table, ids, offsets, mode="mean", backend="extension", **variant)
        want = ragged_bag_reference(table, ids, offsets, mode="mean")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-2 if n == 6 else 1e-5)
        got = ragged_dot(table, ids, table, ids.flip(0), backend="extension", **no_bag(variant))
        want = ragged_dot_reference(table, ids, table, ids.flip(0))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert ragged_gather(table, ids[:0], backend="extension").shape == (0, k)
        assert ragged_bag(table, ids[:0], offsets[:0], backend="extension").shape == (0, k)


def test_int8_scale_bias_is_checked_by_kernels_and_reference(device):
    """uint8 values need their (N, 2) float16 scale_bias and float values must have none:
    a one-line error from every op and the reference, never a read past the tensor."""
    _, table = _table(10, 8, dtype="int8", device=device)
    _, float_table = _table(10, 8, device=device)
    ids = torch.tensor([0, 9], device=device)
    t = (table.masks, table.values, table.group_offsets, 16, 8)
    ops = torch.ops.mixemb
    bad = {
        "None": (None, "needs its \\(N, 2\\) float16 scale_bias"),
        "short": (table.scale_bias[:9], r"scale_bias must be \(10, 2\) float16"),
        "float32": (table.scale_bias.float(), r"scale_bias must be \(10, 2\) float16"),
        "strided": (table.scale_bias.t().contiguous().t(), "scale_bias must be contiguous"),
    }
    for sb, message in bad.values():
        with pytest.raises(RuntimeError, match=message):
            ops.ragged_gather(*t, ids, True, scale_bias=sb)
        with pytest.raises(RuntimeError, match=message):
            ops.ragged_bag(*t, ids, ids[:1] * 0, 0, None, False, True, scale_bias=sb)
        with pytest.raises(RuntimeError, match=message):
            ops.ragged_dot(*t[:4], *t[:4], 8, ids, ids, True, scale_bias_a=sb, scale_bias_b=sb)
    f = (float_table.masks, float_table.values, float_table.group_offsets, 16, 8)
    with pytest.raises(RuntimeError, match="scale_bias is for int8 tables"):
        ops.ragged_gather(*f, ids, True, scale_bias=table.scale_bias)
    with pytest.raises(RuntimeError, match="same value dtype"):
        ragged_dot(table, ids, float_table, ids, backend="extension")
    table.scale_bias = table.scale_bias[:9]
    with pytest.raises(ValueError, match=r"scale_bias must be \(10, 2\) float16"):
        ragged_gather_reference(table, ids)


@pytest.mark.slow
def test_model_on_ragged_embedding_compiles_without_graph_breaks(device):
    from mixemb.models import build_model
    from mixemb.nn import RaggedEmbedding

    x, table = _table(50, 16)
    model = build_model("deepfm", 50, 3, 16, embedding=RaggedEmbedding(table), hidden=[8])
    model = model.eval().to(device)
    ids = torch.randint(0, 50, (32, 3), device=device)
    eager = model(ids)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(ids), eager)


def test_model_on_ragged_embedding_exports_saves_and_loads(tmp_path):
    """torch.export (the path to AOTInductor and C++ serving): the graph calls the op, the
    batch stays dynamic, and a saved program reloads and predicts like the eager model."""
    from mixemb.models import build_model
    from mixemb.nn import RaggedEmbedding

    x, table = _table(50, 16)
    model = build_model("deepfm", 50, 3, 16, embedding=RaggedEmbedding(table), hidden=[8]).eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        model, (torch.randint(0, 50, (8, 3)),), dynamic_shapes=({0: batch},)
    )
    targets = {n.target for n in program.graph.nodes if n.op == "call_function"}
    assert torch.ops.mixemb.ragged_gather.default in targets
    path = tmp_path / "deepfm.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    for rows in (1, 5, 33):
        ids = torch.randint(0, 50, (rows, 3))
        torch.testing.assert_close(loaded(ids), model(ids))


def test_auto_backend_uses_the_extension_and_reference_is_selectable():
    _, table = _table(10, 8)
    ids = torch.tensor([3, 4])
    assert torch.equal(ragged_gather(table, ids), ragged_gather(table, ids, backend="reference"))
    with pytest.raises(ValueError, match="backend"):
        ragged_gather(table, ids, backend="cuda-magic")
    assert "built without CUDA" in _ext.describe() or "with CUDA" in _ext.describe()


def test_without_the_extension_ops_fall_back_with_one_warning(monkeypatch):
    _, table = _table(12, 8)
    ids = torch.tensor([1, 5, 5])
    monkeypatch.setattr(_ext, "HAS_EXT", False)
    monkeypatch.setattr(_ext, "LOAD_ERROR", "ImportError: simulated")
    monkeypatch.setattr(_ext, "_warned", False)
    with pytest.warns(UserWarning, match="simulated.*pure-PyTorch references"):
        first = ragged_gather(table, ids)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        ragged_dot(table, ids, table, ids)
    assert torch.equal(first, ragged_gather_reference(table, ids))
    with pytest.raises(RuntimeError, match="not available"):
        ragged_gather(table, ids, backend="extension")


# ---- inconsistent tables: an error, never a crash ----------------------------------------
# Each case once crashed the process (SIGSEGV) or read heap memory: a corrupt table (its
# values replaced, group_offsets or masks edited, behind the RaggedTable's back or in a
# loaded state) served by an op. They run in one child process, so that a crash is seen
# as the child's signal (failing the case it happened in) instead of killing pytest.
_CORRUPT_SETUP = """
import json, sys, traceback
import torch
from mixemb.nn import RaggedEmbedding
from mixemb.ops import ragged_bag, ragged_dot, ragged_gather
from mixemb.ragged import RaggedTable

def good(k=10, n=50):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, k, generator=g) * (torch.rand(n, k, generator=g) < 0.5)
    return RaggedTable.from_dense(x)

def edit(name, index, value, k=10):
    t = good(k)
    getattr(t, name)[index] = value
    return t

def loaded(name, index, value):
    emb = RaggedEmbedding(good())
    state = {key: v.clone() for key, v in emb.state_dict().items()}
    state[name][index] = value
    emb.load_state_dict(state)
    return emb

ids = torch.arange(50)
bags = torch.tensor([0, 10, 30])
raw = torch.ops.mixemb
"""
CORRUPT_CASES = {
    # name: (the statement that once crashed, the error it must raise instead)
    "values_replaced_gather": (
        "t = good(); t.values = torch.ones(1); ragged_gather(t, ids)",
        "group_offsets run from 0 to .*, values hold 1",
    ),
    "values_replaced_bag": (
        "t = good(); t.values = torch.ones(1); ragged_bag(t, ids, bags)",
        "values hold 1",
    ),
    "values_replaced_dot": (
        "t = good(); t.values = torch.ones(1); ragged_dot(good(), ids, t, ids)",
        "values hold 1",
    ),
    "group_offset_2e40_gather": (
        "ragged_gather(edit('group_offsets', 1, 2**40), ids)",
        r"row 16 would read values \[1099511627776",
    ),
    "group_offset_negative_bag": (
        "ragged_bag(edit('group_offsets', 2, -7), ids, bags)",
        # row 32 from its group's offset; on AVX-512 the bag's listed lookups locate a
        # group's second half (rows 24-31) from the next group's offset, so row 24 first
        r"row (32 would read values \[-7|24 would read values \[-48)",
    ),
    "group_offset_int64_max_dot": (
        "ragged_dot(edit('group_offsets', 1, 2**63 - 1), ids, good(), ids)",
        "would read values",
    ),
    "masks_all_ones_gather": (
        "ragged_gather(edit('masks', 3, -1), ids)",
        "mask of row 3 keeps dims at or past dim",
    ),
    "masks_all_ones_bag": (
        "ragged_bag(edit('masks', 3, -1), ids, bags)",
        "mask of row 3 keeps dims",
    ),
    "masks_all_ones_k64_dot": (  # the last row: its 64 values would run past the end
        "ragged_dot(edit('masks', 49, -1, k=64), ids, good(64), ids)",
        "row 49 would read values",
    ),
    "raw_op_bad_offsets": (
        "t = edit('group_offsets', 1, 2**40); "
        "raw.ragged_gather(t.masks, t.values, t.group_offsets, 16, 10, ids)",
        "would read values",
    ),
    "raw_op_bad_offsets_out": (
        "t = edit('group_offsets', 3, -(2**40)); out = torch.empty(50, 10); "
        "raw.ragged_gather_out(t.masks, t.values, t.group_offsets, 16, 10, ids, out, False)",
        "would read values",
    ),
    "raw_op_huge_group_size": (
        "t = good(); raw.ragged_gather(t.masks, t.values, t.group_offsets[:2], 2**62 + 1, 10, ids)",
        "values hold",
    ),
    "load_state_dict_bad_group_offsets": (
        "loaded('group_offsets', 1, 2**40)(ids)",
        "invalid ragged table in the module's state: group_offsets do not match",
    ),
    "load_state_dict_masks_minus_one": (
        "loaded('masks', 0, -1)(ids)",
        "masks of row 0 keep dims at or past embedding_dim=10",
    ),
    "from_state_dict_masks_minus_one": (
        "s = good().state_dict(); s['masks'][5] = -1; RaggedTable.from_state_dict(s)",
        "masks of row 5 keep dims",
    ),
}
_CORRUPT_RUN = """
for name, stmt in CASES.items():
    print(json.dumps({"start": name}), flush=True)
    try:
        exec(stmt)
        print(json.dumps({"name": name, "error": None}), flush=True)
    except Exception as e:
        print(json.dumps({"name": name, "error": f"{type(e).__name__}: {e}"}), flush=True)
"""


@pytest.fixture(scope="module")
def corrupt_outcomes() -> dict:
    """name → the error the case raised (None: no error), or the child's death."""
    import json

    cases = {name: stmt for name, (stmt, _) in CORRUPT_CASES.items()}
    script = _CORRUPT_SETUP + f"CASES = {cases!r}\n" + _CORRUPT_RUN
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    outcomes, started = {}, None
    for line in run.stdout.splitlines():
        row = json.loads(line)
        if "start" in row:
            started = row["start"]
        else:
            outcomes[row["name"]] = row["error"]
    if run.returncode != 0:  # a signal is a negative return code
        outcomes[started] = f"CHILD DIED (returncode {run.returncode}): {run.stderr[-1500:]}"
    return outcomes


@pytest.mark.parametrize("case", list(CORRUPT_CASES))
def test_inconsistent_table_is_an_error_not_a_crash(case, corrupt_outcomes):
    assert case in corrupt_outcomes, "not run: the child process died at an earlier case"
    error = corrupt_outcomes[case]
    assert error is not None, "no error: the corrupt table was served"
    assert error.startswith("ValueError: "), error
    assert re.search(CORRUPT_CASES[case][1], error), error


def test_inconsistent_table_rows_read_nothing_and_raise_when_checked(device, variant):
    """Every kernel variant: a looked-up row outside the values (here a group offset moved
    past nnz) raises with check_bounds; on the GPU without it (no host sync), that row
    reads nothing: zeros, the other rows intact. gpu_check.sh runs it under memcheck."""
    for k in (10, 64, 100):
        x, table = _table(40, k, device=device)
        table.group_offsets[1] = table.group_offsets[1] + 10**6
        ids = torch.tensor([0, 1, 17, 2, 17], device=device)
        kw = {"backend": "extension", "check_bounds": True}
        with pytest.raises(ValueError, match="inconsistent ragged table"):
            ragged_gather(table, ids, **kw, **no_bag(variant))
        with pytest.raises(ValueError, match="inconsistent ragged table"):
            ragged_bag(table, ids, torch.tensor([0, 2], device=device), **kw, **variant)
        with pytest.raises(ValueError, match="inconsistent ragged table"):
            ragged_dot(table, ids, table, ids.flip(0), **kw, **no_bag(variant))
        if device == "cpu":
            continue  # the CPU kernels always check (above)
        kw["check_bounds"] = False
        rows = ragged_gather(table, ids, **kw, **no_bag(variant))
        assert rows[[2, 4]].eq(0).all() and torch.equal(rows[[0, 1, 3]], x[[0, 1, 2]])
        bag = ragged_bag(table, ids, torch.tensor([0, 2], device=device), **kw, **variant)
        torch.testing.assert_close(bag, torch.stack([x[0] + x[1], x[2]]))
        dot = ragged_dot(table, ids, table, ids.flip(0), **kw, **no_bag(variant))
        assert dot[[0, 2, 4]].eq(0).all()
