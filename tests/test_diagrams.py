"""The conceptual diagrams: drawn by course/diagrams.py, stored as images in every chapter."""
import re
import warnings

import pytest

from course import diagrams
from notebook_tools import ROOT, all_notebooks, cell_source, code_cells

CALL = re.compile(r'diagrams\.show\("(\w+)"\)')
AT_LEAST = {"notebooks/LLM-data-preprocessing.ipynb": 4, "attention/LLM_attention.ipynb": 4,
            "architecture/LLM-GPT-arch.ipynb": 4}  # chapters 1-3; every other chapter notebook: 2


def diagram_cells(notebook):
    """(diagram name, has a stored PNG) for every cell that draws a diagram."""
    found = []
    for cell in code_cells(notebook):
        match = CALL.search(cell_source(cell))
        if match:
            png = any("image/png" in out.get("data", {}) for out in cell.get("outputs", []))
            found.append((match.group(1), png))
    return found


@pytest.mark.parametrize("notebook", all_notebooks(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_chapter_shows_its_diagrams(notebook):
    cells = diagram_cells(notebook)
    expected = AT_LEAST.get(notebook.relative_to(ROOT).as_posix(), 2)
    assert len(cells) >= expected, f"{notebook.name} draws {len(cells)} diagrams, fewer than {expected}"
    assert all(png for _, png in cells), f"{notebook.name}: a diagram cell holds no stored image (run it)"


def test_every_diagram_is_used_and_every_call_names_one():
    used = {name for nb in all_notebooks() for name, _ in diagram_cells(nb)}
    assert used <= set(diagrams.DIAGRAMS), f"unknown diagrams: {sorted(used - set(diagrams.DIAGRAMS))}"
    assert set(diagrams.DIAGRAMS) <= used, f"drawn by no notebook: {sorted(set(diagrams.DIAGRAMS) - used)}"


@pytest.mark.parametrize("name", sorted(diagrams.DIAGRAMS))
def test_a_diagram_draws_without_warnings(name):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing glyph or a bad layout warns: that would reach stderr
        fig = diagrams.DIAGRAMS[name]()
        fig.tight_layout()
        fig.canvas.draw()
    assert fig.axes and fig.axes[0].patches, f"{name} draws nothing"
    plt.close(fig)


def test_an_unknown_diagram_is_a_clear_error():
    with pytest.raises(KeyError, match="No diagram 'gpt_modle'"):
        diagrams.show("gpt_modle")
