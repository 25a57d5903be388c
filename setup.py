"""Build script for mixemb.

The package ``mixemb``, the top-level ``kernels/`` folder (Triton kernels) installed as
``mixemb.kernels``, and the C++/CUDA extension ``mixemb._C`` from ``csrc/`` built with
torch.utils.cpp_extension — so installs use ``pip install --no-build-isolation`` (the
build must see the installed torch).

Knobs (printed at build time), never ``torch.cuda.is_available()`` (a build machine
need not have a GPU):
  MIXEMB_SKIP_CUDA=1   CPU-only extension even where CUDA could be built
  MIXEMB_FORCE_CUDA=1  build the CUDA kernels (fails loudly without nvcc / a CUDA torch)
  TORCH_CUDA_ARCH_LIST the GPU architectures (default here: "8.0;9.0")
  MIXEMB_SKIP_EXT=1    no extension at all (pure Python; ops fall back to references)
Default: CUDA kernels when torch is a CUDA build and nvcc is found, else CPU only.
"""

import glob
import os
import platform
import shutil
import sys

from setuptools import find_packages, setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def shared_cpp_runtime() -> list[str]:
    """Link arguments naming the libstdc++ this process (and so torch) has loaded, by path.

    A compiler that links libstdc++ statically by default (seen on a GPU machine's image:
    CXX=/opt/gcc/bin/g++, where -lstdc++ also found the static archive) put a second C++
    runtime inside _C.so, half bound to the process's copy: the first error message with a
    number in it (an out-of-range id, bad bag offsets) crashed the process in the static
    copy's ostream instead of raising. Naming the loaded shared library, ahead of the
    driver's own -lstdc++, resolves every C++ runtime symbol there.
    tests/test_ops_ragged.py::test_extension_uses_the_shared_cpp_runtime checks the result.
    """
    if not sys.platform.startswith("linux"):
        return []
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "libstdc++.so" in line}
    except OSError:
        return []
    paths = sorted(p for p in paths if os.path.isfile(p))
    if not paths:
        return []
    print(f"mixemb: linking the loaded C++ runtime {paths[0]}", file=sys.stderr)
    return [paths[0]]


def extension_modules():
    if _flag("MIXEMB_SKIP_EXT"):
        print("mixemb: MIXEMB_SKIP_EXT set: building no C++ extension", file=sys.stderr)
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    headers = sorted(glob.glob("csrc/*.h"))  # rebuild when they change; shipped in sdists
    nvcc = shutil.which("nvcc") or (
        os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc") if "CUDA_HOME" in os.environ else None
    )
    if _flag("MIXEMB_SKIP_CUDA"):
        use_cuda, why = False, "MIXEMB_SKIP_CUDA set"
    elif _flag("MIXEMB_FORCE_CUDA"):
        use_cuda, why = True, "MIXEMB_FORCE_CUDA set"
    elif torch.version.cuda and nvcc:
        use_cuda, why = True, f"torch {torch.__version__} is a CUDA build and nvcc is at {nvcc}"
    else:
        use_cuda, why = False, f"torch {torch.__version__} has no CUDA or no nvcc was found"
    # ATen's at::parallel_for is an inline OpenMP loop in the headers (the CPU wheels are
    # built with AT_PARALLEL_OPENMP): without -fopenmp the pragma is dropped and every CPU
    # op runs on one thread. Linking -fopenmp names libgomp.so.1, the soname torch ships,
    # so the process keeps one OpenMP runtime.
    cxx = ["-O3", "-fopenmp"]
    link = ["-fopenmp"]
    link += shared_cpp_runtime()
    if platform.machine().lower() in ("x86_64", "amd64"):
        # a hardware popcount: every x86-64 CPU since 2008 has it, and without the flag
        # GCC calls a software routine for each of the popcounts a lookup does
        cxx.append("-mpopcnt")
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        print(
            f"mixemb: building mixemb._C with CUDA ({why}); "
            f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}",
            file=sys.stderr,
        )
        ext = CUDAExtension(
            "mixemb._C",
            sources + cuda_sources,
            depends=headers,
            define_macros=[("USE_CUDA", None), ("MIXEMB_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-DUSE_CUDA"]},
            extra_link_args=link,
        )
    else:
        print(f"mixemb: building mixemb._C for CPU only ({why})", file=sys.stderr)
        ext = CppExtension(
            "mixemb._C",
            sources,
            depends=headers,
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


packages = find_packages(include=["mixemb", "mixemb.*"]) + ["mixemb.kernels"]

install_requires = ["torch>=2.6", "numpy"]
if sys.platform.startswith("linux"):
    install_requires.append("triton")

ext_modules, cmdclass = extension_modules()

setup(
    name="mixemb",
    version="0.1.0",
    description=(
        "Differentiable Neural Input Search (DNIS): searched, pruned, mixed-dimension "
        "embeddings for recommenders, with fused kernels"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"mixemb.kernels": "kernels"},
    install_requires=install_requires,
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis", "ruff"],
        "plot": ["matplotlib"],
        # TorchRec's CPU build for torch 2.13 — these pins move with the Makefile's torch
        # pin (fbgemm-gpu-cpu 1.8 is built for torch 2.13 only; torchrec 1.8 goes with it).
        # torchrec==1.8.0 itself is installed with --no-deps (README): its metadata asks for
        # fbgemm-gpu, the CUDA build, which installs into fbgemm-gpu-cpu's fbgemm_gpu/ folder.
        "torchrec": [
            "fbgemm-gpu-cpu==1.8.0",
            "tensordict==0.15.3",
            "torchmetrics==1.0.3",
            "tqdm",
            "pyre-extensions",
        ],
    },
    entry_points={"console_scripts": ["mixemb = mixemb.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    license="MIT",
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
