"""A headless Chromium driven through the Chrome DevTools Protocol over a pipe (standard library
only): what slides/paginate.py measures the decks with and tests/test_slides.py checks them with.

    with browser() as chromium:
        session, target, problems = open_deck(chromium, Path("slides/build/LLM-training.slides.html"))
        chromium.evaluate(session, "Reveal.getTotalSlides()")

Needs Chromium (Debian: apt-get install chromium).
"""
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

# A 1280x720 window: the screen the decks are made to fit.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1280,720"]
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:")


def executable():
    """The Chromium on PATH, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


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


@contextlib.contextmanager
def browser(folder=None):
    """A started Chromium (profile and log in `folder`, a temporary folder by default), closed on exit."""
    chromium = executable()
    if chromium is None:
        raise FileNotFoundError("Chromium is not installed (Debian: apt-get install chromium)")
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chromium-")))
        log = stack.enter_context(open(Path(folder) / "chromium.log", "wb"))
        started = Chromium(chromium, Path(folder) / "profile", log)
        try:
            started.call("Browser.getVersion", timeout=60)
            yield started
        finally:
            started.close()


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
            raise RuntimeError(f"{deck.name}: reveal.js never became ready; "
                                 f"{problems_in(browser.events[start:], session)}")
        time.sleep(0.1)
    browser.evaluate(session, "new Promise(done => MathJax.Hub.Queue(() => done(true)))")
    # Load every font the page declares (MathJax's and the theme's), not only the first
    # slide's: a font file missing from slides/build/lib/ shows up as a failed load.
    browser.evaluate(session, "Promise.all([...document.fonts].map(f => f.load().catch(() => null)))"
                              ".then(() => true)")
    browser.call("Runtime.evaluate", session, expression="1")  # let pending events arrive
    return session, target, problems_in(browser.events[start:], session)




def each_slide(browser, session, measure):
    """Show each slide of the deck open in `session` in turn (no transition), wait until MathJax
    has typeset it again (reveal.js has it re-render every slide it shows), then evaluate
    `measure`, a JavaScript function of (slide, indices). Returns {"height": the layout height,
    "slides": [what measure returned, per slide]}."""
    reveal = "require('lib/reveal.js/dist/reveal.js')"  # loaded by the deck: require returns it
    count = browser.evaluate(session, f"(() => {{ const Reveal = {reveal}; Reveal.configure({{transition: 'none', "
                                      "backgroundTransition: 'none'}); return Reveal.getSlides().length; })()")
    slides = [browser.evaluate(session, f"""new Promise(done => {{
  const Reveal = {reveal}, slide = Reveal.getSlides()[{i}], at = Reveal.getIndices(slide);
  Reveal.slide(at.h, at.v);
  // after the template's refit, which waits for the next frame
  MathJax.Hub.Queue(() => requestAnimationFrame(() => setTimeout(() => done(({measure})(slide, at)))));
}})""") for i in range(count)]
    return {"height": browser.evaluate(session, f"{reveal}.getConfig().height"), "slides": slides}
