"""One source of truth: the course's code is written once, in the notebook cells that teach it.

`python -m course.export` copies every `#| export` cell into course/<module>.py; these tests
fail while a generated module is out of date, and check the rules the modules follow.
"""
import ast
import subprocess
import sys

import pytest

from course import export
from notebook_tools import ROOT

MODULES = {}  # module name -> (notebook, [(cell index, source)])
for _nb in export.course_notebooks():
    _name, _blocks = export.module_of(_nb)
    if _name is not None:
        MODULES[_name] = (_nb, _blocks)
COURSE_ORDER = sorted(MODULES)  # ch1_data, ch1b_..., ch2_..., ch4_training, ch4b_..., ch4c_..., ch5_...
HELPERS = (ROOT / "helpers.py").read_text(encoding="utf-8")


def test_every_chapter_exports_a_module():
    assert {"ch1_data", "ch2_attention", "ch3_architecture", "ch4_training", "ch4b_performance",
            "ch4c_distributed", "ch5_saving", "ch6a_classification", "ch6b_instructions"} <= set(MODULES)


def test_the_committed_modules_are_what_the_notebooks_export(tmp_path):
    written = export.export(tmp_path)
    assert written, "the exporter wrote nothing"
    for path in written:
        committed = ROOT / "course" / path.name
        assert committed.is_file() and committed.read_bytes() == path.read_bytes(), (
            f"course/{path.name} is out of date with its notebook: run `python -m course.export`")
    generated = {p.name for p in (ROOT / "course").glob("ch[0-9]*.py")}
    assert generated == {p.name for p in written}, "a course/ch*.py file no notebook exports"


def test_each_generated_file_says_where_it_comes_from():
    for name, (nb, blocks) in MODULES.items():
        text = (ROOT / "course" / f"{name}.py").read_text(encoding="utf-8")
        where = nb.relative_to(ROOT).as_posix()
        assert text.startswith(f"# Generated from {where} by `python -m course.export`: DO NOT EDIT.")
        for index, _ in blocks:
            assert f"# %% {where}, cell {index}\n" in text


def allowed(node):
    if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)):
        return True
    return isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_exported_cells_hold_only_imports_definitions_and_constants(name):
    nb, blocks = MODULES[name]
    for index, source in blocks:
        for node in ast.parse(source).body:
            assert allowed(node), f"{nb.name} cell {index}: {ast.unparse(node)[:80]!r} is not a definition"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_chapter_imports_only_the_infrastructure_and_earlier_chapters(name):
    earlier = COURSE_ORDER[:COURSE_ORDER.index(name)]
    tree = ast.parse((ROOT / "course" / f"{name}.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("course"):
            module = node.module.removeprefix("course.")
            assert module == "infra" or module in earlier, f"{name} imports course.{module}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            assert "helpers" not in names, f"{name} imports helpers: import the chapter module instead"


def test_the_checker_catches_a_stray_statement():
    assert not allowed(ast.parse("model = GPTModel(cfg)").body[0])
    assert not allowed(ast.parse("print(1)").body[0])
    assert allowed(ast.parse("MAX = 3").body[0]) and allowed(ast.parse("def f(): pass").body[0])


def test_helpers_is_thin_imports_only():
    assert len(HELPERS.splitlines()) < 60
    body = ast.parse(HELPERS).body
    docstring, imports = body[0], body[1:]
    assert isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant)
    assert imports and all(isinstance(node, ast.ImportFrom) for node in imports)
    chapters = [node.module.removeprefix("course.") for node in imports if node.module != "course.infra"]
    assert chapters == [m for m in COURSE_ORDER if m in chapters], "helpers imports the chapters out of course order"


def test_no_taught_definition_is_written_outside_a_notebook():
    """Every class and function of course/ch*.py comes from an exported cell, and no other
    Python file in the repository defines one of those names again."""
    taught = set()
    for name in MODULES:
        for node in ast.parse((ROOT / "course" / f"{name}.py").read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                taught.add(node.name)
    generated = {ROOT / "course" / f"{name}.py" for name in MODULES}
    for path in ROOT.rglob("*.py"):
        if path in generated or ".venv" in path.parts or "tests" in path.parts or "node_modules" in path.parts:
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                assert node.name not in taught, f"{path.relative_to(ROOT)} defines {node.name}, taught in a notebook"


NO_PATCHING = """
import importlib, inspect, json, sys
order = json.loads(sys.argv[1])
defined = {}  # (module, name) -> (the object, a copy of its class dict)
for name in order:
    module = importlib.import_module("course." + name)
    for attr, obj in vars(module).items():
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == module.__name__:
            defined[name, attr] = (obj, dict(vars(obj)) if inspect.isclass(obj) else None)
import helpers  # every chapter, as a later notebook imports them
changed = []
for (name, attr), (obj, members) in defined.items():
    module = sys.modules["course." + name]
    if vars(module)[attr] is not obj or (members is not None and dict(vars(obj)) != members):
        changed.append(f"{name}.{attr}")
print(json.dumps(changed))
"""


def test_no_module_changes_another_modules_classes_or_functions():
    """Each chapter's module, imported in course order in a fresh process, then every later one
    and helpers: every class and function keeps exactly the members its chapter gave it. So each
    module imported alone behaves as its chapter taught, whatever is imported after it."""
    import json

    result = subprocess.run([sys.executable, "-c", NO_PATCHING, json.dumps(COURSE_ORDER)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_the_chapters_attention_and_model_are_their_own():
    """Chapter 2's attention and chapter 3's model take no cache; chapter 4b's subclass does."""
    import inspect

    from course.ch2_attention import MultiHeadAttention
    from course.ch3_architecture import GPTModel, TransformerBlock
    from course.ch4b_performance import GPTModelWithCache

    for cls in (MultiHeadAttention, TransformerBlock, GPTModel):
        assert "kv_cache" not in inspect.signature(cls.forward).parameters
    assert "kv_cache" in inspect.signature(GPTModelWithCache.forward).parameters
    assert issubclass(GPTModelWithCache, GPTModel)


def test_pytest_collects_the_chapter_folders_in_course_order():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert config["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests", *export.CHAPTER_FOLDERS]


def test_the_exporter_reads_both_spellings_of_the_markers_and_refuses_unknown_ones(tmp_path):
    def notebook(*sources):
        cells = [{"cell_type": "code", "source": source, "metadata": {}, "outputs": []} for source in sources]
        path = tmp_path / "nb.ipynb"
        path.write_text(__import__("json").dumps({"cells": cells}), encoding="utf-8")
        return path

    name, blocks = export.module_of(notebook("#|default_exp toy", "#|export\nX = 1", "#| export\nY = 2"))
    assert name == "toy" and [source for _, source in blocks] == ["X = 1", "Y = 2"]
    with pytest.raises(export.ExportError, match="unknown marker"):
        export.module_of(notebook("#| default_exp toy", "#| exprot\nX = 1"))
    with pytest.raises(export.ExportError, match="no '#| default_exp NAME'"):
        export.module_of(notebook("#| export\nX = 1"))
