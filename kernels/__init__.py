"""Triton kernels for mixemb, installed as ``mixemb.kernels``.

One file per op family (``<family>.py``): private ``_<family>_fwd_kernel`` kernels and their
launchers (``<family>_fwd(...)``: validate, allocate, pick block sizes, launch). The fused
lookup x alpha kernels land in a later issue; ``mixemb.reference`` holds the pure-PyTorch
references they are tested and benchmarked against.
"""
