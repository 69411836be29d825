"""Course tooling: derive the exercise notebooks from the lessons, and build the book.

One source of truth for exercises (the convention is in ``notebooks/README.md``, section "Exercises"):
a lesson writes each solution once, in code cells tagged ``solution``, and runs it like every other
cell (so CI executes the solutions when it runs the lessons under nbval). The exercise version of a
lesson is derived from it:

- every code cell tagged ``solution`` becomes a stub: the lines above a line ``# --- solution ---``
  (if the cell has one: data set-up the learner should not have to type) and a "your code here" comment;
- every markdown cell tagged ``solution`` (a note on the solution) is dropped;
- all outputs are cleared.

The book (Jupyter Book 1.x) is built from the committed, executed lessons without running them: the
files it needs are staged under ``build/book/src``, where solution cells are collapsed (tag
``hide-input``) and, when ``repository.url`` in ``book/_config.yml`` is set, each lesson's Binder badge
links to a launch of that lesson. Besides the lessons the book shows the reference pages of
``BOOK_PAGES`` and one page cut from the README (its "When and why" section). Nothing in the built book
is fetched from the network: the Binder badge is ``binder/badge.svg`` and MathJax is served from the
book's ``_static/mathjax`` (the official ``mathjax`` npm package, fetched once by ``make setup`` with
``python tools/course.py mathjax``; ``tools/check_book.py`` checks the pages in a browser with the
network cut off).

    python tools/course.py exercises [--check]   # writes notebooks/exercises/NN_*_ex.ipynb
    python tools/course.py mathjax               # fetches MathJax for the book into .venv/share/mathjax
    python tools/course.py book                  # stages build/book/src and builds build/book/html
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
SOLUTION_TAG = "solution"
SCAFFOLD_MARKER = "# --- solution ---"
# A relative Markdown link to a file (``](../docs/kd.md#dfkd-loss)``, ``](README.md)``): exercise copies live
# one folder below their lesson, so exercise_version prefixes these with ``../``.
RELATIVE_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|#|/)([^)\s]+\.(?:md|ipynb|png|svg|jpg|yaml|py)(?:#[^)\s]*)?)\)")
BINDER_LINK = "(../binder/README.md)"
# Files the book shows besides the lessons (paths relative to the repository root).
BOOK_PAGES = ["notebooks/README.md", "notebooks/course_quiz.md", "binder/README.md", "binder/badge.svg",
              "docs/notation.md", "docs/glossary.md", "docs/kd.md", "docs/models.md", "docs/metrics.md",
              "docs/datasets.md", "docs/validation-log.md"]
# The README section the book shows as a page of its own (staged at the root, so its links stay valid).
README_SECTIONS = {"when_and_why": ("**When and why, from the validation runs**", "**Cost**",
                                       "# When and why, from the validation runs")}
# MathJax for the book, from the official npm package (Apache-2.0): the one combined TeX→CommonHTML
# component and its fonts, checked against the hash of the release's file.
MATHJAX_VERSION = "3.2.2"
MATHJAX_SHA256 = "91b005503c5d1f0958bf4d73ada1a3be33596b2c4ab5da22277f1b0d3149b5a4"   # es5/tex-chtml-full.js
MATHJAX_FILES = ("es5/tex-chtml-full.js", "es5/output/chtml/fonts/woff-v2/", "LICENSE")
MATHJAX_DIR = ROOT / ".venv" / "share" / "mathjax"


def lessons(root: Path = ROOT) -> list[Path]:
    """The lesson notebooks, in course order (``notebooks/NN_*.ipynb``)."""
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def is_solution(cell) -> bool:
    return SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def exercise_version(nb, lesson_name: str):
    """The learner's copy of a lesson: solution code replaced by stubs, solution notes dropped, no outputs."""
    ex = copy.deepcopy(nb)
    cells = [nbformat.v4.new_markdown_cell(
        f"*Exercise version of [`{lesson_name}`](../{lesson_name}), derived from it by `make exercises`; "
        "edit the lesson, not this file. The cells marked \"your code here\" are yours to write; the lesson "
        "holds the solutions.*", id="exercise-version-note")]
    for cell in ex.cells:
        if is_solution(cell) and cell.cell_type == "markdown":
            continue
        if cell.cell_type == "markdown":
            cell.source = RELATIVE_LINK.sub(r"](../\1)", cell.source)
        if cell.cell_type == "code":
            if is_solution(cell):
                lines = cell.source.splitlines()
                scaffold = lines[:lines.index(SCAFFOLD_MARKER)] if SCAFFOLD_MARKER in lines else []
                cell.source = "\n".join(scaffold + ["# Your code here."])
                cell.metadata["tags"] = [t for t in cell.metadata["tags"] if t != SOLUTION_TAG] + ["exercise"]
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)      # the lesson's run timings
        cells.append(cell)
    ex.cells = cells
    return ex


def exercises(root: Path = ROOT, check: bool = False) -> int:
    """Write (or, with ``check``, compare) ``notebooks/exercises/NN_*_ex.ipynb`` for every lesson with solutions."""
    out_dir = root / "notebooks" / "exercises"
    wanted = {}
    for path in lessons(root):
        nb = nbformat.read(path, as_version=4)
        if any(is_solution(cell) for cell in nb.cells):
            wanted[out_dir / f"{path.stem}_ex.ipynb"] = nbformat.writes(exercise_version(nb, path.name)) + "\n"
    stale = [p for p in out_dir.glob("*_ex.ipynb") if p not in wanted]
    outdated = [p for p, text in wanted.items() if not p.is_file() or p.read_text() != text]
    if check:
        for p in outdated + stale:
            print(f"{p.relative_to(root)}: out of date with its lesson; run `make exercises` and commit the result.")
        return 1 if outdated or stale else 0
    out_dir.mkdir(exist_ok=True)
    for p in stale:
        p.unlink()
    for p in outdated:
        p.write_text(wanted[p])
    print(f"{len(wanted)} exercise notebooks in {out_dir.relative_to(root)} ({len(outdated)} written, "
          f"{len(stale)} removed)")
    return 0


def _binder_launch(repository_url: str, lesson: str) -> str:
    """mybinder.org launch URL of one lesson of a GitHub/GitLab repository (or a plain git URL)."""
    parsed = urllib.parse.urlparse(repository_url.rstrip("/"))
    path = parsed.path.strip("/").removesuffix(".git")
    provider = {"github.com": "gh", "gitlab.com": "gl"}.get(parsed.netloc)
    spec = f"{provider}/{path}/HEAD" if provider else "git/" + urllib.parse.quote(repository_url, safe="") + "/HEAD"
    return f"https://mybinder.org/v2/{spec}?labpath=" + urllib.parse.quote(f"notebooks/{lesson}", safe="")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mathjax_ready(where: Path = MATHJAX_DIR) -> bool:
    """Whether ``where`` holds the pinned MathJax release (its combined component, by hash, and fonts)."""
    script = where / "tex-chtml-full.js"
    return script.is_file() and _sha256(script) == MATHJAX_SHA256 and any((where / "output/chtml/fonts/woff-v2").glob("*.woff"))


def fetch_mathjax(where: Path = MATHJAX_DIR) -> int:
    """Fetch MathJax ``MATHJAX_VERSION`` with ``npm pack`` (the npm registry's tarball, integrity-checked by
    npm) and keep what the book serves: ``tex-chtml-full.js``, its woff fonts and the licence."""
    if mathjax_ready(where):
        print(f"mathjax: {where} already holds MathJax {MATHJAX_VERSION}")
        return 0
    npm = shutil.which("npm")
    if npm is None:
        print("mathjax: npm not found; install Node.js (Debian: apt-get install npm) and run "
              "`python tools/course.py mathjax`, or the book's formulas will need the network (see README.md, "
              "\"The book\").", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([npm, "pack", f"mathjax@{MATHJAX_VERSION}", "--silent", "--pack-destination", tmp],
                              capture_output=True, text=True)
        tarballs = list(Path(tmp).glob("mathjax-*.tgz"))
        if done.returncode != 0 or not tarballs:
            print(f"mathjax: `npm pack mathjax@{MATHJAX_VERSION}` failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
            return 1
        with tarfile.open(tarballs[0]) as tar:
            members = [m for m in tar.getmembers() if m.isfile()
                       and any(m.name.removeprefix("package/").startswith(f) for f in MATHJAX_FILES)]
            tar.extractall(tmp, members=members, filter="data")
        package = Path(tmp) / "package"
        if _sha256(package / "es5/tex-chtml-full.js") != MATHJAX_SHA256:
            print(f"mathjax: es5/tex-chtml-full.js of mathjax@{MATHJAX_VERSION} does not match its pinned hash; "
                  "nothing installed.", file=sys.stderr)
            return 1
        if where.exists():
            shutil.rmtree(where)
        shutil.copytree(package / "es5", where)
        shutil.copy(package / "LICENSE", where / "LICENSE")
    print(f"mathjax: MathJax {MATHJAX_VERSION} in {where}")
    return 0


def readme_section(text: str, start: str, end: str, title: str) -> str:
    """The part of the README from the paragraph starting with ``start`` up to ``end``, as a page."""
    begin = text.index(start)
    body = text[begin + len(start):text.index(end, begin)]
    first, rest = body.split("\n", 1)
    source = re.search(r"\[[^\]]*\]\([^)]*\)", first)
    return (f"{title}\n\n*From the README of the repository"
            + (f"; the evidence is in {source.group(0)}" if source else "") + ".*\n\n"
            + rest.strip() + "\n")


def stage_book(root: Path, src: Path, mathjax: Path | None = None) -> None:
    """Copy what the book shows into ``src``: config, table of contents, pages and lessons (solutions
    collapsed), the README's sections and MathJax (when ``mathjax`` holds it; otherwise the book links a CDN)."""
    mathjax = MATHJAX_DIR if mathjax is None else mathjax
    config = yaml.safe_load((root / "book" / "_config.yml").read_text())
    repository_url = (config.get("repository") or {}).get("url") or ""
    if src.exists():
        shutil.rmtree(src)
    (src / "notebooks").mkdir(parents=True)
    if not repository_url:   # the theme's launch buttons need a repository URL
        config.pop("launch_buttons", None)
    if mathjax_ready(mathjax):   # served from the book itself: formulas render without a network
        shutil.copytree(mathjax, src / "_static" / "mathjax")
        sphinx = config.setdefault("sphinx", {}).setdefault("config", {})
        sphinx["mathjax_path"] = "mathjax/tex-chtml-full.js"
        sphinx.setdefault("html_static_path", ["_static"])
    else:
        print(f"book: no MathJax in {mathjax} (run `python tools/course.py mathjax`); the book's formulas will "
              "load MathJax from a CDN and need the network", file=sys.stderr)
    (src / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copy(root / "book" / "_toc.yml", src / "_toc.yml")
    for page in BOOK_PAGES:   # a page the table of contents names but the tree lacks fails the build
        if (root / page).is_file():
            (src / page).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / page, src / page)
    readme = (root / "README.md").read_text() if (root / "README.md").is_file() else ""
    for name, (start, end, title) in README_SECTIONS.items():
        if start in readme:
            (src / f"{name}.md").write_text(readme_section(readme, start, end, title))
    for path in lessons(root):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if is_solution(cell) and cell.cell_type == "code":
                cell.metadata["tags"] = cell.metadata["tags"] + ["hide-input"]
        if repository_url:
            first = nb.cells[0]
            first.source = first.source.replace(BINDER_LINK, f"({_binder_launch(repository_url, path.name)})")
        nbformat.write(nb, src / "notebooks" / path.name)


def book(root: Path = ROOT, out: Path | None = None) -> int:
    """Stage the book and build it with ``jupyter-book build`` (warnings are errors); HTML in ``out/html``."""
    out = out or root / "build" / "book"
    stage_book(root, out / "src")
    build = out / "_build"
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(out / "src"), "--path-output", str(out),
           "--warningiserror", "--keep-going", "--quiet"]
    code = subprocess.run(cmd).returncode
    if code == 0:
        if (out / "html").exists():
            shutil.rmtree(out / "html")
        shutil.move(build / "html", out / "html")
        print(f"book: {(out / 'html' / 'index.html').relative_to(root)}")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("exercises", help="derive notebooks/exercises/NN_*_ex.ipynb from the lessons")
    ex.add_argument("--check", action="store_true", help="only report exercise notebooks that are out of date")
    sub.add_parser("mathjax", help="fetch MathJax for the book (npm) into .venv/share/mathjax")
    bk = sub.add_parser("book", help="build the book from the committed notebooks (no execution)")
    bk.add_argument("--out", type=Path, default=None, help="output folder (default build/book)")
    bk.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    ex.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.command == "exercises":
        return exercises(args.root, check=args.check)
    if args.command == "mathjax":
        return fetch_mathjax()
    return book(args.root, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
