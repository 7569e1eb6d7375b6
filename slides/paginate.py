"""Start a new subslide wherever a deck's slide would be taller than the screen.

    python slides/paginate.py           # rewrites the notebooks' slide metadata, then reports
    python slides/paginate.py --check   # changes nothing; exit status 1 if it would

Builds the decks (slides/build.py), opens each in headless Chromium at 1280x720 and measures,
on every slide with every fragment shown, where each cell's rendering starts and ends. Then,
slide by slide, it keeps cells together while they fit reveal.js's layout height (700 px) and
starts a new subslide before the first cell that would overflow; a markdown cell just before a
code cell moves along with it when the two fit together. It changes nothing else: "slide"
starts, "skip" and "notes" cells, the order and content of the cells, and every other byte of
the notebooks stay as they are. It rebuilds and measures again until every slide of more than
one cell fits, so running it twice changes nothing the second time.

A cell taller than the layout on its own cannot be paginated: the decks' template scales such a
slide down to fit when it is shown. The report lists those cells with their factor; below about
0.6 the text is too small to read, so split such a cell in the notebook.

Needs what slides/build.py needs (Node.js and npm, once) and Chromium.
"""
import argparse
import json
import sys
from pathlib import Path

SLIDES = Path(__file__).resolve().parent
sys.path.insert(0, str(SLIDES))
import build  # noqa: E402
from chromium import browser, each_slide, open_deck  # noqa: E402

UNREADABLE = 0.6  # a slide scaled by less than this is too small to read: split its cell
ROUNDS = 5        # build, measure, paginate; more rounds only if a prediction was off

# Each slide of the deck, shown (slides/chromium.py's each_slide): its height with every
# fragment laid out (reveal.js hides fragments with opacity, so they take their place), the
# factor the template's script scaled it by, and where each cell starts and ends, in layout
# pixels from the slide's top, measured at full size.
MEASURE = """(slide, at) => {
  const fit = slide.dataset.fit ? Number(slide.dataset.fit) : 1;
  for (const part of slide.children) part.style.zoom = '';
  const box = slide.getBoundingClientRect(), scale = box.height / slide.offsetHeight;
  const cells = [...slide.querySelectorAll('.jp-Cell')].map(cell => {
    const shown = cell.closest('details') || cell;  // a folded solution shows its summary
    const r = shown.getBoundingClientRect();
    return {id: cell.id.replace(/^cell-id=/, ''), top: (r.top - box.top) / scale,
            bottom: (r.bottom - box.top) / scale};
  });
  return {slide: `${at.h + 1}.${at.v + 1}`, height: slide.scrollHeight, fit, cells};
}"""


def dumps(nb):
    """The notebooks' own JSON format (nbformat's: one-space indent, UTF-8, a final newline)."""
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def read(notebook):
    text = notebook.read_text(encoding="utf-8")
    nb = json.loads(text)
    if dumps(nb) != text:
        sys.exit(f"{notebook.relative_to(build.ROOT)} is not saved in nbformat's JSON layout, so rewriting "
                 "its metadata would change other bytes too: open and save it in Jupyter first.")
    if not all(cell.get("id") for cell in nb["cells"]):
        sys.exit(f"{notebook.relative_to(build.ROOT)} has cells without an id (nbformat < 4.5), so its "
                 "deck's cells cannot be matched to them: save it with a current Jupyter first.")
    return nb


def slide_type(cell):
    return cell["metadata"].get("slideshow", {}).get("slide_type", "-")


def measure(chromium, deck):
    session, target, problems = open_deck(chromium, deck)
    try:
        if problems:
            sys.exit(f"{deck.name} in Chromium:\n" + "\n".join(problems))
        chromium.call("Emulation.setDeviceMetricsOverride", session, width=1280, height=720,
                      deviceScaleFactor=1, mobile=False)
        measured = each_slide(chromium, session, MEASURE)
        return {"limit": measured["height"], "slides": measured["slides"]}
    finally:
        chromium.call("Target.closeTarget", targetId=target)


def shown_slides(nb, measured):
    """Per slide: its height, scale factor and the cells it shows (skip and notes cells have no
    box), each cell as (id, top, bottom)."""
    shown = {c["id"] for c in nb["cells"] if slide_type(c) not in ("skip", "notes")}
    slides = []
    for slide in measured["slides"]:
        cells = [(c["id"], c["top"], c["bottom"]) for c in slide["cells"] if c["id"] in shown]
        slides.append({**slide, "cells": cells})
    return slides


def new_subslides(nb, measured):
    """The ids of the cells that must start a subslide so that no slide of several cells is
    taller than the layout: greedy, slide by slide."""
    limit = measured["limit"]
    kind = {c["id"]: c["cell_type"] for c in nb["cells"]}
    starts = []
    for slide in shown_slides(nb, measured):
        cells = slide["cells"]
        if len(cells) < 2:
            continue
        # What the slide adds to its cells' span: its padding, the first cell's margin ...
        overhead = slide["height"] - (cells[-1][2] - cells[0][1])

        def fits(first, last):
            return overhead + cells[last][2] - cells[first][1] <= limit

        first = 0
        for k in range(1, len(cells)):
            if fits(first, k):
                continue
            start = k
            # A markdown cell that introduces a code cell goes along with it, if both fit.
            if (kind[cells[k][0]] == "code" and kind[cells[k - 1][0]] == "markdown"
                    and k - 1 > first and fits(k - 1, k)):
                start = k - 1
            starts.append(cells[start][0])
            first = start
    return starts


def mark_subslides(nb, ids):
    for cell in nb["cells"]:
        if cell["id"] in ids:
            metadata = cell["metadata"]
            assert slide_type(cell) in ("-", "fragment"), (cell["id"], slide_type(cell))
            if "slideshow" in metadata:
                metadata["slideshow"]["slide_type"] = "subslide"
            else:  # nbformat writes the keys sorted: keep them so
                was_sorted = list(metadata) == sorted(metadata)
                metadata["slideshow"] = {"slide_type": "subslide"}
                if was_sorted:
                    cell["metadata"] = dict(sorted(metadata.items()))


def slide_count(nb):
    return sum(slide_type(c) in ("slide", "subslide") for c in nb["cells"])


def first_line(cell):
    for line in "".join(cell["source"]).splitlines():
        if line.strip() and not line.startswith(("#|", "# NBVAL")):
            return line.strip()[:60]
    return ""


def paginate(check=False):
    build.build()
    notebooks = build.course_order(build.all_notebooks())
    originals = {notebook: read(notebook) for notebook in notebooks}
    current = {notebook: json.loads(json.dumps(nb)) for notebook, nb in originals.items()}
    slides_exporter = build.exporter()
    with browser() as chromium:
        todo = list(notebooks)
        for _ in range(ROUNDS if not check else 1):
            changed = []
            for notebook in todo:
                deck = build.BUILD / build.deck_name(notebook)
                starts = new_subslides(current[notebook], measure(chromium, deck))
                if starts:
                    mark_subslides(current[notebook], set(starts))
                    changed.append(notebook)
            if check or not changed:
                break
            for notebook in changed:  # the next round measures the notebook as it will be written
                notebook.write_text(dumps(current[notebook]), encoding="utf-8")
                build.build_deck(notebook, slides_exporter)
            todo = changed
        else:
            sys.exit(f"slides still overflow after {ROUNDS} rounds: {[n.name for n in changed]}")
        if check:
            return report(chromium, notebooks, originals, current, written=False)
    build.build()  # the index too
    with browser() as chromium:
        return report(chromium, notebooks, originals, current, written=True)


def report(chromium, notebooks, originals, current, written):
    """Print per deck: slides before and after, and each slide whose one cell is scaled to fit
    (as the decks now are: in --check mode, the notebooks unchanged)."""
    changes, unreadable = 0, []
    print(f"{'deck':44} slides before -> after   scaled slides (factor: cell)")
    for notebook in notebooks:
        before, after = originals[notebook], current[notebook]
        changes += before != after
        scaled = []
        cells = {c["id"]: (i, c) for i, c in enumerate(after["cells"])}
        measured = measure(chromium, build.BUILD / build.deck_name(notebook))
        for slide in shown_slides(after, measured):
            if slide["height"] <= measured["limit"] or not slide["cells"]:
                continue
            if len(slide["cells"]) > 1 or slide["fit"] >= 1:
                if written:
                    sys.exit(f"{notebook.name} slide {slide['slide']} is still {slide['height']} px tall")
                continue  # what running it would change
            index, cell = cells[slide["cells"][0][0]]
            scaled.append(f"{slide['fit']:.3f}: slide {slide['slide']}, cell {index} "
                          f"({slide['height']:.0f} px) {first_line(cell)!r}")
            if slide["fit"] < UNREADABLE:
                unreadable.append(f"{notebook.relative_to(build.ROOT)} cell {index} (id {cell['id']}, "
                                  f"slide {slide['slide']}, scaled {slide['fit']:.3f}): {first_line(cell)!r}")
        print(f"{notebook.relative_to(build.ROOT).as_posix():44} {slide_count(before):6} -> {slide_count(after):<6}"
              f"  {len(scaled)} scaled")
        for line in scaled:
            print(f"{'':48}{line}")
    if unreadable:
        print(f"\nScaled below {UNREADABLE} (too small to read): split these cells in their notebooks, "
              "then run this again:\n  " + "\n  ".join(unreadable))
    if not written:
        print(f"\n{changes} notebook(s) would change: run `python slides/paginate.py`." if changes
              else "\nEvery slide of several cells fits: nothing to change.")
    return changes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit status 1 if it would")
    args = parser.parse_args()
    changes = paginate(check=args.check)
    sys.exit(1 if args.check and changes else 0)


if __name__ == "__main__":
    main()
