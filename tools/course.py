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
links to a launch of that lesson.

    python tools/course.py exercises [--check]   # writes notebooks/exercises/NN_*_ex.ipynb
    python tools/course.py book                  # stages build/book/src and builds build/book/html
"""
from __future__ import annotations

import argparse
import copy
import re
import shutil
import subprocess
import sys
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
BOOK_PAGES = ["notebooks/README.md", "notebooks/course_quiz.md", "binder/README.md", "docs/kd.md",
              "docs/models.md", "docs/metrics.md", "docs/datasets.md"]


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


def stage_book(root: Path, src: Path) -> None:
    """Copy what the book shows into ``src``: config, table of contents, pages and lessons (solutions collapsed)."""
    config = yaml.safe_load((root / "book" / "_config.yml").read_text())
    repository_url = (config.get("repository") or {}).get("url") or ""
    if src.exists():
        shutil.rmtree(src)
    (src / "notebooks").mkdir(parents=True)
    if not repository_url:   # the theme's launch buttons need a repository URL
        config.pop("launch_buttons", None)
    (src / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copy(root / "book" / "_toc.yml", src / "_toc.yml")
    for page in BOOK_PAGES:
        (src / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / page, src / page)
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
    bk = sub.add_parser("book", help="build the book from the committed notebooks (no execution)")
    bk.add_argument("--out", type=Path, default=None, help="output folder (default build/book)")
    bk.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    ex.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.command == "exercises":
        return exercises(args.root, check=args.check)
    return book(args.root, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
