"""The built book as a learner sees it: every lesson page rendered in headless Chromium, offline.

    python tools/check_book.py [--html build/book/html] [--pages GLOB ...] [--screenshots DIR]
    make book-check          # builds the book first

For every page it checks, at a 1366 × 900 window (a common laptop screen):

- **formulas**: MathJax loaded from the book itself and typeset every formula: each ``.math`` element holds
  an ``mjx-container``, none holds an error (``mjx-merror``); the network is cut off for the browser
  (``--host-resolver-rules`` resolves every host but 127.0.0.1 to nothing), so a book that still needs
  a CDN fails here;
- **listening rows**: every audio player of the page lies inside the content column (nothing to scroll
  sideways to);
- **wide content**: no display equation, figure or output wider than the content column, and no sideways
  scrolling of the page itself.

How it measures without a DevTools client: the pages are served from 127.0.0.1 by a subclass of
``http.server.SimpleHTTPRequestHandler`` that appends one ``<script>`` (``PROBE``) to every HTML page it
serves (the built files are not touched). After MathJax has typeset the page, the probe measures the
elements with ``getBoundingClientRect`` and writes its findings as JSON into the page; Chromium's
``--dump-dom`` prints the page, and this script reads the JSON back. ``--screenshots`` also saves one
screenshot per page with its first listening row (or its widest display formula) moved to the top of
the column, to look at.

Prints one line per page and exits 1 if any page fails. Needs Chromium (Debian: ``apt-get install
chromium``); not part of ``make test``.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import re
import shutil
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 1366, 900
TOLERANCE_PX = 2          # sub-pixel rounding
CHROMIUM = ("chromium", "chromium-browser", "/usr/lib/chromium/chromium", "google-chrome")

PROBE = r"""
<script>
(function () {
  function px(r) { return Math.round(r * 10) / 10; }
  function describe(el) {
    var cell = el.closest('.cell, section'); var id = cell && (cell.id || (cell.querySelector('h1,h2,h3') || {}).id);
    return el.tagName.toLowerCase() + (el.className && typeof el.className === 'string' ? '.' + el.className.split(' ')[0] : '') + (id ? ' in #' + id : '');
  }
  function measure(mathjax) {
    var col = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
    var c = col.getBoundingClientRect(), right = c.right + %(tol)d, left = c.left - %(tol)d, out = [];
    var report = {column: [px(c.left), px(c.right)], mathjax: mathjax, problems: out, audio: 0, math: 0, typeset: 0};
    document.querySelectorAll('audio').forEach(function (a) {
      report.audio++; var r = a.getBoundingClientRect();
      if (r.right > right || r.left < left) out.push('audio player at x ' + px(r.left) + '..' + px(r.right) + ' outside the column (' + describe(a) + ')');
    });
    document.querySelectorAll('.math').forEach(function (m) {
      report.math++;
      var jax = m.querySelector('mjx-container');
      if (!jax) { out.push('formula not typeset: ' + m.textContent.trim().slice(0, 60)); return; }
      report.typeset++;
      if (m.querySelector('mjx-merror')) out.push('MathJax error in: ' + m.textContent.trim().slice(0, 60));
      var r = jax.getBoundingClientRect(), w = Math.max(jax.scrollWidth, r.width);
      var clipped = m.tagName === 'DIV' && m.scrollWidth > m.clientWidth + %(tol)d;   // a display formula's box
      if (r.left + w > right || clipped) out.push('formula ' + px(w) + ' px wide, cut off or scrolled in a ' + px(c.width) + ' px column (' + describe(m) + ')');
    });
    document.querySelectorAll('.cell_output img, .cell_output table, .cell_output .selib-audio-row, article img').forEach(function (e) {
      var r = e.getBoundingClientRect();
      if (r.width > 0 && r.right > right) out.push(describe(e) + ' reaches x ' + px(r.right) + ', past the column');
    });
    if (document.documentElement.scrollWidth > window.innerWidth + %(tol)d) out.push('the page scrolls sideways (' + document.documentElement.scrollWidth + ' px)');
    var pre = document.createElement('pre'); pre.id = 'selib-book-check'; pre.textContent = JSON.stringify(report);
    document.body.appendChild(pre);
    if (location.search.indexOf('shot') < 0) return;
    // For the screenshot: bring the first listening row (or the widest display formula) to the top of the
    // column, at the column's own width, so one window shows it.
    var focus = document.querySelector('.cell_output audio'), widest = 0;
    if (!focus) document.querySelectorAll('div.math').forEach(function (m) { if (m.scrollWidth > widest) { widest = m.scrollWidth; focus = m; } });
    var block = focus && (focus.closest('.cell') || focus);
    if (block) col.insertBefore(block, col.firstChild);
  }
  var done = false;
  function once(mathjax) { if (!done) { done = true; measure(mathjax); } }
  window.addEventListener('load', function () {
    if (!document.querySelector('.math')) { once('no formulas on the page'); return; }
    var tries = 0;
    (function wait() {
      var mj = window.MathJax;
      if (mj && mj.startup && mj.startup.promise) { mj.startup.promise.then(function () { once('MathJax ' + mj.version); }); return; }
      if (++tries > 100) { once('MathJax did not load'); return; }
      setTimeout(wait, 100);
    })();
  });
})();
</script>
""".replace("%(tol)d", str(TOLERANCE_PX))


class ProbingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the built book as ``python -m http.server`` would, with ``PROBE`` appended to each HTML page."""

    def send_head(self):
        path = Path(self.translate_path(self.path))
        if path.is_dir():
            path = path / "index.html"
        if path.suffix != ".html" or not path.is_file():
            return super().send_head()
        body = path.read_bytes().replace(b"</body>", PROBE.encode() + b"</body>", 1)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        import io
        return io.BytesIO(body)

    def log_message(self, *args):   # quiet
        pass


def chromium() -> str:
    for name in CHROMIUM:
        found = shutil.which(name) or (name if Path(name).is_file() else None)
        if found:
            return found
    sys.exit("check_book: Chromium not found; install it (Debian: apt-get install chromium).")


def browser_args(browser: str) -> list[str]:
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
            f"--window-size={WIDTH},{HEIGHT}", "--virtual-time-budget=20000",
            # No network but the book's own server: every other host resolves to nothing.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=direct://",
            "--no-first-run", "--disable-background-networking", "--disable-component-update"]


def check_page(browser: str, url: str, screenshot: Path | None) -> dict:
    dom = subprocess.run(browser_args(browser) + ["--dump-dom", url], capture_output=True, text=True, timeout=180)
    match = re.search(r'<pre id="selib-book-check"[^>]*>(.*?)</pre>', dom.stdout, re.S)
    if screenshot is not None:
        subprocess.run(browser_args(browser) + [f"--screenshot={screenshot}", url + "?shot"], capture_output=True,
                       timeout=180)
    if not match:
        return {"problems": [f"the page did not report (chromium exit {dom.returncode}: {dom.stderr.strip()[-200:]})"]}
    import html
    return json.loads(html.unescape(match[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=ROOT / "build" / "book" / "html", help="the built book")
    parser.add_argument("--pages", nargs="*", default=["notebooks/[0-9][0-9]_*.html", "docs/notation.html",
                                                       "docs/glossary.html", "when_and_why.html"],
                        help="page globs, relative to --html (default: every lesson and the new reference pages)")
    parser.add_argument("--screenshots", type=Path, default=None, help="save a screenshot of each page here")
    args = parser.parse_args(argv)
    if not (args.html / "index.html").is_file():
        sys.exit(f"check_book: no book in {args.html}; build it with `make book`.")
    browser = chromium()
    pages = sorted({p for pattern in args.pages for p in args.html.glob(pattern)})
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(ProbingHandler, directory=str(args.html))
    socketserver.TCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        failed = 0
        for page in pages:
            rel = page.relative_to(args.html).as_posix()
            shot = args.screenshots / (page.stem + ".png") if args.screenshots else None
            report = check_page(browser, f"http://127.0.0.1:{port}/{rel}", shot)
            problems = report.get("problems", [])
            failed += bool(problems)
            print(f"{'FAIL' if problems else 'ok  '} {rel}: {report.get('typeset', 0)}/{report.get('math', 0)} formulas "
                  f"typeset ({report.get('mathjax', '?')}), {report.get('audio', 0)} audio players, "
                  f"column x {report.get('column')}" + "".join(f"\n       - {p}" for p in problems))
        server.shutdown()
    print(f"{len(pages) - failed} of {len(pages)} pages pass at {WIDTH} px with the network cut off")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
