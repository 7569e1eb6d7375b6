"""Test-run settings shared by the tests and by the notebooks nbval runs.

Kernels started by nbval inherit this process's environment, so setting the data mirror here
makes every notebook find its files offline in ../shared/data when that folder exists.
"""
import os
from pathlib import Path

_mirror = Path(__file__).resolve().parent.parent / "shared" / "data"
if _mirror.is_dir():
    os.environ.setdefault("LLM_DATA_MIRROR", str(_mirror))
