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
    generated = {p.name for p in (ROOT / "course").glob("ch*.py")}
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


UNCACHED = """
import sys, torch
import course.ch3_architecture as ch3  # chapter 3 alone: no KV cache added yet
assert "course.ch4b_performance" not in sys.modules
cfg = {"vocab_size": 97, "context_length": 16, "emb_dim": 24, "n_heads": 4, "n_layers": 2,
       "drop_rate": 0.0, "qkv_bias": True}
torch.manual_seed(0)
model = ch3.GPTModel(cfg).eval()
ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    torch.save({"state": model.state_dict(), "ids": ids, "logits": model(ids),
                "greedy": ch3.generate_text_simple(model, ids[:1, :3], 20, 16)}, sys.argv[1])
"""


def test_helpers_gptmodel_computes_chapter_3s_function(tmp_path):
    """helpers.GPTModel carries chapter 4b's cache; without one it must be chapter 3's model,
    bit for bit, and its cached generation must give chapter 3's greedy tokens."""
    import torch

    import helpers

    out = tmp_path / "ch3.pt"
    run = subprocess.run([sys.executable, "-c", UNCACHED, str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    reference = torch.load(out, weights_only=True)
    cfg = {"vocab_size": 97, "context_length": 16, "emb_dim": 24, "n_heads": 4, "n_layers": 2,
           "drop_rate": 0.0, "qkv_bias": True}
    model = helpers.GPTModel(cfg).eval()
    model.load_state_dict(reference["state"])
    with torch.no_grad():
        assert torch.equal(model(reference["ids"]), reference["logits"])
    prompt = reference["ids"][:1, :3]
    assert torch.equal(helpers.generate(model, prompt, 20, 16), reference["greedy"])  # past the context too
