"""One file per pruned model: ``save_pruned`` / ``load_pruned``.

The file is ``weights_only``-safe and holds the model config, the dense (non-embedding)
weights and the ragged table's tensors, plus what the caller adds (encoder state,
dataset spec, prune report numbers).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mixemb.nn import RaggedEmbedding
from mixemb.prune.finetune import WeightsMismatch, dense_state, on_embedding
from mixemb.ragged import RaggedTable
from mixemb.train.checkpoint import CheckpointError, atomic_save, load_checkpoint
from mixemb.train.saved import check_model_config

PRUNED_KIND = "mixemb.pruned"


def save_pruned(model: nn.Module, path: str | Path, **extra) -> Path:
    """Write a RaggedEmbedding-backed model to one file (atomic, weights_only-safe).

    extra: JSON/tensor-only entries (encoder state, dataset spec, prune report numbers).
    """
    emb = model.embedding
    if not isinstance(emb, RaggedEmbedding):
        raise TypeError(f"save_pruned needs a RaggedEmbedding model, got {type(emb).__name__}")
    return atomic_save(
        {
            "kind": PRUNED_KIND,
            "model_config": dict(model.config),
            "dense_state": dense_state(model),
            "table": emb.table.state_dict(),
            **extra,
        },
        path,
    )


def load_pruned(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a model saved by :func:`save_pruned`; returns (model in eval mode, file dict).

    The table is validated when it is built; the dense weights may hold nothing under
    ``embedding.`` (they would overwrite the validated table) and must fit the model
    config exactly, which must agree with the table's size. Raises CheckpointError.
    """
    obj = load_checkpoint(path, kind=PRUNED_KIND)
    dense = obj.get("dense_state")
    if isinstance(dense, dict):
        onto_table = sorted(
            k for k in dense if not isinstance(k, str) or k.startswith("embedding.")
        )
        if onto_table:
            raise CheckpointError(
                f"{path}: dense weights {str(onto_table[0])[:80]!r} would overwrite the "
                "ragged table; not written by mixemb prune"
            )
    try:
        table = RaggedTable.from_state_dict(obj["table"])
    except (KeyError, ValueError, RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: damaged pruned model ({exc})") from exc
    shape = (table.num_embeddings, table.embedding_dim)
    config = check_model_config(path, obj.get("model_config"), dense, shape)
    try:
        # rows in float32 whatever the stored dtype: mixemb's models compute in float32
        model = on_embedding(config, RaggedEmbedding(table, out_dtype=torch.float32), dense)
    except WeightsMismatch:
        raise CheckpointError(f"{path}: weights do not fit the saved model config") from None
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path}: damaged pruned model ({exc})") from exc
    return model.eval(), obj
