"""Reading the course notebooks' code from the tests."""
import ast
import json
from pathlib import Path

from course.export import ROOT, course_notebooks as all_notebooks  # noqa: F401  (the one list of notebooks)


def code_cells(path):
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def cell_source(cell):
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def python_of(cell):
    """The cell's source with IPython-only lines (%magics, !shell) blanked, so ast can parse it."""
    lines = cell_source(cell).splitlines()
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in lines)


def _strip_docstrings(node):
    for sub in ast.walk(node):
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = sub.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                sub.body = body[1:] or [ast.Pass()]
    return node


def top_level_definitions(source):
    """name -> AST dump (no docstrings, comments or positions) of top-level defs and NAME = ..."""
    defs = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs[node.name] = ast.dump(_strip_docstrings(node), include_attributes=False)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            defs[node.targets[0].id] = ast.dump(node, include_attributes=False)
    return defs
