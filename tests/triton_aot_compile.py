"""Compile every Triton kernel variant the launchers would launch, for a CUDA target,
on a machine without a GPU (run as a script by tests/test_triton_compile.py).

The launchers of ``mixemb.kernels.soft_select``, ``.soft_select_weights``, ``.soft_select_bag``
and ``.block_table`` are called on CPU tensors with ``JITFunction.run`` replaced
by a recorder, so nothing launches; each recorded call becomes an ``ASTSource`` (pointer
and scalar types from the arguments, constexprs as passed) compiled by ``triton.compile`` for
``GPUTarget("cuda", ARCH, 32)`` down to a cubin. This catches what Triton's CPU
interpreter accepts but the compiler does not (types of loop-carried values,
scalar/vector masks, constexpr branches).

    python tests/triton_aot_compile.py [arch=90]   # one line per variant: module.kernel sm_ARCH
"""

from __future__ import annotations

import os
import sys

os.environ.pop("TRITON_INTERPRET", None)  # the real compiler, not the interpreter

import torch  # noqa: E402
import triton  # noqa: E402
import triton.runtime.jit as jit  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from mixemb.block_table import BlockTable  # noqa: E402
from mixemb.kernels import block_table as KT  # noqa: E402
from mixemb.kernels import soft_select as K  # noqa: E402
from mixemb.kernels import soft_select_bag as KB  # noqa: E402
from mixemb.kernels import soft_select_weights as KW  # noqa: E402

PTR = {
    torch.float32: "*fp32",
    torch.float16: "*fp16",
    torch.bfloat16: "*bf16",
    torch.float64: "*fp64",
    torch.int64: "*i64",
    torch.int32: "*i32",
    torch.uint8: "*u8",
}
RECORDED: list[tuple] = []


def _record(self, *args, grid, warmup, **kwargs):
    RECORDED.append((self, args, kwargs))


def _signature(fn, args, kwargs):
    sig, consts = {}, {}
    values = dict(zip(fn.arg_names, args))
    values.update({k: v for k, v in kwargs.items() if k in fn.arg_names})
    for i, p in enumerate(fn.params):
        v = values[p.name]
        if p.is_constexpr:
            sig[p.name] = "constexpr"
            consts[(i,)] = v
        elif isinstance(v, torch.Tensor):
            sig[p.name] = PTR[v.dtype]
        elif isinstance(v, bool):
            sig[p.name] = "i1"
        elif isinstance(v, int):
            sig[p.name] = "i32" if -(2**31) <= v < 2**31 else "i64"
        elif isinstance(v, float):
            sig[p.name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: cannot type {p.name}={v!r}")
    return sig, consts


def record_launches() -> None:
    """Call every launcher variant the op can take, on CPU tensors, recording launches."""
    g = torch.Generator().manual_seed(0)
    # by_map: blocks from a per-id block map (boundaries None), the BY_MAP kernels
    for dim, dtype, ids_dtype, with_values, by_map in [
        (64, torch.float32, torch.int64, False, False),
        (64, torch.float32, torch.int32, True, False),
        (1, torch.float32, torch.int64, False, False),
        (160, torch.float16, torch.int64, True, False),
        (1024, torch.bfloat16, torch.int32, False, False),
        (8, torch.float64, torch.int64, True, False),
        (64, torch.float32, torch.int64, True, True),
        (160, torch.float16, torch.int32, False, True),
    ]:
        n, num_blocks, m = 50, 10, 100
        w = torch.randn(n, dim, generator=g).to(dtype)
        a = torch.rand(num_blocks, dim, generator=g)
        b = torch.linspace(0, n, num_blocks + 1).long()
        bm = {}
        if by_map:
            b, bm = None, dict(block_map=torch.randint(0, num_blocks, (n,), generator=g))
        ids = torch.randint(0, n, (m,), generator=g).to(ids_dtype)
        v = torch.rand(m, generator=g) if with_values else None
        d = torch.randn(m, dim, generator=g).to(dtype)
        lr, state = torch.tensor([0.1]), torch.zeros(n)
        K.soft_select_fwd(w, a, b, ids, v, **bm)
        K.soft_select_bwd_alpha(d, w, a, b, ids, v, need_values=with_values, l1=1e-5, **bm)
        K.soft_select_bwd_alpha(d, w, a, b, ids, v, need_values=True, normalize=False, **bm)
        K.soft_select_bwd_rows(d, w, a, b, ids, v, **bm)
        KW.soft_select_bwd_weight(d, w, a, b, ids, v, **bm)
        KW.soft_select_bwd_weight(d, w, a, b, ids, v, deterministic=False, **bm)
        KW.soft_select_bwd_weight(d, w, a, b, ids, v, optimizer="sgd", lr=lr, **bm)
        KW.soft_select_bwd_weight(
            d, w, a, b, ids, v, optimizer="rowwise_adagrad", lr=lr, state=state, **bm
        )
        # stochastic rounding of the updated rows (fp16 / bf16 tables; fp32 / fp64 ignore it)
        for kind in ("sgd", "rowwise_adagrad"):
            KW.soft_select_bwd_weight(d, w, a, b, ids, v, optimizer=kind, lr=lr, state=state,
                                      stochastic_rounding=True, seed=123457, **bm)  # fmt: skip
        # the bag op: 30 bags over the lookups, sum (with the values as per-sample weights)
        # and mean
        offsets = torch.linspace(0, m, 31).long()
        d_bag = torch.randn(30, dim, generator=g).to(dtype)
        for mode, psw in (("sum", v), ("mean", None)):
            bag = dict(mode=mode, padding_idx=3, **bm)
            KB.soft_select_bag_fwd(w, a, b, ids, offsets, psw, **bag)
            KB.soft_select_bag_index(w, ids, offsets, mode=mode, padding_idx=3)
            KB.soft_select_bag_bwd_alpha(d_bag, w, a, b, ids, offsets, psw,
                                         need_values=psw is not None, **bag)  # fmt: skip
            KB.soft_select_bag_bwd_weight(d_bag, w, a, b, ids, offsets, psw, **bag)
    # the block-table gather (serving): every value dtype, int32 and int64 ids
    for dim, dtype, out_dtype, ids_dtype in [
        (64, torch.float32, torch.float32, torch.int64),
        (24, torch.float16, torch.float32, torch.int32),
        (64, torch.bfloat16, torch.bfloat16, torch.int64),
        (5, "int8", torch.float32, torch.int64),
    ]:
        n, num_blocks = 40, 4
        bounds = torch.linspace(0, n, num_blocks + 1).long()
        block_mask = torch.rand(num_blocks, dim, generator=g) < 0.5
        rows = block_mask.repeat_interleave(bounds.diff(), 0)
        table = BlockTable.from_block_mask(
            torch.randn(n, dim, generator=g) * rows, bounds, block_mask, dtype
        )
        layout, rank = table.serving_index()
        ids = torch.randint(0, n, (100,), generator=g).to(ids_dtype)
        KT.block_gather_fwd(
            table.values, table.scale_bias, table.boundaries, layout, rank, ids, out_dtype
        )


def main(arch: int = 90) -> int:
    real_run = jit.JITFunction.run
    jit.JITFunction.run = _record
    try:
        record_launches()
    finally:
        jit.JITFunction.run = real_run
    target = GPUTarget("cuda", arch, 32)
    seen = set()
    for fn, args, kwargs in RECORDED:
        sig, consts = _signature(fn, args, kwargs)
        key = (fn.__name__, tuple(sig.items()), tuple(sorted(map(str, consts.items()))))
        if key in seen:
            continue
        seen.add(key)
        options = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
        src = ASTSource(fn=fn, signature=sig, constexprs=consts)
        compiled = triton.compile(src, target=target, options=options)
        name = f"{fn.__module__}.{fn.__name__}"
        print(name, f"sm_{arch}", len(compiled.asm["cubin"]), "bytes", flush=True)
    print(f"compiled {len(seen)} variants", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*(int(a) for a in sys.argv[1:])))
