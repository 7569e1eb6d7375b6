"""Write the course's code modules from the notebooks: `python -m course.export`.

The notebook cell that teaches a piece of code is the only place it is written. A notebook names
its module in a cell `#| default_exp NAME`, and each code cell whose first line is `#| export`
is copied, verbatim and in notebook order, into `course/NAME.py` (nbdev's spelling of both
markers). Run this after editing an exported cell, so that later chapters see the change;
tests/test_export.py fails while a generated module is out of date.
"""
import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAPTER_FOLDERS = ["notebooks", "attention", "architecture", "training", "post_training", "finetune"]
EXPORT, DEFAULT_EXP = "#| export", "#| default_exp"
# nbdev reads the markers with or without the space after "#|": so does this exporter.
EXPORT_LINE = re.compile(r"#\|\s*export\s*$")
DEFAULT_EXP_LINE = re.compile(r"#\|\s*default_exp\s+(\S+)\s*$")


class ExportError(ValueError):
    """A notebook whose export markers cannot be turned into a module."""


def course_notebooks(root=ROOT):
    """Every chapter notebook (folder by folder; the modules' names give the course order)."""
    return [nb for folder in CHAPTER_FOLDERS for nb in sorted((root / folder).glob("*.ipynb"))]


def cell_lines(cell):
    source = cell["source"]
    return ("".join(source) if isinstance(source, list) else source).splitlines()


def module_of(notebook):
    """(module name, [(cell index, source without the marker)]) of one notebook; (None, []) if it exports nothing."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    name, blocks = None, []
    for i, cell in enumerate(cells):
        lines = cell_lines(cell)
        if cell["cell_type"] != "code" or not lines:
            continue
        first = lines[0].strip()
        if match := DEFAULT_EXP_LINE.match(first):
            name = match.group(1)
        elif EXPORT_LINE.match(first):
            blocks.append((i, "\n".join(lines[1:]).strip("\n")))
        elif first.startswith("#|"):
            raise ExportError(f"{notebook}, cell {i}: unknown marker {first!r}; use '{EXPORT}' or '{DEFAULT_EXP} NAME'")
    if blocks and not name:
        raise ExportError(f"{notebook}: has {EXPORT} cells but no '{DEFAULT_EXP} NAME' cell naming its module")
    return name, blocks


def render(notebook, blocks, root=ROOT):
    where = notebook.relative_to(root).as_posix()
    parts = [f"# Generated from {where} by `python -m course.export`: DO NOT EDIT.\n"
             f"# Edit the notebook's `{EXPORT}` cells instead, then run that command again.\n"]
    parts += [f"# %% {where}, cell {i}\n{source}\n" for i, source in blocks]
    return "\n\n".join(parts)


def export(out_dir=None, root=ROOT):
    """Write every notebook's module into out_dir (default: course/); return the paths written."""
    out_dir = Path(out_dir) if out_dir is not None else root / "course"
    written = []
    for notebook in course_notebooks(root):
        name, blocks = module_of(notebook)
        if name is None:
            continue
        path = out_dir / f"{name}.py"
        if path in written:
            raise ExportError(f"{notebook}: module {name!r} is already exported by another notebook")
        path.write_text(render(notebook, blocks, root), encoding="utf-8")
        written.append(path)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder to write into (default: course/)")
    args = parser.parse_args(argv)
    try:
        written = export(args.out)
    except ExportError as error:
        parser.exit(1, f"error: {error}\n")  # the command line gets the message, not a traceback
    for path in written:
        print("wrote", path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    sys.exit(main())
