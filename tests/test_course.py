"""The course infrastructure: exercise notebooks derived from the lessons, the book, the lesson-time table."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COURSE = ROOT / "tools" / "course.py"
# Lessons that carry the full set of course sections (issue 11).
LESSONS_WITH_COURSE_SECTIONS = [f"{n:02d}" for n in range(12)]


def course(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(COURSE), *args], capture_output=True, text=True)


def lesson_with_solutions() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python", "pygments_lexer": "ipython3"}})
    ran = nbformat.v4.new_code_cell("x = 1\nprint(x)", execution_count=1,
                                    outputs=[nbformat.v4.new_output("stream", name="stdout", text="1\n")])
    ran.metadata["execution"] = {"iopub.execute_input": "2026-12-01T08:47:33.693203Z"}
    solution = nbformat.v4.new_code_cell("import math\n# --- solution ---\ny = math.sqrt(x)", execution_count=2)
    solution.metadata["tags"] = ["solution"]
    note = nbformat.v4.new_markdown_cell("The square root of one is one.")
    note.metadata["tags"] = ["solution"]
    bare = nbformat.v4.new_code_cell("z = 2 * x")
    bare.metadata["tags"] = ["solution"]
    links = ("# 00 · A lesson\n\n[badge](../binder/README.md), [next](01_plain.ipynb), "
             "[web](https://example.org/a.md), `x[i](t_out)`, [eq](../docs/kd.md)")
    nb.cells = [nbformat.v4.new_markdown_cell(links), ran,
                nbformat.v4.new_markdown_cell("## Exercises\n\n### Exercise 0.1 — roots"), solution, note, bare]
    return nb


def make_repo(tmp_path: Path) -> Path:
    """A minimal course tree: one lesson with solutions, one without, the book's config and pages."""
    (tmp_path / "notebooks").mkdir()
    nbformat.write(lesson_with_solutions(), tmp_path / "notebooks" / "00_lesson.ipynb")
    plain = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 01 · Plain\n\nNo exercises.")])
    nbformat.write(plain, tmp_path / "notebooks" / "01_plain.ipynb")
    shutil.copytree(ROOT / "book", tmp_path / "book")
    (tmp_path / "book" / "_toc.yml").write_text(yaml.safe_dump({
        "format": "jb-book", "root": "notebooks/README",
        "chapters": [{"file": "notebooks/00_lesson"}, {"file": "notebooks/01_plain"},
                     {"file": "notebooks/course_quiz"}, {"file": "binder/README"}, {"file": "docs/kd"},
                     {"file": "docs/models"}, {"file": "docs/metrics"}, {"file": "docs/datasets"}]}))
    (tmp_path / "notebooks" / "README.md").write_text("# Lessons\n\n[The first](00_lesson.ipynb)\n")
    (tmp_path / "notebooks" / "course_quiz.md").write_text("# Quiz\n\nOne question.\n")
    (tmp_path / "binder").mkdir()
    (tmp_path / "binder" / "README.md").write_text("# Binder\n\nHow to launch.\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "kd.md").write_text("# KD methods\n\nThe equations.\n")
    for page, title in (("models", "Models"), ("metrics", "Metrics"), ("datasets", "Datasets")):
        (tmp_path / "docs" / f"{page}.md").write_text(f"# {title}\n\nThe reference page.\n")
    return tmp_path


def test_exercise_version_stubs_solutions_keeps_setup_and_clears_outputs(tmp_path):
    repo = make_repo(tmp_path)
    stale = repo / "notebooks" / "exercises" / "09_gone_ex.ipynb"
    stale.parent.mkdir()
    stale.write_text("{}")
    result = course("exercises", "--root", str(repo))
    assert result.returncode == 0, result.stderr
    assert not stale.exists(), "an exercise notebook whose lesson has no solutions must be removed"
    assert not (repo / "notebooks" / "exercises" / "01_plain_ex.ipynb").exists()
    ex = nbformat.read(repo / "notebooks" / "exercises" / "00_lesson_ex.ipynb", as_version=4)
    sources = [c.source for c in ex.cells]
    assert "00_lesson.ipynb" in sources[0], "the exercise version must name the lesson it comes from"
    assert "import math\n# Your code here." in sources, "set-up lines above the marker stay, the rest goes"
    assert "# Your code here." in sources
    assert not any("sqrt" in s or "2 * x" in s or "square root" in s for s in sources)
    assert all(c.outputs == [] and c.execution_count is None and "execution" not in c.metadata
               for c in ex.cells if c.cell_type == "code")
    assert "x = 1\nprint(x)" in sources and "## Exercises\n\n### Exercise 0.1 — roots" in sources
    # one folder below the lesson: relative file links gain a ../, web links and code do not
    assert sources[1] == ("# 00 · A lesson\n\n[badge](../../binder/README.md), [next](../01_plain.ipynb), "
                          "[web](https://example.org/a.md), `x[i](t_out)`, "
                          "[eq](../../docs/kd.md)")


def test_check_reports_an_exercise_notebook_that_lags_its_lesson(tmp_path):
    repo = make_repo(tmp_path)
    assert course("exercises", "--root", str(repo)).returncode == 0
    assert course("exercises", "--check", "--root", str(repo)).returncode == 0
    nb = nbformat.read(repo / "notebooks" / "00_lesson.ipynb", as_version=4)
    nb.cells[2].source += " (edited)"
    nbformat.write(nb, repo / "notebooks" / "00_lesson.ipynb")
    result = course("exercises", "--check", "--root", str(repo))
    assert result.returncode == 1
    assert "00_lesson_ex.ipynb: out of date" in result.stdout and "make exercises" in result.stdout


def test_committed_exercise_notebooks_match_the_lessons():
    result = course("exercises", "--check")
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("number", LESSONS_WITH_COURSE_SECTIONS)
def test_lesson_has_the_course_sections(number):
    path = next((ROOT / "notebooks").glob(f"{number}_*.ipynb"))
    nb = nbformat.read(path, as_version=4)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    solutions = [c for c in nb.cells if c.cell_type == "code" and "solution" in c.metadata.get("tags", [])]
    prompts = re.findall(r"^### Exercise \d+\.\d+ — ", markdown, flags=re.M)
    assert len(prompts) >= 2 and len(solutions) >= len(prompts), "at least two exercises, each with a solution"
    for heading in ("## Discussion", "## Quiz", "## References", "**Prerequisites.**", "**Time.**"):
        assert heading in markdown, f"{path.name} lacks {heading}"
    quiz = re.split(r"^## ", markdown.split("## Quiz", 1)[1], flags=re.M)[0]   # up to the next section
    assert 3 <= quiz.count("<details><summary>Answer</summary>") <= 5
    references = markdown.split("## References", 1)[1]
    assert re.search(r"arxiv\.org/abs/\d{4}\.\d{4,5}|doi\.org/10\.|itu\.int/rec", references)
    assert "(../binder/README.md)" in nb.cells[0].source, "the Binder badge belongs at the top"


def test_book_toc_is_the_lesson_map():
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    files = [ch["file"] for part in toc["parts"] for ch in part["chapters"]]
    lessons = [f"notebooks/{p.stem}" for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))]
    assert [f for f in files if f in lessons] == lessons, "every lesson, in course order"
    sys.path.insert(0, str(ROOT / "tools"))
    import course as course_tool

    for f in files:
        staged = f in course_tool.README_SECTIONS   # cut from the README when the book is staged
        assert staged or (ROOT / f).with_suffix(".ipynb").is_file() or (ROOT / f).with_suffix(".md").is_file(), f
    for page in ("docs/notation", "docs/glossary", "docs/validation-log", "when_and_why"):
        assert page in files, f"{page} belongs in the book's table of contents"


def test_book_builds_collapses_solutions_links_binder_and_fails_on_a_broken_link(tmp_path):
    repo = make_repo(tmp_path)
    config = yaml.safe_load((repo / "book" / "_config.yml").read_text())
    config["repository"]["url"] = "https://github.com/example-owner/selib"
    (repo / "book" / "_config.yml").write_text(yaml.safe_dump(config))
    result = course("book", "--root", str(repo))
    assert result.returncode == 0, result.stdout + result.stderr
    page = (repo / "build" / "book" / "html" / "notebooks" / "00_lesson.html").read_text()
    assert "tag_hide-input" in page and "tag_solution" in page, "solution cells are collapsed in the book"
    assert "https://mybinder.org/v2/gh/example-owner/selib/HEAD?labpath=notebooks%2F00_lesson.ipynb" in page
    (repo / "notebooks" / "course_quiz.md").write_text("# Quiz\n\nSee [the answers](answers.md).\n")
    broken = course("book", "--root", str(repo))
    assert broken.returncode != 0 and "answers.md" in broken.stdout + broken.stderr


def test_lesson_time_table_replaces_measured_rows_and_keeps_the_others(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_lessons

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{bench_lessons.TABLE_BEGIN}\n| # | Lesson | wall time |\n|---|---|---|\n"
                      f"| 00 | Data | 50 s |\n| 03 | DCCRN | 40 s |\n{bench_lessons.TABLE_END}\noutro\n")
    bench_lessons.write_table({"03": "| 03 | DCCRN | 44 s |", "01": "| 01 | Metrics | 90 s |"}, readme)
    assert readme.read_text() == (f"intro\n{bench_lessons.TABLE_BEGIN}\n| # | Lesson | wall time |\n|---|---|---|\n"
                                  f"| 00 | Data | 50 s |\n| 01 | Metrics | 90 s |\n| 03 | DCCRN | 44 s |\n"
                                  f"{bench_lessons.TABLE_END}\noutro\n")
    readme.write_text("no table here\n")
    with pytest.raises(SystemExit, match="no table of lesson times"):
        bench_lessons.write_table({}, readme)


def test_lesson_time_paragraph_takes_the_measured_figures_and_keeps_the_rest(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_lessons

    lesson = tmp_path / "00_lesson.ipynb"
    nb = lesson_with_solutions()
    nb.cells[0].source = "# 00 · A lesson\n\n**Time.** About a minute,\nsomewhere.\n\n**What you will be able to do**"
    nbformat.write(nb, lesson)
    figures = {"date": "2026-12-01 16:10", "wall_s": 61.4, "cpu_s": 90.2, "cores": 2,
               "load_avg_1min_at_end": 1.5, "peak_pss_mib": 1117}
    bench_lessons.write_time(lesson, figures)
    written = nbformat.read(lesson, as_version=4)
    assert written.cells[0].source == (
        "# 00 · A lesson\n\n**Time.** Measured by `benchmarks/bench_lessons.py` on 2026-12-01: 61 s wall time "
        "(90 s of CPU time) from a fresh kernel on 2 CPU cores (load average 1.5 at the end), at most 1,117 MiB; "
        "the [lesson list](README.md) has every lesson's figures.\n\n**What you will be able to do**")
    assert [c.source for c in written.cells[1:]] == [c.source for c in nb.cells[1:]]
    nb.cells[0].source = "# 00 · A lesson without a time"
    nbformat.write(nb, lesson)
    with pytest.raises(SystemExit, match="no '\\*\\*Time.\\*\\*' paragraph"):
        bench_lessons.write_time(lesson, figures)
