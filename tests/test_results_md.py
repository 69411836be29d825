"""benchmarks/RESULTS.md: each bench script's ``--write`` replaces its own generated block and nothing else.

Fast: the helper imports only the standard library, and the scripts are read as source, not run.
"""
from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import results_md  # noqa: E402

SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("bench_*.py"))


def markers(name: str) -> tuple[str, str]:
    return f"<!-- begin generated: {name} -->", f"<!-- end generated: {name} -->"


def document(a: str = "old a", b: str = "old b") -> str:
    (a_begin, a_end), (b_begin, b_end) = markers("bench_a.py"), markers("bench_b.py")
    return (f"# Results  \n\nProse  with  odd spacing\t\n\n{a_begin}\n{a}\n{a_end}\nafter a, same line {b_begin}\n"
            f"{b}\n{b_end}\n\ntail without a final newline")


def test_write_section_replaces_only_the_named_block_and_keeps_the_rest_byte_for_byte(tmp_path):
    path = tmp_path / "RESULTS"
    path.write_text(document())
    results_md.write_section("benchmarks/bench_a.py", "| new | table |\n", path)   # a path names its script
    text = path.read_text()
    begin, end = markers("bench_a.py")
    before, after = document().split(begin)[0], document().split(end)[1]
    assert text.startswith(before + begin + "\n") and text.endswith(end + after)
    block = text[len(before + begin):-len(end + after)]
    machine, body = block.strip("\n").split("\n\n")
    assert body == "| new | table |" and "old a" not in text and "old b" in text
    assert machine.startswith("Machine: ") and f"{len(os.sched_getaffinity(0))} cores" in machine
    assert "load average" in machine and "UTC" in machine and "\n" not in machine


def test_write_section_appends_a_section_when_the_script_has_no_block_and_replaces_it_after(tmp_path):
    path = tmp_path / "RESULTS"
    path.write_text(document())
    results_md.write_section("bench_c.py", "first", path)
    results_md.write_section("bench_c.py", "second", path)
    text = path.read_text()
    begin, end = markers("bench_c.py")
    assert text.startswith(document() + "\n\n## bench_c.py\n\n" + begin + "\n")
    assert text.endswith("\n\nsecond\n" + end + "\n") and text.count(begin) == 1 and "first" not in text


@pytest.mark.parametrize("broken", [
    lambda t: t + "\n" + markers("bench_a.py")[0],                         # a second begin
    lambda t: t.replace(markers("bench_a.py")[1], ""),                     # no end
    lambda t: t.replace(markers("bench_a.py")[0], ""),                     # no begin
    lambda t: t.replace(markers("bench_a.py")[0], "BEGIN").replace(markers("bench_a.py")[1], markers("bench_a.py")[0])
    .replace("BEGIN", markers("bench_a.py")[1]),                           # end before begin
], ids=["duplicated", "no end", "no begin", "reversed"])
def test_write_section_refuses_broken_markers_and_leaves_the_file_alone(tmp_path, broken):
    path = tmp_path / "RESULTS"
    path.write_text(broken(document()))
    with pytest.raises(ValueError, match=re.escape(f"{path}: the markers of bench_a.py")) as err:
        results_md.write_section("bench_a.py", "new", path)
    assert "\n" not in str(err.value) and path.read_text() == broken(document())


def test_table_aligns_text_left_and_figures_right_and_verdict_compares_with_the_target():
    assert results_md.table(["model", "RTF", ""], [["a", "0.10", ""]], "lrl") == (
        "| model | RTF | |\n|---|---:|---|\n| a | 0.10 | |")
    assert [results_md.verdict(v, 1.0) for v in (0.9, 1.0, 1.1)] == ["meets", "meets", "misses"]
    assert [results_md.verdict(v, 1.8, at_most=False) for v in (1.7, 1.8, 2.0)] == ["misses", "meets", "meets"]


def _calls(source: str) -> set[str]:
    """``module.function`` of every call of a function of a module in ``source``."""
    return {f"{node.func.value.id}.{node.func.attr}" for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)}


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_bench_script_takes_write_and_has_a_block_in_the_committed_results(script):
    calls = _calls((ROOT / "benchmarks" / script).read_text())
    assert {"results_md.add_options", "results_md.write_section"} <= calls, f"{script}: no --write through results_md"
    text = results_md.RESULTS.read_text()
    begin, end = markers(script)
    assert text.count(begin) == text.count(end) == 1 and text.index(begin) < text.index(end), script


def test_every_block_of_the_committed_results_names_a_bench_script_or_the_machine():
    names = re.findall(r"<!-- begin generated: (\S+) -->", results_md.RESULTS.read_text())
    assert names[0] == "machine" and set(names[1:]) <= set(SCRIPTS) and len(names) == len(set(names))


def test_write_is_off_unless_asked_and_the_file_can_be_chosen():
    import argparse

    parser = argparse.ArgumentParser()
    results_md.add_options(parser)
    assert vars(parser.parse_args([])) == {"write": False, "results_md": results_md.RESULTS}
    assert vars(parser.parse_args(["--write", "--results-md", "x"])) == {"write": True, "results_md": Path("x")}
