"""Test-run settings shared by the tests and by the notebooks nbval runs.

Kernels started by nbval inherit this process's environment, so setting the data mirror here
makes every notebook find its files offline in ../shared/data when that folder exists.
"""
import os
from pathlib import Path

_mirror = Path(__file__).resolve().parent.parent / "shared" / "data"
if _mirror.is_dir():
    os.environ.setdefault("LLM_DATA_MIRROR", str(_mirror))

# GPT-2's tokenizer files, where tiktoken looks for them, before any test asks for the tokenizer
# (the notebooks make the same call in their first cell).
from course.infra import prepare_tiktoken_offline  # noqa: E402

prepare_tiktoken_offline()
