"""Every committed notebook must hold the outputs of one clean top-to-bottom run that a fresh
clone on another machine reproduces (the checks of ../shared/hooks/nbcheck.py, and more)."""
import json
import re

import pytest

from notebook_tools import ROOT, all_notebooks, cell_source, code_cells

ABS_PATH = re.compile(r"(?<![\w.])/(?:work|root|home|tmp|Users|private/var)/[^\s'\"]+|[A-Z]:\\\\Users")
ADDRESS = re.compile(r"\bat 0x[0-9a-f]{6,}\b")
NOTEBOOKS = all_notebooks()


def output_text(output):
    parts = []
    if "text" in output:
        parts.append("".join(output["text"]) if isinstance(output["text"], list) else output["text"])
    for mime, value in output.get("data", {}).items():
        if mime.startswith("text/"):
            parts.append("".join(value) if isinstance(value, list) else value)
    if output.get("output_type") == "error":
        parts.append(output.get("ename", "") + ": " + output.get("evalue", ""))
    return "\n".join(parts)


def problems(path):
    found = []
    counts = []
    for i, cell in enumerate(code_cells(path)):
        source = cell_source(cell)
        if not source.strip():
            continue
        if cell.get("execution_count") is None:
            found.append(f"code cell {i} was never executed")
        else:
            counts.append(cell["execution_count"])
        if "NBVAL_SKIP" in source:
            found.append(f"code cell {i} uses NBVAL_SKIP, which leaves later cells without variables")
        for out in cell.get("outputs", []):
            text = output_text(out)
            if out.get("output_type") == "error" and "NBVAL_RAISES_EXCEPTION" not in source:
                found.append(f"code cell {i} stores an error")
            if ABS_PATH.search(text):
                found.append(f"code cell {i} shows a machine path: {ABS_PATH.search(text).group(0)[:60]}")
            if ADDRESS.search(text):
                found.append(f"code cell {i} shows a memory address")
            if out.get("name") == "stderr" and "NBVAL_IGNORE_OUTPUT" not in source:
                found.append(f"code cell {i} writes to stderr (a warning?), which differs between runs")
    if counts != list(range(1, len(counts) + 1)):
        found.append(f"execution counts are {counts}, not 1..N: restart the kernel and run all")
    return found


def test_there_are_notebooks():
    assert NOTEBOOKS, "no chapter notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_notebook_outputs_are_reproducible(path):
    assert problems(path) == []


def test_the_checker_catches_a_bad_notebook(tmp_path):
    bad = {"cells": [
        {"cell_type": "code", "source": "x = 1", "execution_count": None, "outputs": [], "metadata": {}},
        {"cell_type": "code", "source": "print(x)", "execution_count": 3, "metadata": {},
         "outputs": [{"output_type": "stream", "name": "stdout", "text": "/work/main/data <obj at 0xdeadbeef>"}]},
    ], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "bad.ipynb"
    path.write_text(json.dumps(bad))
    found = " | ".join(problems(path))
    assert "never executed" in found and "machine path" in found
    assert "memory address" in found and "not 1..N" in found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_exercise_solutions_stay_hidden(path):
    """A solution cell starts folded in JupyterLab, its answer (the output) as well as its code."""
    for i, cell in enumerate(code_cells(path)):
        if cell_source(cell).startswith("# Solution"):
            hidden = cell["metadata"].get("jupyter", {})
            assert hidden.get("source_hidden") and hidden.get("outputs_hidden"), f"code cell {i} shows its solution"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_unmodified_with_the_kernel_ipykernel_installs(notebook):
    """JupyterLab rewrites a notebook's kernelspec to the kernel it starts, and then marks the
    notebook as modified: store what `pip install ipykernel` installs as the python3 kernel."""
    kernelspec = json.loads(notebook.read_text(encoding="utf-8"))["metadata"].get("kernelspec")
    assert kernelspec == {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
