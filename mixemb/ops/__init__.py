"""Ops: the DNIS lookup × α and its bag (training), the ragged and block-table gathers
(serving)."""

from mixemb.ops.block_table import block_gather
from mixemb.ops.ragged import ragged_bag, ragged_dot, ragged_gather
from mixemb.ops.soft_select import soft_select_lookup
from mixemb.ops.soft_select_pooled import soft_select_bag

__all__ = [
    "block_gather",
    "ragged_bag",
    "ragged_dot",
    "ragged_gather",
    "soft_select_bag",
    "soft_select_lookup",
]
