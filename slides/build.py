"""Build one reveal.js slide deck per chapter notebook, for presenting with no network.

    python slides/build.py

The decks are written to slides/build/ (git-ignored): CHAPTER.slides.html for each chapter
notebook, an index.html linking them, and lib/ with the JavaScript they load. Open
slides/build/index.html in a browser, straight from disk (file://); the folder can be copied
to another machine as it is.

- The decks show the outputs STORED in the notebooks, the ones `pytest --nbval` checks: nothing
  is re-executed.
- nbconvert's reveal template loads reveal.js, require.js, jQuery and MathJax from CDNs. The
  first build runs `npm ci` here (Node.js and npm needed, and the npm registry, once) to fetch
  the versions pinned in package-lock.json, and copies what the decks load into build/lib/;
  the decks reference them by relative paths.
- Cells follow their slide metadata (slideshow.slide_type): "slide" opens a slide, "subslide"
  a slide below it, "fragment" appears on the next key press, "notes" goes to the speaker view
  (press S), "skip" is left out. Exercise solutions (code cells hidden in JupyterLab) stay
  folded on the slide until clicked.
"""
import hashlib
import html
import json
import shutil
import subprocess
import sys
from pathlib import Path

SLIDES = Path(__file__).resolve().parent
ROOT = SLIDES.parent
BUILD = SLIDES / "build"
NODE_MODULES = SLIDES / "node_modules"
LIB = "lib"  # under BUILD; the decks refer to it relatively

# What the decks load: node_modules path -> path under build/lib/
ASSETS = {
    "reveal.js/dist": "reveal.js/dist",
    "reveal.js/plugin": "reveal.js/plugin",
    "requirejs/require.js": "require.js",
    "jquery/dist/jquery.min.js": "jquery.min.js",
    "mathjax": "mathjax",
}
# MathJax 2 ships sources, tests and fonts for every font family; the decks use the TeX fonts.
MATHJAX_SKIP = {"unpacked", "test", "Asana-Math", "Gyre-Pagella", "Gyre-Termes", "Latin-Modern",
                "Neo-Euler", "STIX", "STIX-Web"}

sys.path.insert(0, str(ROOT))
from course.export import course_notebooks as all_notebooks  # noqa: E402  (the one list of chapter notebooks)


def deck_name(notebook):
    return notebook.stem + ".slides.html"


def install_node_modules():
    """`npm ci` once: the exact versions in package-lock.json."""
    if NODE_MODULES.is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("slides/build.py needs Node.js and npm (https://nodejs.org, or your package "
                 "manager's `nodejs` and `npm`) to fetch reveal.js, require.js and MathJax once.")
    print("npm ci (fetching reveal.js, require.js, jQuery and MathJax into slides/node_modules)")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=SLIDES, check=True)


def copy_assets():
    """Copy what the decks load into build/lib/, unless the copy there is current."""
    lib = BUILD / LIB
    stamp = hashlib.sha256((SLIDES / "package-lock.json").read_bytes()
                           + repr((ASSETS, sorted(MATHJAX_SKIP))).encode()).hexdigest()
    if (lib / ".stamp").is_file() and (lib / ".stamp").read_text() == stamp \
            and all((lib / dst).exists() for dst in ASSETS.values()):
        return
    missing = [src for src in ASSETS if not (NODE_MODULES / src).exists()]
    if missing:
        sys.exit(f"slides/node_modules lacks {', '.join(missing)}: delete slides/node_modules "
                 "and run this again (it runs `npm ci`).")
    shutil.rmtree(lib, ignore_errors=True)
    for src, dst in ASSETS.items():
        src, dst = NODE_MODULES / src, lib / dst
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            skip = shutil.ignore_patterns(*MATHJAX_SKIP) if src.name == "mathjax" else None
            shutil.copytree(src, dst, ignore=skip)
        else:
            shutil.copy2(src, dst)
    (lib / ".stamp").write_text(stamp)


def exporter():
    from nbconvert import SlidesExporter
    from traitlets.config import Config

    c = Config()
    c.SlidesExporter.extra_template_basedirs = [str(SLIDES / "templates")]
    c.SlidesExporter.template_name = "course_reveal"  # nbconvert's reveal, minus mermaid
    c.SlidesExporter.reveal_url_prefix = f"{LIB}/reveal.js"
    c.SlidesExporter.require_js_url = f"{LIB}/require.js"
    c.SlidesExporter.jquery_url = f"{LIB}/jquery.min.js"
    c.SlidesExporter.mathjax_url = f"{LIB}/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe"
    c.SlidesExporter.reveal_theme = "white"
    c.SlidesExporter.reveal_number = "c/t"   # slide number / total, bottom right
    c.SlidesExporter.reveal_scroll = True    # a slide taller than the screen scrolls
    c.SlidesExporter.exclude_input_prompt = True
    c.SlidesExporter.exclude_output_prompt = True
    # A diagram cell's code (`diagrams.show("...")`) is for the notebook: a slide shows the picture.
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_input_tags = {"diagram"}
    return SlidesExporter(config=c)


def check_offline(nb, notebook):
    """Refuse what nbconvert can only render from the web."""
    rel = notebook.relative_to(ROOT)
    if "widgets" in nb.metadata:
        sys.exit(f"{rel} stores Jupyter widget state, which the decks would load from the web: "
                 "clear it (JupyterLab: Settings > Save Widget State Automatically, off) and save.")
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "```mermaid" in cell.source:
            sys.exit(f"{rel} has a mermaid diagram, which the decks would load from the web: "
                     "draw it with matplotlib or as an image instead.")


def chapter_number(notebook):
    """The chapter's number as the README gives it (1, 1b, 2, ..., 4b, 6a), from the module the
    notebook exports (`#| default_exp ch4b_performance` -> "4b")."""
    for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and source.startswith("#| default_exp ch"):
            return source.split()[2].removeprefix("ch").split("_")[0]
    sys.exit(f"{notebook.relative_to(ROOT)} names no module (#| default_exp), so it has no chapter number")


def course_order(notebooks):
    """Chapters in the README's order: 1, 1b, 2, 3, 4, 4b, 4c, 5, 6a, 6b, 6c."""
    def key(notebook):
        number = chapter_number(notebook)
        digits = "".join(ch for ch in number if ch.isdigit())
        return int(digits), number[len(digits):]
    return sorted(notebooks, key=key)


INDEX_STYLE = """body { font-family: "Source Sans Pro", Helvetica, sans-serif; color: #222; max-width: 46em;
  margin: 3em auto; padding: 0 1em; font-size: 1.25em; line-height: 1.5; }
h1 { font-weight: 600; letter-spacing: normal; text-transform: uppercase; font-size: 1.7em; }
ol { list-style: none; padding: 0; } li { margin: 0.4em 0; }
.number { display: inline-block; min-width: 2.6em; color: #777; }
a { color: #2a76dd; text-decoration: none; } a:hover { text-decoration: underline; }
p { color: #555; }"""


def title_of(nb, notebook):
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return notebook.stem


def build():
    import nbformat

    notebooks = course_order(all_notebooks())
    names = [deck_name(nb) for nb in notebooks]
    if len(set(names)) != len(names):
        sys.exit(f"two chapter notebooks share a file name, so their decks would too: {names}")
    install_node_modules()
    BUILD.mkdir(exist_ok=True)
    copy_assets()
    for old in BUILD.glob("*.slides.html"):
        if old.name not in names:
            old.unlink()
    slides_exporter = exporter()
    links = []
    for notebook in notebooks:
        nb = nbformat.read(notebook, as_version=4)
        check_offline(nb, notebook)
        body, _ = slides_exporter.from_notebook_node(nb, resources={"metadata": {"name": notebook.stem}})
        (BUILD / deck_name(notebook)).write_text(body, encoding="utf-8")
        links.append(f'<li><span class="number">{chapter_number(notebook)}</span>'
                     f'<a href="{deck_name(notebook)}">{html.escape(title_of(nb, notebook))}</a></li>')
        print(f"{notebook.relative_to(ROOT)} -> {(BUILD / deck_name(notebook)).relative_to(ROOT)}")
    (BUILD / "index.html").write_text(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Course slides</title>\n"
        f"<link rel=\"stylesheet\" href=\"{LIB}/reveal.js/dist/theme/fonts/source-sans-pro/source-sans-pro.css\">\n"
        f"<style>\n{INDEX_STYLE}\n</style></head>\n"
        "<body>\n<h1>How LLMs Are Made (From Scratch): slides</h1>\n<ol>\n" + "\n".join(links) +
        "\n</ol>\n<p>Arrow keys move between slides, S opens the speaker view, Esc the overview.</p>\n"
        "</body>\n</html>\n", encoding="utf-8")
    return [BUILD / name for name in names]


if __name__ == "__main__":
    build()
