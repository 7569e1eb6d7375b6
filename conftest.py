"""Test-run settings shared by the tests and by the notebooks nbval runs.

Kernels started by nbval inherit this process's environment, so setting the data mirror here
makes every notebook find its files offline in ../shared/data when that folder exists.
"""
import os
from pathlib import Path

import pytest

# A parallel run (`pytest -n 2`, see the README) splits the cores between its workers: each
# worker, and each notebook kernel it starts (kernels inherit this environment), gets an equal
# share of threads. Without it every process would start one thread per core and they would
# fight for the cores. Set before torch is imported, which reads it once.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

# glibc's malloc hands every large block (a tensor of more than a few hundred KB) back to the
# operating system when it is freed, so the next training step's tensors of the same sizes are
# new pages that the kernel must map and zero again. On these 2-core machines that page-faulting
# made a training step of chapter 4's small model 1.6x slower (509 ms against 311 ms on one
# thread). These two settings keep freed memory in the process for reuse; the computation is the
# same. glibc reads them when a process starts, so they reach the xdist workers, the notebook
# kernels and the subprocesses started after this file is imported, not this process itself.
os.environ.setdefault("MALLOC_MMAP_MAX_", "0")  # large blocks from the heap, not from mmap
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(2**40))  # never shrink the heap

_mirror = Path(__file__).resolve().parent.parent / "shared" / "data"
if _mirror.is_dir():
    os.environ.setdefault("LLM_DATA_MIRROR", str(_mirror))

# GPT-2's tokenizer files, where tiktoken looks for them, before any test asks for the tokenizer
# (the notebooks make the same call in their first cell).
from course.infra import prepare_tiktoken_offline  # noqa: E402

prepare_tiktoken_offline()

# The unit tests run tiny models, whose operations are too small to split between threads: a
# second thread only adds a rendezvous per operation, and on a busy machine (CI runners, parallel
# workers, other jobs) waiting for a descheduled thread made a 24-step training run of
# tests/test_stage5_checkpoints.py take 12.9 s instead of 0.09 s. So a test runs on one thread,
# except those marked slow (the 124M model's losses, the subprocesses), which keep PyTorch's
# default. The notebooks' kernels are other processes and keep it too. torch is imported here, at
# the first test, not at the top: the controller of a parallel run then starts its workers without
# waiting for it.
_DEFAULT_THREADS = None


@pytest.fixture(autouse=True)
def _threads_for_the_test(request):
    global _DEFAULT_THREADS
    import torch

    if _DEFAULT_THREADS is None:
        _DEFAULT_THREADS = torch.get_num_threads()
    torch.set_num_threads(_DEFAULT_THREADS if request.node.get_closest_marker("slow") else 1)
    yield
    torch.set_num_threads(_DEFAULT_THREADS)


# With `--dist loadfile`, a worker that finishes a file takes the next one in collection order.
# So the longest files go first, or one of them, started last, would leave the other worker idle
# at the end. Longest first, from their times on one core each (in seconds, measured 2026-12-02
# in a parallel run of the whole suite on an AMD EPYC): 6a 89, 6b 68, chapter 4 36, 4b 31, the
# slide decks 30. 6c (29) comes after them: it finetunes 6a's cached stand-in, and started while
# 6a still pretrains it, it would only wait for it (the cache's lock). Then the DDP tests (22).
LONGEST_FIRST = ["finetune/LLM-finetune-classification.ipynb", "finetune/LLM-finetune-instructions.ipynb",
                 "training/LLM-training.ipynb", "training/LLM-performance.ipynb", "tests/test_slides.py",
                 "finetune/LLM-finetune-lora.ipynb", "tests/test_training_ddp.py"]


def _start_kernels_with_one_retry():
    """nbval gives a new kernel 60 s to answer, and otherwise fails every cell of the notebook.
    In one of six fresh-clone runs on 2026-12-02, 6a's kernel, started at the same moment as
    6b's, never answered (its stderr goes to /dev/null, so why is unknown; 96 kernel starts, two at
    a time, with this file's settings all answered within a second). So a kernel that does not
    answer is started once more, on new ports; one that fails twice still fails the notebook."""
    import nbval.kernel

    start = nbval.kernel.start_new_kernel

    def start_new_kernel(*args, **kwargs):
        try:
            return start(*args, **kwargs)
        except RuntimeError:
            return start(*args, **kwargs)

    nbval.kernel.start_new_kernel = start_new_kernel  # what nbval's RunningKernel calls


def pytest_configure(config):
    if config.pluginmanager.hasplugin("nbval"):
        _start_kernels_with_one_retry()
    if config.getoption("dist", "no") == "loadfile":
        config.option.loadscopereorder = False  # keep the order below, not xdist's (by test count)


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: cells stay in order
