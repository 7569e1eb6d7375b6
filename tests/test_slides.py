"""The slide decks (slides/build.py): one per chapter, offline, and they render in a browser.

Builds every deck with the documented command, checks each deck's HTML against its notebook's
slide metadata, then opens each deck from file:// in headless Chromium, driven through the
Chrome DevTools Protocol over a pipe (standard library only), and requires: the first slide
shown, no console error or uncaught exception, not one request that leaves the disk, and
reveal.js counting the slides the notebook declares. A screenshot of the first deck's title
slide is written to slides/build/title-slide.png.

Needs Node.js/npm (the first build runs `npm ci` in slides/) and Chromium (Debian: apt-get
install chromium). Without them these tests skip locally and FAIL under CI (env var CI set).
"""
import base64
import fcntl
import json
import re
import os
import select
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser

import pytest

pytestmark = pytest.mark.slow  # builds the decks with npm and renders them in Chromium

from notebook_tools import ROOT, all_notebooks

SLIDES = ROOT / "slides"
BUILD = SLIDES / "build"
NOTEBOOKS = all_notebooks()
SCREENSHOT = BUILD / "title-slide.png"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1280,720"]
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:")


def missing(what):
    """Skip locally, fail under CI: a missing tool must never look like a pass."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI must test the slide decks: .ci/run installs it)", pytrace=False)
    pytest.skip(what)


def deck_of(notebook):
    return BUILD / (notebook.stem + ".slides.html")


def slide_types(notebook):
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    return [c["metadata"].get("slideshow", {}).get("slide_type", "-") for c in nb["cells"]]


def title_of(notebook):
    """The text of the notebook's `# ` title line, markdown emphasis removed."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip().replace("*", "").replace("`", "")
    raise AssertionError(f"{notebook.name} has no '# ' title")


@pytest.fixture(scope="module")
def decks():
    if shutil.which("npm") is None and not (SLIDES / "node_modules").is_dir():
        missing("npm is not installed: slides/build.py needs Node.js and npm to fetch reveal.js")
    result = subprocess.run([sys.executable, "slides/build.py"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"python slides/build.py failed:\n{result.stdout}\n{result.stderr}"
    return {nb: deck_of(nb) for nb in NOTEBOOKS}


class DeckHTML(HTMLParser):
    """Section nesting and every URL the page loads by itself (scripts, stylesheets, ...)."""

    def __init__(self, text):
        super().__init__()
        self.depth = 0
        self.sections = {}  # nesting depth -> count
        self.loaded = []    # (tag, url)
        self.solutions = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.depth += 1
            self.sections[self.depth] = self.sections.get(self.depth, 0) + 1
        elif tag == "details" and "solution" in (attrs.get("class") or "").split():
            self.solutions += 1
        for attr in ("src", "href"):
            if attrs.get(attr) and not (tag == "a" and attr == "href"):  # links are not loaded
                self.loaded.append((tag, attrs[attr]))

    def handle_endtag(self, tag):
        if tag == "section":
            self.depth -= 1


def test_one_deck_per_chapter(decks):
    built = sorted(p.name for p in BUILD.glob("*.slides.html"))
    assert built == sorted(deck.name for deck in decks.values())
    assert len(built) == len(NOTEBOOKS) >= 1
    index = (BUILD / "index.html").read_text(encoding="utf-8")
    for deck in decks.values():
        assert f'href="{deck.name}"' in index


def test_the_index_lists_the_chapters_in_course_order_with_the_readmes_numbers(decks):
    index = (BUILD / "index.html").read_text(encoding="utf-8")
    numbers = re.findall(r'<span class="number">([0-9a-z]+)</span>', index)
    assert numbers == ["1", "1b", "2", "3", "4", "4b", "4c", "5", "5b", "6a", "6b", "6c"], numbers
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for number in numbers:
        assert f"| {number} · " in readme, f"the README's chapter table has no row {number}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_deck_has_a_slide_per_slide_cell(decks, notebook):
    """reveal.js nests: a "slide" cell opens a horizontal <section> (a top-level slide) holding
    a vertical <section> for itself and one more per "subslide" cell below it. So the deck has
    as many top-level sections as "slide" cells, and as many navigable slides (inner sections)
    as "slide" plus "subslide" cells; nothing nests deeper."""
    types = slide_types(notebook)
    visible = [t for t in types if t not in ("skip", "notes")]
    assert visible and visible[0] == "slide", \
        f"{notebook.name}: the first shown cell (the title) must have slide_type 'slide'"
    page = DeckHTML(decks[notebook].read_text(encoding="utf-8"))
    assert page.depth == 0, "unbalanced <section> tags"
    assert page.sections.get(1, 0) == types.count("slide")
    assert page.sections.get(2, 0) == types.count("slide") + types.count("subslide")
    assert set(page.sections) == {1, 2}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_deck_loads_nothing_from_the_web(decks, notebook):
    page = DeckHTML(decks[notebook].read_text(encoding="utf-8"))
    assert any(tag == "script" for tag, _ in page.loaded), "parser found no scripts"
    remote = [(tag, url) for tag, url in page.loaded
              if not url.startswith("data:") and ("://" in url or url.startswith("//"))]
    assert not remote, f"loaded from the web: {remote}"
    for tag, url in page.loaded:
        if not url.startswith(("data:", "#")):  # embedded images, references inside the page
            path = (BUILD / url.split("?")[0]).resolve()
            assert path.is_file() and BUILD in path.parents, f"<{tag}> {url} is not a file in slides/build/"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_solutions_are_folded(decks, notebook):
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    hidden = [c for c in nb["cells"] if c["cell_type"] == "code"
              and c["metadata"].get("jupyter", {}).get("source_hidden")
              and c["metadata"].get("slideshow", {}).get("slide_type") != "skip"]
    assert DeckHTML(decks[notebook].read_text(encoding="utf-8")).solutions == len(hidden)


# --- Chromium, driven through the DevTools protocol on a pipe ------------------------------------

class Chromium:
    """A headless Chromium whose DevTools protocol runs over fds 3 (commands) and 4 (replies):
    JSON messages ended by a NUL byte (--remote-debugging-pipe)."""

    def __init__(self, executable, profile, log):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire_fds():  # in the child: fd 3 reads our commands, fd 4 writes the replies
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_r, from_chrome_w)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
             "about:blank"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            preexec_fn=wire_fds, close_fds=False)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events = []

    def _message(self, deadline):
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_chrome], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe (did it crash? see its log)")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method, session=None, timeout=30, **params):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._to_chrome, data):]
        deadline = time.monotonic() + timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method, session, timeout=30):
        """Wait for the event `method` of `session` (one already received counts)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event["params"]
            seen = len(self.events)
            self.events.append(self._message(deadline))

    def evaluate(self, session, expression, timeout=30):
        result = self.call("Runtime.evaluate", session, timeout=timeout, expression=expression,
                           awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        missing("Chromium is not installed (Debian: apt-get install chromium)")
    folder = tmp_path_factory.mktemp("chromium")
    with open(folder / "chromium.log", "wb") as log:
        browser = Chromium(executable, folder / "profile", log)
        try:
            browser.call("Browser.getVersion", timeout=60)
            yield browser
        finally:
            browser.close()


def problems_in(events, session):
    """Console errors, uncaught exceptions and requests that leave the disk, from a page's events."""
    found = []
    for event in events:
        if event.get("sessionId") != session:
            continue
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            args = [str(a.get("value", a.get("description", ""))) for a in params.get("args", [])]
            found.append("console." + params["type"] + ": " + " ".join(args))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            found.append("uncaught: " + details.get("exception", {}).get("description", details.get("text", "")))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            found.append(f"log: {params['entry']['text']} {params['entry'].get('url', '')}")
        elif method == "Network.requestWillBeSent" and not params["request"]["url"].startswith(LOCAL_SCHEMES):
            found.append("network request: " + params["request"]["url"])
    return found


SHOWN_SLIDE = """(() => {
  const shown = document.querySelector('.reveal .slides > section.present > section.present');
  const first = document.querySelector('.reveal .slides > section > section');
  const box = shown ? shown.getBoundingClientRect() : {width: 0, height: 0};
  const number = document.querySelector('.reveal .slide-number');
  return {isFirst: shown !== null && shown === first, text: shown ? shown.innerText : '',
          width: box.width, height: box.height, number: number ? number.innerText : ''};
})()"""


def open_deck(browser, deck):
    """Open `deck` in a new tab; wait until reveal.js is ready, MathJax has typeset the page and
    the fonts have loaded. Returns (session, target, problems)."""
    target = browser.call("Target.createTarget", url="about:blank")["targetId"]
    session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Runtime", "Log", "Network", "Page"):
        browser.call(f"{domain}.enable", session)
    start = len(browser.events)
    browser.call("Page.navigate", session, url=deck.as_uri())
    browser.wait_for("Page.loadEventFired", session)
    deadline = time.monotonic() + 30
    while not browser.evaluate(session, "document.querySelector('.reveal.ready') !== null"):
        if time.monotonic() > deadline:
            raise AssertionError(f"{deck.name}: reveal.js never became ready; "
                                 f"{problems_in(browser.events[start:], session)}")
        time.sleep(0.1)
    browser.evaluate(session, "new Promise(done => MathJax.Hub.Queue(() => done(true)))")
    # Load every font the page declares (MathJax's and the theme's), not only the first
    # slide's: a font file missing from slides/build/lib/ shows up as a failed load.
    browser.evaluate(session, "Promise.all([...document.fonts].map(f => f.load().catch(() => null)))"
                              ".then(() => true)")
    browser.call("Runtime.evaluate", session, expression="1")  # let pending events arrive
    return session, target, problems_in(browser.events[start:], session)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_deck_renders_in_chromium(decks, chromium, notebook):
    session, target, problems = open_deck(chromium, decks[notebook])
    try:
        shown = chromium.evaluate(session, SHOWN_SLIDE)
    finally:
        chromium.call("Target.closeTarget", targetId=target)
    assert not problems, f"{decks[notebook].name} in Chromium:\n" + "\n".join(problems)
    assert shown["isFirst"] and shown["width"] > 0 and shown["height"] > 0, shown
    text = " ".join(shown["text"].split()).casefold()  # the theme shows headings in capitals
    assert title_of(notebook).casefold() in text, shown["text"][:300]
    types = slide_types(notebook)
    assert shown["number"].replace(" ", "") == f"1/{types.count('slide') + types.count('subslide')}", \
        f"reveal.js counts {shown['number']!r} slides"


def test_title_slide_screenshot(decks, chromium):
    """A 1280x720 PNG of the first chapter's title slide, with something drawn on it."""
    from matplotlib.image import imread
    import numpy as np

    deck = decks[NOTEBOOKS[0]]
    SCREENSHOT.unlink(missing_ok=True)
    session, target, problems = open_deck(chromium, deck)
    try:
        chromium.call("Emulation.setDeviceMetricsOverride", session, width=1280, height=720,
                      deviceScaleFactor=1, mobile=False)
        size = chromium.evaluate(session, "new Promise(done => requestAnimationFrame(() => "
                                          "requestAnimationFrame(() => done([innerWidth, innerHeight]))))")
        assert size == [1280, 720], size  # reveal.js has laid the slide out again for this size
        png = chromium.call("Page.captureScreenshot", session, format="png")["data"]
    finally:
        chromium.call("Target.closeTarget", targetId=target)
    assert not problems, problems
    SCREENSHOT.write_bytes(base64.b64decode(png))
    image = imread(SCREENSHOT)
    assert image.shape[:2] == (720, 1280), image.shape
    gray = image[..., :3].mean(axis=2)
    background = np.median(gray)
    drawn = np.abs(gray - background) > 0.2
    assert 0.005 < drawn.mean() < 0.6, f"{drawn.mean():.2%} of the screenshot differs from its background"


DIAGRAM_SLIDE = BUILD / "diagram-slide.png"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_decks_hold_the_chapters_diagrams(decks, notebook):
    """Every diagram cell's stored PNG is embedded in the deck (the decks need no file besides)."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    diagram_cells = [c for c in nb["cells"] if c["cell_type"] == "code" and "diagrams.show(" in "".join(c["source"])
                     and c["metadata"].get("slideshow", {}).get("slide_type") != "skip"]
    deck = decks[notebook].read_text(encoding="utf-8")
    for cell in diagram_cells:
        png = next(out["data"]["image/png"] for out in cell["outputs"] if "image/png" in out.get("data", {}))
        png = "".join(png) if isinstance(png, list) else png
        assert png.strip()[:200] in deck, f"a diagram of {notebook.name} is missing from its deck"


def test_a_diagram_slide_screenshot(decks, chromium):
    """A 1280x720 PNG of the slide that shows chapter 3's first diagram (GPTModel end to end)."""
    from matplotlib.image import imread
    import numpy as np

    deck = next(deck for nb, deck in decks.items() if nb.name == "LLM-GPT-arch.ipynb")
    DIAGRAM_SLIDE.unlink(missing_ok=True)
    session, target, problems = open_deck(chromium, deck)
    try:
        chromium.call("Emulation.setDeviceMetricsOverride", session, width=1280, height=720,
                      deviceScaleFactor=1, mobile=False)
        shown = chromium.evaluate(session, """new Promise(done => require(["lib/reveal.js/dist/reveal.js"], Reveal => {
          const img = document.querySelector('.reveal .slides img');
          const slide = img.closest('section');
          const indices = Reveal.getIndices(slide);
          Reveal.slide(indices.h, indices.v, slide.querySelectorAll('.fragment').length - 1);
          setTimeout(() => {  // after the slide transition (reveal.js animates for about 0.8 s)
            const box = img.getBoundingClientRect();
            done({visible: box.width > 200 && box.height > 100 && box.left >= 0 && box.right <= innerWidth
                           && box.top < innerHeight && box.bottom > 0, slide: Reveal.getIndices()});
          }, 1500);
        }))""")
        png = chromium.call("Page.captureScreenshot", session, format="png")["data"]
    finally:
        chromium.call("Target.closeTarget", targetId=target)
    assert not problems, problems
    assert shown["visible"], shown
    DIAGRAM_SLIDE.write_bytes(base64.b64decode(png))
    image = imread(DIAGRAM_SLIDE)
    assert image.shape[:2] == (720, 1280), image.shape
    gray = image[..., :3].mean(axis=2)
    assert (np.abs(gray - np.median(gray)) > 0.2).mean() > 0.01, "the diagram slide looks empty"
