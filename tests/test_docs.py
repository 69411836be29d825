"""The repository stands alone: every Markdown document it cites exists in it.

Docstrings, configs, lessons and docs cite documents such as ``docs/kd.md#dfkd-loss``,
``[docs/models.md](../docs/models.md), "DCCRN"`` or ``benchmarks/models.md``. Each cited ``*.md`` must
resolve, relative to the citing file or to the repository root, to a file of this repository (not to notes
that live elsewhere, like a bare ``dfkd.md §5``); a ``#anchor`` must name a heading of the target, and a
quoted section name right after a citation must start one of its headings. Fast: text only, no imports of
selib.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("README.md", "data/README.md", "docs/*.md", "notebooks/*.md", "notebooks/*.ipynb",
           "notebooks/exercises/*.ipynb", "notebooks/runs/*.ipynb", "benchmarks/*.md", "benchmarks/*.py",
           "selib/**/*.py", "configs/**/*.yaml", "tools/*.py", "tests/*.py")
# Test files whose fixtures cite missing documents on purpose (a broken book link, the checks below).
NOT_SCANNED = {"tests/test_course.py", "tests/test_docs.py"}
GENERATED = {"report.md", "summary.md", "scaling.md"}  # files selib writes (run folders, results): named in the text, not cited

_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s)\]>\"'`]+", re.IGNORECASE)
_CITATION = re.compile(r"(?<![\w./{}-])((?:\.{1,2}/)*[\w.-]+(?:/[\w.-]+)*\.md)(?:#([\w-]+))?(?!\w)")
# A section name quoted after a citation (`kd.md, "DFKD loss"`, `(kd.md), "..."`, `(models.md) ("DCCRN")`),
# matched at the citation's end; a quote right after ".md" closes a string literal instead.
_QUOTED = re.compile(r"\)?(?:,\s*|\s+\(?)\"([^\"\n]{1,120}(?:\n[^\"\n]{0,120})?)\"")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _plain(heading: str) -> str:
    """A heading's text as rendered: links reduced to their text, code and emphasis marks dropped."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[`*]", "", text).strip()


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", _plain(heading).lower()).replace(" ", "-")


def headings(path: Path) -> tuple[list[str], set[str]]:
    """The plain texts and the anchors of the headings of a Markdown file (code blocks skipped)."""
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    texts, anchors, seen = [], set(), {}
    for match in _HEADING.finditer(text):
        texts.append(_plain(match[2]))
        base = slug(match[2])
        anchors.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return texts, anchors


def _normalise(text: str) -> str:
    """Whitespace collapsed, case folded, and a trailing "..." (an abbreviated section name) dropped."""
    return " ".join(text.split()).casefold().removesuffix("...").removesuffix("…").rstrip()


def problems(text: str, citing: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with the ``*.md`` citations of ``text``, a part of the file ``citing``; relative paths
    resolve against the folder of ``citing`` or the repository root."""
    found = []
    text = _URL.sub(lambda m: " " * len(m[0]), text)  # web addresses are not repository citations
    for match in _CITATION.finditer(text):
        ref, anchor = match[1], match[2]
        if Path(ref).name in GENERATED:
            continue
        line = text.count("\n", 0, match.start()) + 1
        where = f"{citing.relative_to(root) if citing.is_relative_to(root) else citing}:{line}: {match[0]!r}"
        targets = [p.resolve() for p in (citing.parent / ref, root / ref)]
        target = next((p for p in targets if p.is_file() and p.is_relative_to(root.resolve())), None)
        if target is None:
            found.append(f"{where} names a document that is not in the repository")
            continue
        texts, anchors = headings(target)
        if anchor and anchor not in anchors:
            found.append(f"{where}: {target.name} has no heading with the anchor #{anchor}")
        quoted = _QUOTED.match(text, match.end())
        if quoted and not any(_normalise(t).startswith(_normalise(quoted[1])) for t in texts):
            found.append(f"{where}: {target.name} has no section {quoted[1]!r}")
    return found


def _parts(path: Path) -> list[str]:
    """The text of a file; for a notebook, the source of each cell (outputs are results, not citations)."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        return ["".join(cell["source"]) for cell in cells]
    return [path.read_text(encoding="utf-8")]


def scanned_files(root: Path = ROOT) -> list[Path]:
    return sorted({p for pattern in SCANNED for p in root.glob(pattern)
                   if p.is_file() and p.relative_to(root).as_posix() not in NOT_SCANNED})


def test_scanned_files_include_every_kind():
    files = {p.relative_to(ROOT).as_posix() for p in scanned_files()}
    for name in ("README.md", "data/README.md", "docs/kd.md", "docs/models.md", "docs/metrics.md",
                 "docs/datasets.md", "selib/kd/dfkd.py", "notebooks/09_dfkd.ipynb"):
        assert name in files
    assert any(f.startswith("configs/paper/") and f.endswith(".yaml") for f in files)


@pytest.mark.parametrize("path", scanned_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_cited_documents_exist(path):
    found = [problem for part in _parts(path) for problem in problems(part, path)]
    assert not found, "\n".join(found)


def test_the_check_catches_documents_from_outside(tmp_path):
    """The citations this repository used to carry (notes kept outside it) are reported; in-repo ones are not."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "kd.md").write_text("# KD\n\n## DFKD loss\n\n```\n## not a heading\n```\n")
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "models.md").write_text("# Presets\n")
    citing = tmp_path / "selib" / "kd" / "dfkd.py"
    citing.parent.mkdir(parents=True)
    bad = ('"""DFKD (spec ``dfkd.md`` §5, §6); batch 8 (i2s_tfckd.md 4); presets: models.md 6.3;\n'
           'see ../../../notes/outside/metrics.md and docs/kd.md#dfkd-ablations and docs/kd.md, "Temperature"\n'
           'and docs/kd.md#not-a-heading."""\n')
    found = problems(bad, citing, tmp_path)
    assert len(found) == 7, found
    assert sum("not in the repository" in f for f in found) == 4
    good = ('"""docs/kd.md#dfkd-loss, docs/kd.md, "DFKD loss", benchmarks/models.md, runs/x/report.md,\n'
            'hashlib.md5, https://example.org/dfkd.md and [kd](../../docs/kd.md)."""\n')
    assert problems(good, citing, tmp_path) == []


def test_slugs_follow_github():
    assert slug("DFKD loss") == "dfkd-loss"
    assert slug("Total loss, SE loss and temperature") == "total-loss-se-loss-and-temperature"
    assert slug("Combination `dfkd+i2s-tfckd`") == "combination-dfkdi2s-tfckd"
    assert slug("Course (tiny) presets") == "course-tiny-presets"
