"""Screenshot built documentation pages in headless Chromium at desktop and phone widths.

A developer's tool for looking at the docs as readers do (not a test, not a dependency)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
    python tools/docs_screenshots.py docs/_build/html /tmp/screens

For each page and width it writes ``<page>-<width>.png`` (the first screen) and
``<page>-<width>-full.png`` (the whole page), and prints pages that are wider than the
screen (a phone reader then has to scroll the whole page sideways, not just a code block).
``--search lmer`` also shoots ``search.html?q=lmer`` once the results have loaded.

It needs only a Chromium binary (``apt-get install chromium``, or ``--browser PATH``): it
drives the browser over the DevTools protocol on a pipe (``--remote-debugging-pipe``),
so no Python package (playwright, selenium, websockets) is required.

Formulas are typeset by MathJax, which pages load from a CDN; on a machine without network
build the site for screenshots with a local copy (Debian's ``libjs-mathjax``)::

    python -m sphinx -b html docs /tmp/html \
        -D mathjax_path=file:///usr/share/javascript/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML
"""
import argparse
import base64
import fcntl
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

PAGES = ["index.html", "auto_tutorials/plot_01_school_sequence.html", "plots.html",
         "auto_tutorials/index.html"]
# name: (CSS width, CSS height, device pixel ratio, mobile)
SIZES = {"desktop": (1366, 900, 1, False), "phone": (390, 844, 2, True)}


class Chromium:
    """A headless Chromium with one page, driven by DevTools messages on fds 3 (in) and 4 (out)."""

    def __init__(self, binary):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def pipe_fds():  # in the child: the browser reads commands on fd 3, replies on fd 4
            # Move both ends above 4 first, so that neither dup2 clobbers the other.
            r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)
            os.closerange(5, os.sysconf("SC_OPEN_MAX"))  # our ends stay with us (EOF works)

        self._proc = subprocess.Popen(
            [binary, "--headless=new", "--remote-debugging-pipe", "--no-sandbox",
             "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--mute-audio",
             "--disable-background-networking", "--disable-extensions", "about:blank"],
            close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=pipe_fds)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._next_id = 0
        self.events = []
        target = next(t for t in self.send("Target.getTargets")["targetInfos"]
                      if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=target["targetId"],
                                 flatten=True)["sessionId"]
        self.page("Page.enable")
        self.page("Runtime.enable")

    def _read_message(self):
        while b"\0" not in self._buf:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method, session=None, **params):
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def page(self, method, **params):
        return self.send(method, session=self.session, **params)

    def wait_event(self, method, timeout=30):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for i, ev in enumerate(self.events):
                if ev.get("method") == method:
                    del self.events[: i + 1]
                    return ev
            self.events.append(self._read_message())
        raise TimeoutError(method)

    def evaluate(self, expression):
        res = self.page("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)
        return res["result"].get("value")

    def close(self):
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError):
            pass
        self._proc.wait(timeout=10)


def shoot(browser, url, size, color_scheme, wait_for=None):
    """Load url at size; return (first-screen png, full-page png, page width in CSS px)."""
    width, height, dpr, mobile = SIZES[size]
    browser.page("Emulation.setDeviceMetricsOverride", width=width, height=height,
                 deviceScaleFactor=dpr, mobile=mobile)
    browser.page("Emulation.setEmulatedMedia",
                 features=[{"name": "prefers-color-scheme", "value": color_scheme}])
    browser.events.clear()
    browser.page("Page.navigate", url=url)
    browser.wait_event("Page.loadEventFired")
    browser.evaluate("document.fonts.ready.then(() => true)")
    if wait_for:  # e.g. the search results, which are filled in after the load event
        end = time.monotonic() + 20
        while not browser.evaluate(wait_for) and time.monotonic() < end:
            time.sleep(0.2)
    time.sleep(0.3)  # let the theme's scripts settle (dark/light switch, scrollspy)
    first = browser.page("Page.captureScreenshot", format="png")["data"]
    page_w, page_h = browser.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
    full = browser.page("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                        clip={"x": 0, "y": 0, "width": max(page_w, width),
                              "height": min(page_h, 16000), "scale": 1})["data"]
    # Leave the viewport as it was: captureBeyondViewport resizes it temporarily.
    browser.page("Emulation.clearDeviceMetricsOverride")
    return base64.b64decode(first), base64.b64decode(full), page_w


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("html_dir", type=pathlib.Path, help="a built HTML site (sphinx -b html)")
    p.add_argument("out_dir", type=pathlib.Path)
    p.add_argument("--pages", nargs="+", default=PAGES, help="pages relative to html_dir")
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--search", metavar="TERM", help="also shoot search.html?q=TERM")
    p.add_argument("--color-scheme", default="light", choices=["light", "dark"])
    p.add_argument("--browser", default=shutil.which("chromium") or shutil.which("chromium-browser")
                   or shutil.which("google-chrome"))
    args = p.parse_args(argv)
    if not args.browser:
        p.error("no Chromium found: apt-get install chromium, or pass --browser")
    root = args.html_dir.resolve()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(page, root / page, None) for page in args.pages]
    if args.search:
        # Sphinx's search script fills #search-results (ul.search) after loading searchindex.js.
        jobs.append((f"search-{args.search}", root / "search.html",
                     "document.querySelectorAll('#search-results li, ul.search li').length > 0"))
    browser = Chromium(args.browser)
    wide = []
    try:
        for name, path, wait_for in jobs:
            if not path.is_file():
                sys.exit(f"{path} does not exist")
            url = path.as_uri() + (f"?q={args.search}" if wait_for else "")
            stem = name.removesuffix(".html").replace("/", "-")
            for size in args.sizes:
                first, full, page_w = shoot(browser, url, size, args.color_scheme, wait_for)
                for suffix, data in (("", first), ("-full", full)):
                    out = args.out_dir / f"{stem}-{size}{suffix}.png"
                    out.write_bytes(data)
                    print(out)
                if page_w > SIZES[size][0]:
                    wide.append(f"{name} at {size}: {page_w} px wide for a {SIZES[size][0]} px screen")
    finally:
        browser.close()
    for line in wide:
        print("WIDER THAN THE SCREEN:", line)


if __name__ == "__main__":
    main()
