"""Shared test helpers. Kernel tests under tests/kernels run in their own process with TRITON_INTERPRET=1
(bash .ci/test does that); the rest run on the PyTorch path."""

import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


collect_ignore_glob = [] if os.environ.get("TRITON_INTERPRET") == "1" else ["kernels/*"]


def pytest_report_header(config):
    if os.environ.get("TRITON_INTERPRET") != "1":
        return "tests/kernels (Triton kernels on the CPU) need TRITON_INTERPRET=1 and run in their own process: bash .ci/test"
    return None
