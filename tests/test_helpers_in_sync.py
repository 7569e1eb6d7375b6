"""One source of truth: what helpers.py exports is exactly what a notebook cell taught.

Like d2l's `#@save`: every top-level class, function or constant in helpers.py after its
"Stage 1" heading must be defined in some chapter notebook, and the last definition of that name
in each notebook must have the same AST (docstrings, comments and formatting aside). Earlier
definitions of a name in a notebook are steps on the way (e.g. the LayerNorm formula before the
fused version) and are not compared.
"""
import ast

import pytest

from notebook_tools import ROOT, all_notebooks, code_cells, python_of, top_level_definitions

HELPERS_SOURCE = (ROOT / "helpers.py").read_text(encoding="utf-8")


def taught_helpers():
    """helpers.py definitions below the first '# Stage N:' heading (above it: infrastructure)."""
    lines = HELPERS_SOURCE.splitlines()
    first_stage = next(i for i, line in enumerate(lines, 1) if line.startswith("# Stage 1:"))
    tree = ast.parse(HELPERS_SOURCE)
    taught = {}
    for node in tree.body:
        if node.lineno > first_stage:
            module = ast.Module(body=[node], type_ignores=[])
            taught.update(top_level_definitions(ast.unparse(module)))
    return taught


def notebook_definitions():
    """(notebook, name) -> AST dump for every top-level definition in every notebook."""
    found = {}
    for nb in all_notebooks():
        for cell in code_cells(nb):
            for name, dump in top_level_definitions(python_of(cell)).items():
                found[(nb.relative_to(ROOT).as_posix(), name)] = dump
    return found


HELPERS = taught_helpers()
NOTEBOOK_DEFS = notebook_definitions()


def test_helpers_has_taught_code():
    assert "GPTDatasetV1" in HELPERS and "create_dataloader_v1" in HELPERS


@pytest.mark.parametrize("name", sorted(HELPERS))
def test_every_helper_is_taught_in_a_notebook(name):
    teachers = [nb for (nb, n) in NOTEBOOK_DEFS if n == name]
    assert teachers, f"helpers.py defines {name!r}, but no chapter notebook teaches it in a cell"


@pytest.mark.parametrize("nb,name", sorted(k for k in NOTEBOOK_DEFS if k[1] in HELPERS))
def test_notebook_definition_matches_helpers(nb, name):
    assert NOTEBOOK_DEFS[(nb, name)] == HELPERS[name], (
        f"{nb} defines {name!r} differently from helpers.py: edit both so they stay identical"
    )


def test_a_drifted_definition_is_caught():
    """The comparison itself must see a one-token change and ignore comments/docstrings."""
    original = "def f(x):\n    '''doc'''\n    return x + 1  # why\n"
    same = "def f(x):\n    return x + 1\n"
    drifted = "def f(x):\n    return x + 2\n"
    assert top_level_definitions(original) == top_level_definitions(same)
    assert top_level_definitions(original) != top_level_definitions(drifted)
