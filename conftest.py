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

# No progress bars in test logs (the notebooks' kernels inherit it; tqdm reads TQDM_* variables).
os.environ.setdefault("TQDM_DISABLE", "1")

# The data files, offline: ../shared/data is a mirror folder when it exists (data/README.md).
_mirror = Path(__file__).resolve().parent.parent / "shared" / "data"
if _mirror.is_dir():
    os.environ.setdefault("LLM_DATA_MIRROR", str(_mirror))

# GPT-2's tokenizer files where tiktoken looks for them (each notebook's first cell does the same).
from course.infra import prepare_tiktoken_offline  # noqa: E402

prepare_tiktoken_offline()

# Chapter 5 continues the model that chapter 4 trains and saves. `--dist loadfile` keeps each
# file's tests (a notebook's cells share one kernel) on one worker and, with xdist's reordering off,
# hands out the files in collection order (pyproject.toml's testpaths): chapter 5 goes last, after
# chapter 5b and stage 6, so chapter 4 has long finished.
CHAPTER_5 = "post_training/LLM-saving-loading.ipynb"


def pytest_configure(config):
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.nodeid.split("::")[0] == CHAPTER_5)  # stable: the rest keep their order
