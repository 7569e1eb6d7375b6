"""Settings for the test run (the tests and the notebooks nbval runs).

The notebook kernels nbval starts inherit this process's environment, so what is set here
reaches them too.
"""
import os
from pathlib import Path

import pytest

# `pytest -n 2` (README, "Running the tests") runs two worker processes: each, with the kernels it
# starts, gets its share of the cores instead of one thread per core, so they do not fight over them.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

# The data files, offline: ../shared/data is a mirror folder when it exists (data/README.md).
_mirror = Path(__file__).resolve().parent.parent / "shared" / "data"
if _mirror.is_dir():
    os.environ.setdefault("LLM_DATA_MIRROR", str(_mirror))

# GPT-2's tokenizer files where tiktoken looks for them (each notebook's first cell does the same).
from course.infra import prepare_tiktoken_offline  # noqa: E402

prepare_tiktoken_offline()

# Chapter 5 loads the model that chapter 4 trains and saves. With `--dist loadgroup` each group
# runs on one worker, in collection order: so these two notebooks share a group, and every other
# file is a group of its own (a notebook's cells share one kernel, so they must stay together).
SAME_WORKER = {"training/LLM-training.ipynb": "chapter 4, then 5",
               "post_training/LLM-saving-loading.ipynb": "chapter 4, then 5"}


def pytest_collection_modifyitems(items):
    for item in items:
        path = item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(SAME_WORKER.get(path, path)))
