"""Build script for mixemb.

Pure-Python for now: the package ``mixemb`` plus the top-level ``kernels/`` folder
(Triton kernels) installed as ``mixemb.kernels``. The C++/CUDA extension from
``csrc/`` is added here with torch.utils.cpp_extension when it lands, which is why
installs use ``pip install --no-build-isolation`` (the build must see the installed torch).
"""

import sys

from setuptools import find_packages, setup

packages = find_packages(include=["mixemb", "mixemb.*"]) + ["mixemb.kernels"]

install_requires = ["torch>=2.6", "numpy"]
if sys.platform.startswith("linux"):
    install_requires.append("triton")

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
        "test": ["pytest", "pytest-benchmark", "ruff"],
        "plot": ["matplotlib"],
    },
    entry_points={"console_scripts": ["mixemb = mixemb.cli:main"]},
    license="MIT",
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
