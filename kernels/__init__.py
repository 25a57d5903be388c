"""Triton kernels for mixemb, installed as ``mixemb.kernels``.

One file per op family, or per step of one: private ``_<name>_kernel`` kernels and their
launchers (validate, allocate, pick block sizes, launch). ``soft_select``: the lookup × α
forward and α step; ``soft_select_weights``: its weights step (dense gradient, fused
optimizer update); ``soft_select_bag``: the pooled op; ``block_table``: the block-table
gather. ``mixemb.reference`` holds the pure-PyTorch references they are tested and
benchmarked against.
"""
