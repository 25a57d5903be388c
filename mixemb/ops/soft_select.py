"""``soft_select_lookup``: the DNIS lookup × α op family, in one place.

out[..., :] = weight[ids] ⊙ alpha[block(ids)] (⊙ values[..., None])

The backward is written by hand (not autograd of the expression) because DNIS wants
things autograd does not give:

* the α gradient **already normalized per block row**, in the order of the authors'
  code — L1 term inside, then normalization::

      g = Σ_{lookups in block l} weight[id] ⊙ dout (⊙ value)        # (L, K)
      g = g + l1 · sign(alpha)
      g̃ = g / (mean_k |g| + eps)          (only when normalize=True)

* the weight gradient as dense rows or as a sparse COO tensor of the looked-up rows,
  like ``nn.Embedding(sparse=True)``, so a 4M-row table is not densified per step;
* or no weight gradient at all: a fused optimizer updates the looked-up rows in place.

The table and the output gradient are handed to the kernels as they are when their
columns are unit-strided, whatever their row stride: a table that is a column slice of a
wider one, or the slice of a concatenation's gradient, is not copied per call. Only a
column-strided one (stride(-1) != 1) is copied; with a fused optimizer the updated copy is
then written back, so the caller's tensor is always the one updated.

A table with a fused optimizer may be looked up several times in one step. Each lookup's
backward applies its own update (SGD / row-wise Adagrad, the accumulator too), one after
another in the order autograd runs them — for lookups whose outputs reach the loss
independently, the reverse of the forward order — and computes its α (and values)
gradient from the table as the earlier backward calls of the step left it: the first
backward sees the forward's table. The forward outputs all read the forward's table.
The update bumps the table's version counter, as any in-place write does, so another
autograd user that saved the table (not a lookup with a fused optimizer) still gets
autograd's "modified by an inplace operation" error instead of stale values.

Where the math runs is decided once, by ``implementation``: the Triton kernels of
``mixemb.kernels.soft_select`` and ``mixemb.kernels.soft_select_weights`` (CUDA, or CPU
under Triton's interpreter) or the reference math of ``mixemb.reference`` (CPU; no Triton
needed at run time).

Two entry points share one forward and one backward (``_backward``):

* registered ops (``torch.ops.mixemb.*``) with fake kernels and autograd, what
  torch.compile and torch.export trace (and ``torch.library.opcheck`` checks):

  - ``soft_select(weight, alpha, boundaries, ids, values, normalize, l1, eps, sparse,
    deterministic) -> (*ids.shape, K)``
  - ``soft_select_backward_alpha(...) -> (dalpha (L, K), dvalues (*ids.shape) or (0,))``
  - ``soft_select_backward_weight(...) -> dense (N, K), or per-lookup rows (B, K) if sparse``
  - ``soft_select_fused_update_(...)`` — SGD / row-wise Adagrad on the looked-up rows of
    weight, in place (mutates weight and the optimizer state), rounding fp16 / bf16 rows
    stochastically when asked (with the given seed);

* ``_SoftSelect``, a plain ``torch.autograd.Function`` that eager calls take: it calls the
  launchers or the reference math directly, because the custom-op dispatcher (argument
  defaults, redispatch, alias checks) costs several times the launchers' host time per
  call (bench/bench_host_overhead.py). While compiling it calls the registered ops.
"""

from __future__ import annotations

import torch

from mixemb import reference as ref

Tensor = torch.Tensor
BACKENDS = ("auto", "reference", "triton")
# mixemb.kernels.soft_select and .soft_select_weights, imported on first use (triton is heavy)
_kernels = None
_weights_kernels = None


def kernels_run_on(t: Tensor) -> bool:
    """True when the Triton kernels run on ``t``'s device: CUDA, or CPU under Triton's
    interpreter (TRITON_INTERPRET=1 when mixemb.kernels was first imported)."""
    global _kernels, _weights_kernels
    if _kernels is None:
        try:
            from mixemb.kernels import soft_select as kernels
            from mixemb.kernels import soft_select_weights as weights_kernels
        except ImportError as e:  # triton is a dependency, but keep CPU use working
            if t.is_cuda:
                raise RuntimeError(f"backend='triton' needs the triton package: {e}") from e
            return False
        _kernels, _weights_kernels = kernels, weights_kernels
    return t.is_cuda or _kernels.INTERPRET


def implementation(weight: Tensor, backend: str, compiling: bool) -> str:
    """The one backend decision: which implementation a ``soft_select_lookup`` call runs.

    "reference": the reference math of ``mixemb.reference`` on the inputs as they come
    (backend "reference", and "auto" on CPU). "triton": what the registered ops run,
    called without the dispatcher — the Triton launchers where ``kernels_run_on`` says
    they run, else the same reference math on contiguous inputs (backend "triton", and
    "auto" on CUDA). "ops": the registered ops themselves, for "triton" while compiling.
    """
    if backend == "reference" or (backend == "auto" and not weight.is_cuda):
        return "reference"
    return "ops" if compiling else "triton"


# -------------------------------------------------------------- forward and backward math
# impl "triton" flattens ids and values contiguous and dout (B, K) with unit column stride
# (what the launchers need, and what the registered ops always did on CPU too); impl
# "reference" takes them as they come. A layout can change the summation order of a
# sparse gradient, so each keeps its own.


def as_rows(t: Tensor) -> Tensor:
    """The (R, K) matrix t itself where the kernels read it in place (unit column stride,
    any row stride), else a contiguous copy."""
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def _flat(ids: Tensor, values: Tensor | None, dout: Tensor | None, dim: int, impl: str):
    """(kernels?, ids (B,), values (B,) or None, dout (B, K) or None) for ``impl``;
    ids are int64 where the reference math runs."""
    flat, vals = ids.reshape(-1), None if values is None else values.reshape(-1)
    d = None if dout is None else dout.reshape(-1, dim)
    if impl == "triton":
        flat = flat.contiguous()
        vals = None if vals is None else vals.contiguous()
        d = None if d is None else as_rows(d)
        if kernels_run_on(ids):
            return True, flat, vals, d
    return False, flat.long(), vals, d


def _forward(weight, alpha, boundaries, block_map, ids, values, impl: str) -> Tensor:
    """(*ids.shape, K) in promote_types(weight, alpha)."""
    kernels, flat, vals, _ = _flat(ids, values, None, 0, impl)
    if kernels:
        out = _kernels.soft_select_fwd(
            as_rows(weight), alpha, boundaries, flat, vals, block_map=block_map
        )
    else:
        out = ref.reference_forward(weight, alpha, boundaries, flat, vals, block_map)
    return out.reshape(*ids.shape, weight.shape[1])


def _alpha_values_grad(
    dout, weight, alpha, boundaries, block_map, ids, values, need_alpha, need_values,
    normalize, l1, eps, impl: str, rows=None, blocks=None,
):  # fmt: skip
    """(dalpha (L, K) or None, dvalues (*ids.shape) or None); rows, blocks: see
    ``mixemb.reference.reference_alpha_values_grad``."""
    kernels, flat, vals, d = _flat(ids, values, dout, weight.shape[1], impl)
    if kernels:
        dalpha, dvalues = _kernels.soft_select_bwd_alpha(
            d, as_rows(weight), alpha, boundaries, flat, vals, need_alpha=need_alpha,
            need_values=need_values, normalize=normalize, l1=l1, eps=eps, block_map=block_map,
        )  # fmt: skip
    else:
        dalpha, dvalues = ref.reference_alpha_values_grad(
            d, weight, alpha, boundaries, flat, vals, need_alpha, need_values, normalize, l1,
            eps, rows=rows, blocks=blocks, block_map=block_map,
        )  # fmt: skip
    return dalpha, None if dvalues is None else dvalues.reshape(ids.shape)


def _weight_grad(
    dout, weight, alpha, boundaries, block_map, ids, values, sparse, deterministic, impl: str,
    scale=None,
) -> Tensor:  # fmt: skip
    """Dense (N, K) in weight's dtype, or the (B, K) per-lookup rows when sparse."""
    kernels, flat, vals, d = _flat(ids, values, dout, weight.shape[1], impl)
    if kernels:
        w = as_rows(weight)
        if sparse:
            return _kernels.soft_select_bwd_rows(
                d, w, alpha, boundaries, flat, vals, block_map=block_map
            )
        return _weights_kernels.soft_select_bwd_weight(
            d, w, alpha, boundaries, flat, vals, deterministic=deterministic, block_map=block_map
        )
    if sparse:
        return ref.reference_row_grads(d, weight, alpha, boundaries, flat, vals, scale, block_map)
    return ref.reference_weight_grad(d, weight, alpha, boundaries, flat, vals, scale, block_map)


def _fused_update(
    dout, weight, alpha, boundaries, block_map, ids, values, state, lr, optimizer,
    optimizer_eps, impl: str, stochastic_rounding: bool = False, seed: int = 0,
) -> None:  # fmt: skip
    """Update weight itself in place (a column-strided one through a copy written back)."""
    kernels, flat, vals, d = _flat(ids, values, dout, weight.shape[1], impl)
    if kernels:
        w = as_rows(weight)
        _weights_kernels.soft_select_bwd_weight(
            d, w, alpha, boundaries, flat, vals, block_map=block_map, optimizer=optimizer,
            lr=lr, state=state, optimizer_eps=optimizer_eps,
            stochastic_rounding=stochastic_rounding, seed=seed,
        )  # fmt: skip
        if w is not weight:
            weight.copy_(w)
    else:
        ref.fused_update_reference(
            d, weight, alpha, boundaries, flat, vals, state, lr, optimizer, optimizer_eps,
            block_map=block_map, stochastic_rounding=stochastic_rounding, seed=seed,
        )  # fmt: skip


def _backward(saved, needs, cfg, impl, dout):
    """(dweight, dalpha, dvalues), each None where not needed: the one backward.

    saved: (weight, alpha, boundaries, block_map, ids, values, rows, scale, blocks), the
    last three kept by the reference forward or None. needs: (weight, alpha, values) need
    grad. cfg: (normalize, l1, eps, sparse, deterministic, optimizer or None).
    """
    weight, alpha, boundaries, block_map, ids, values, rows, scale, blocks = saved
    need_w, need_a, need_v = needs
    normalize, l1, eps, sparse, deterministic, optimizer = cfg
    dweight = dalpha = dvalues = None
    if need_a or need_v:  # before a fused update: α's gradient sees the forward's table
        if impl == "ops":
            dalpha, dv = soft_select_backward_alpha(
                dout, weight, alpha, boundaries, ids, values, bool(need_v), normalize, l1, eps,
                block_map,
            )  # fmt: skip
        else:
            dalpha, dv = _alpha_values_grad(
                dout, weight, alpha, boundaries, block_map, ids, values, need_a, need_v,
                normalize, l1, eps, impl, rows=rows, blocks=blocks,
            )  # fmt: skip
        dalpha = dalpha if need_a else None
        dvalues = dv if need_v else None
    if need_w and optimizer is not None:
        vals = None if values is None else values.detach()
        opt = (optimizer.state, optimizer.lr, optimizer.kind, optimizer.eps)
        rounding = optimizer.rounding(weight.dtype)  # (stochastic, seed): advances the seed
        w, a = weight.detach(), alpha.detach()
        with torch.no_grad():
            if impl == "ops":
                soft_select_fused_update_(
                    dout, w, a, boundaries, ids, vals, *opt, block_map, *rounding
                )
            else:
                _fused_update(dout, w, a, boundaries, block_map, ids, vals, *opt, impl,
                              *rounding)  # fmt: skip
                # the kernels write memory autograd does not see: the version an in-place
                # op would leave (the registered op's dispatch bumps it itself)
                torch.autograd.graph.increment_version(w)
    elif need_w:
        if impl == "ops":
            dweight = soft_select_backward_weight(
                dout, weight, alpha, boundaries, ids, values, sparse, deterministic, block_map
            )
        else:
            dweight = _weight_grad(
                dout, weight, alpha, boundaries, block_map, ids, values, sparse, deterministic,
                impl, scale=scale,
            )  # fmt: skip
        if sparse:
            # out-of-range ids (unchecked on the GPU) have zero rows; clamped, they stay a
            # valid sparse tensor instead of indexing past the table when accumulated
            idx = ids.reshape(1, -1).long().clamp(0, weight.shape[0] - 1)
            dweight = torch.sparse_coo_tensor(idx, dweight, weight.shape, check_invariants=False)
    return dweight, dalpha, dvalues


class _SoftSelect(torch.autograd.Function):
    """The eager path (and the fused-optimizer path): forward and ``_backward`` on the
    implementation ``impl`` chose by ``implementation``. Like eager autograd, the
    reference forward keeps the gathered table rows (for α's and values' gradients) and α
    rows (for the table's), so the backward does not gather again; only what the inputs
    that need grad use is kept. With a fused optimizer the table is kept as a detached
    alias outside the saved tensors, and no gathered rows: the backward reads the table
    as earlier fused updates of the step left it (the module docstring's rule), which
    autograd's version check of a saved tensor would refuse."""

    @staticmethod
    def forward(ctx, weight, alpha, boundaries, block_map, ids, values, normalize, l1, eps,
                sparse, deterministic, impl, optimizer):  # fmt: skip
        need_w, need_a, _, _, _, need_v = ctx.needs_input_grad[:6]
        rows = scale = blocks = None
        if impl == "reference":
            flat = ids.reshape(-1).long()
            vals = None if values is None else values.reshape(-1)
            rows, scale, blocks = ref.reference_gather(weight, alpha, boundaries, flat, block_map)
            out = ref.reference_scale(rows, scale, vals).reshape(*ids.shape, weight.shape[1])
            rows = rows if (need_a or need_v) and optimizer is None else None
            scale = scale if need_w else None
        elif impl == "triton":
            out = _forward(weight, alpha, boundaries, block_map, ids, values, impl)
        else:
            out = soft_select(
                weight, alpha, boundaries, ids, values, normalize, l1, eps, sparse,
                deterministic, block_map,
            )  # fmt: skip
        ctx.table = None if optimizer is None else weight.detach()
        ctx.save_for_backward(
            weight if optimizer is None else None, alpha, boundaries, block_map, ids, values,
            rows, scale, blocks,
        )  # fmt: skip
        ctx.cfg = (normalize, l1, eps, sparse, deterministic, optimizer)
        ctx.impl = impl
        return out

    @staticmethod
    def backward(ctx, dout):
        need_w, need_a, _, _, _, need_v = ctx.needs_input_grad[:6]
        saved = ctx.saved_tensors
        if ctx.table is not None:
            saved = (ctx.table, *saved[1:])
        grads = _backward(saved, (need_w, need_a, need_v), ctx.cfg, ctx.impl, dout)
        dweight, dalpha, dvalues = grads
        return (dweight, dalpha, None, None, None, dvalues) + (None,) * 7


# ------------------------------------------------------------------------ registered ops


# Every op takes the block of an id from boundaries (L+1,) or, when given, from the
# trailing block_map (N,) int64 (then boundaries is None).


@torch.library.custom_op("mixemb::soft_select", mutates_args=())
def soft_select(
    weight: Tensor,
    alpha: Tensor,
    boundaries: Tensor | None,
    ids: Tensor,
    values: Tensor | None,
    normalize: bool,
    l1: float,
    eps: float,
    sparse: bool,
    deterministic: bool,
    block_map: Tensor | None = None,
) -> Tensor:
    """(*ids.shape, K) = weight[ids] ⊙ alpha[block(ids)] (⊙ values); see soft_select_lookup."""
    return _forward(weight, alpha, boundaries, block_map, ids, values, "triton")


@soft_select.register_fake
def _(weight, alpha, boundaries, ids, values, normalize, l1, eps, sparse, deterministic,
      block_map=None):  # fmt: skip
    dtype = torch.promote_types(weight.dtype, alpha.dtype)
    return weight.new_empty((*ids.shape, weight.shape[1]), dtype=dtype)


def _setup_context(ctx, inputs, output):
    weight, alpha, boundaries, ids, values, normalize, l1, eps, sparse, deterministic = inputs[:10]
    block_map = inputs[10] if len(inputs) > 10 else None
    ctx.save_for_backward(weight, alpha, boundaries, block_map, ids, values)
    ctx.cfg = (normalize, l1, eps, sparse, deterministic, None)


def _registered_backward(ctx, dout):
    need_w, need_a, _, _, need_v = ctx.needs_input_grad[:5]
    saved = (*ctx.saved_tensors, None, None, None)
    dweight, dalpha, dvalues = _backward(saved, (need_w, need_a, need_v), ctx.cfg, "ops", dout)
    return (dweight, dalpha, None, None, dvalues) + (None,) * 6


soft_select.register_autograd(_registered_backward, setup_context=_setup_context)


@torch.library.custom_op("mixemb::soft_select_backward_alpha", mutates_args=())
def soft_select_backward_alpha(
    dout: Tensor,
    weight: Tensor,
    alpha: Tensor,
    boundaries: Tensor,
    ids: Tensor,
    values: Tensor | None,
    need_values: bool,
    normalize: bool,
    l1: float,
    eps: float,
    block_map: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """dalpha (L, K) in alpha's dtype (normalized per row if asked, L1 inside) and
    dvalues (*ids.shape) in values' dtype, or an empty (0,) tensor when not asked."""
    dalpha, dvalues = _alpha_values_grad(
        dout, weight, alpha, boundaries, block_map, ids, values, True, need_values, normalize,
        l1, eps, "triton",
    )  # fmt: skip
    return dalpha, weight.new_empty((0,)) if dvalues is None else dvalues


@soft_select_backward_alpha.register_fake
def _(dout, weight, alpha, boundaries, ids, values, need_values, normalize, l1, eps,
      block_map=None):  # fmt: skip
    dvalues = values.new_empty(ids.shape) if need_values else weight.new_empty((0,))
    return alpha.new_empty(alpha.shape), dvalues


@torch.library.custom_op("mixemb::soft_select_backward_weight", mutates_args=())
def soft_select_backward_weight(
    dout: Tensor,
    weight: Tensor,
    alpha: Tensor,
    boundaries: Tensor,
    ids: Tensor,
    values: Tensor | None,
    sparse: bool,
    deterministic: bool,
    block_map: Tensor | None = None,
) -> Tensor:
    """sparse=False: dense (N, K) gradient in weight's dtype; sparse=True: the (B, K)
    per-lookup rows of nn.Embedding(sparse=True)'s uncoalesced gradient."""
    return _weight_grad(
        dout, weight, alpha, boundaries, block_map, ids, values, sparse, deterministic,
        "triton",
    )  # fmt: skip


@soft_select_backward_weight.register_fake
def _(dout, weight, alpha, boundaries, ids, values, sparse, deterministic, block_map=None):
    if sparse:
        return weight.new_empty((ids.numel(), weight.shape[1]))
    return weight.new_empty(weight.shape)


@torch.library.custom_op("mixemb::soft_select_fused_update_", mutates_args=("weight", "state"))
def soft_select_fused_update_(
    dout: Tensor,
    weight: Tensor,
    alpha: Tensor,
    boundaries: Tensor,
    ids: Tensor,
    values: Tensor | None,
    state: Tensor,
    lr: Tensor,
    optimizer: str,
    optimizer_eps: float,
    block_map: Tensor | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> None:
    """Update the looked-up rows of weight in place with the weights-step gradient.

    optimizer "sgd": w -= lr·g. "rowwise_adagrad": m += mean_k g², w -= lr·g/(√m + eps)
    with state m (N,) float32. g is each row's α[block] ⊙ Σ dout (⊙ v). lr: (1,) float32.
    stochastic_rounding: an fp16 / bf16 table's new values rounded stochastically (the
    stream of ``seed``, in [0, 2^63)) instead of to nearest; no effect on fp32 / fp64.
    """
    _fused_update(
        dout, weight, alpha, boundaries, block_map, ids, values, state, lr, optimizer,
        optimizer_eps, "triton", stochastic_rounding, seed,
    )  # fmt: skip


@soft_select_fused_update_.register_fake
def _(dout, weight, alpha, boundaries, ids, values, state, lr, optimizer, optimizer_eps,
      block_map=None, stochastic_rounding=False, seed=0):  # fmt: skip
    return None


# ----------------------------------------------------------------------------- public op


def soft_select_lookup(
    weight: Tensor,
    alpha: Tensor,
    boundaries: Tensor | None,
    ids: Tensor,
    values: Tensor | None = None,
    *,
    block_map: Tensor | None = None,
    normalize: bool = True,
    l1: float = 0.0,
    eps: float = 1e-8,
    sparse: bool = False,
    backend: str = "auto",
    deterministic: bool = True,
    check_ids: bool | None = None,
    fused_optimizer=None,
) -> Tensor:
    """Look up rows and scale them by their frequency block's soft selection row.

    weight: (N, K) float32/float16/bfloat16 embedding table E, any strides (with unit
        column stride, e.g. a column slice of a wider table, it is never copied).
    alpha: (L, K) soft selection layer α (same device as weight).
    boundaries: (L+1,) int64, boundaries[0] = 0 < … < boundaries[L] = N; block l holds
        the ids in [boundaries[l], boundaries[l+1]). None when block_map is given.
    ids: (...) int32/int64 feature ids in [0, N).
    values: (...) optional per-lookup multipliers (numeric fields).
    block_map: (N,) int64 block of every id, in [0, L): blocks need not be id ranges (ids
        need not be renumbered by frequency). Give exactly one of boundaries, block_map.
    normalize: return α's gradient normalized per block row (see module docstring).
    l1: λ of the L1 term λ·Σ|α|, added to α's gradient before normalization.
    eps: the normalization's stabilizer (default 1e-8, the authors' value).
    sparse: weight's gradient as a sparse COO tensor of looked-up rows.
    backend: "reference" (the pure-PyTorch math of ``mixemb.reference``), "triton" (the
        Triton kernels on CUDA, and on CPU under Triton's interpreter; the reference math
        on CPU otherwise) or "auto" (triton on CUDA, reference on CPU).
    deterministic: the Triton weights-step gradient by sort + run reduction (bitwise
        reproducible, the default) instead of atomic adds. α's gradient is always
        deterministic.
    check_ids: raise ValueError for ids outside [0, N) (one host sync). Default: on for
        CPU tensors, off for CUDA (the kernels then read zeros for bad ids, never out
        of bounds).
    fused_optimizer: a ``mixemb.nn.FusedOptimizer`` (the op reads its ``kind``, ``lr``,
        ``eps`` and ``state`` and asks it for the rounding): the table is updated inside
        the backward and gets no gradient; a table looked up several times in one step
        is updated once per lookup (module docstring). Eager mode only.
    Returns (..., K) in torch.promote_types(weight.dtype, alpha.dtype).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_lookup_inputs(weight, alpha, boundaries, block_map, ids, values)
    if check_ids if check_ids is not None else not ids.is_cuda:
        check_lookups(ids, weight.shape[0], block_map, alpha.shape[0])
    if fused_optimizer is not None and sparse:
        raise ValueError("fused_optimizer updates the table itself: sparse must be False")
    l1, eps = float(l1), float(eps)
    impl = implementation(weight, backend, torch.compiler.is_compiling())
    if impl == "ops" and fused_optimizer is None:  # the registered op and its autograd
        return soft_select(
            weight, alpha, boundaries, ids, values, normalize, l1, eps, sparse, deterministic,
            block_map,
        )  # fmt: skip
    return _SoftSelect.apply(
        weight, alpha, boundaries, block_map, ids, values, normalize, l1, eps, sparse,
        deterministic, impl, fused_optimizer,
    )  # fmt: skip


def check_lookup_inputs(weight, alpha, boundaries, block_map, ids, values) -> None:
    if weight.dim() != 2:
        raise ValueError(f"weight must be (N, K), got shape {tuple(weight.shape)}")
    if alpha.dim() != 2 or alpha.shape[1] != weight.shape[1]:
        raise ValueError(f"alpha must be (L, K={weight.shape[1]}), got shape {tuple(alpha.shape)}")
    if (boundaries is None) == (block_map is None):
        raise ValueError("give exactly one of boundaries and block_map (the other None)")
    if block_map is not None:  # its values: per call, the looked-up entries (check_lookups)
        _check_block_map_layout(block_map, weight.shape[0])
    else:
        _check_boundaries_arg(boundaries, alpha.shape[0], weight.shape[0])
    if ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"ids must be int32 or int64, got {ids.dtype}")
    if values is not None and values.shape != ids.shape:
        raise ValueError(f"values must match ids {tuple(ids.shape)}, got {tuple(values.shape)}")


def _check_block_map_layout(block_map: Tensor, num_rows: int) -> None:
    if block_map.dtype != torch.int64:
        raise ValueError(f"block_map must be int64, got {block_map.dtype}")
    if block_map.shape != (num_rows,):
        raise ValueError(f"block_map must be (N,) = ({num_rows},), got {tuple(block_map.shape)}")


def check_block_map(
    block_map: Tensor, num_rows: int, num_blocks: int, ids: Tensor | None = None
) -> None:
    """Raise ValueError unless block_map is (num_rows,) int64 with every value in
    [0, num_blocks) (an out-of-range block would index past α).

    ids: None checks the whole map (O(N): where a map is set or loaded); in-range ids
    check only the entries they look up (O(M): the per-call check of the ops).
    """
    _check_block_map_layout(block_map, num_rows)
    rows = None if ids is None else ids.reshape(-1).long()
    blocks = block_map if rows is None else block_map[rows]
    if blocks.numel() == 0:
        return
    lo, hi = torch.aminmax(blocks)
    if int(lo) < 0 or int(hi) >= num_blocks:
        at = int(((blocks < 0) | (blocks >= num_blocks)).nonzero()[0])
        row = at if rows is None else int(rows[at])
        raise ValueError(
            f"block_map[{row}] = {int(block_map[row])} is outside the blocks [0, {num_blocks})"
        )


def _check_boundaries_arg(boundaries: Tensor, num_blocks: int, num_rows: int) -> None:
    if boundaries.dim() != 1 or boundaries.numel() != num_blocks + 1:
        raise ValueError(
            f"boundaries must be (L+1,) = ({num_blocks + 1},), got {tuple(boundaries.shape)}"
        )
    if boundaries.dtype != torch.int64:
        raise ValueError(f"boundaries must be int64, got {boundaries.dtype}")
    # A CUDA tensor's values cost a host sync to read: checked where they are set
    # (SoftSelectEmbedding's constructor and load) instead.
    if not boundaries.is_cuda and not torch.compiler.is_compiling():
        check_boundaries(boundaries, num_rows)


def check_boundaries(boundaries: Tensor, num_rows: int) -> None:
    """Raise ValueError unless boundaries (L+1,) int64 run from 0 to num_rows, increasing
    (an unsorted or out-of-range one would silently put ids in the wrong block)."""
    b = boundaries.tolist()
    if len(b) < 2 or b[0] != 0 or b[-1] != num_rows:
        raise ValueError(f"boundaries must run from 0 to N={num_rows}, got {b[:8]}")
    if any(hi <= lo for lo, hi in zip(b, b[1:])):
        raise ValueError(f"boundaries must be strictly increasing, got {b[:8]}")


def check_lookups(ids: Tensor, num_rows: int, block_map: Tensor | None, num_blocks: int) -> None:
    """The per-call value checks of a lookup: ids in [0, N), and (with a block map) the
    map's entries they look up in [0, L). A CUDA map is checked where it is made instead
    (reading it costs a host sync)."""
    check_ids_in_range(ids, num_rows)
    if block_map is not None and not block_map.is_cuda and not torch.compiler.is_compiling():
        check_block_map(block_map, num_rows, num_blocks, ids)


def check_ids_in_range(ids: Tensor, num_rows: int) -> None:
    if torch.compiler.is_compiling() or ids.numel() == 0:  # numel may be symbolic
        return
    bad = (ids < 0) | (ids >= num_rows)
    if bool(bad.any()):
        first = int(bad.reshape(-1).nonzero()[0])
        raise ValueError(
            f"ids[{first}] (flattened) = {int(ids.reshape(-1)[first])} is outside the "
            f"table's rows [0, {num_rows})"
        )
