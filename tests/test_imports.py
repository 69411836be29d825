"""The shape of the library: no import loops in ``selib`` (read from the source with ``ast``, imports
inside functions included: a loop broken only at run time by a late import is still a loop), no module
over 450 lines and a ``Trainer`` class under 250 (issue 22), and checking a config loads no torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "selib"
MODULE_LINES = 450    # the most lines a module of selib may have
TRAINER_LINES = 250   # the Trainer class stays under this many lines


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The selib modules ``name`` imports (a submodule's import of its own package does not count)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            targets.update([base, *(f"{base}.{alias.name}" for alias in node.names)])
    out = set()
    for target in targets:
        while target not in known and "." in target:
            target = target.rsplit(".", 1)[0]
        if target in known and target != name and not name.startswith(target + "."):
            out.add(target)
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop of ``graph`` as a path that returns to its start, or None."""
    state: dict[str, int] = {}   # 1: on the current path, 2: finished

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_selib_has_no_import_loop():
    known = _modules()
    graph = {name: _imports(name, path, known) for name, path in known.items()}
    assert "selib.config" in graph and graph["selib.cli"]       # the walk found the package
    loop = _cycle(graph)
    assert loop is None, "import loop: " + " -> ".join(loop)


def test_the_loop_finder_finds_a_loop():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_is_over_the_line_limit():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in _modules().items()}
    assert len(sizes) > 20 and "selib.train.trainer" in sizes           # the walk found the package
    long = {name: n for name, n in sorted(sizes.items()) if n > MODULE_LINES}
    assert not long, f"modules over {MODULE_LINES} lines (split them by what they serve): {long}"


def test_the_trainer_class_is_under_its_line_limit():
    tree = ast.parse((PACKAGE / "train" / "trainer.py").read_text(encoding="utf-8"))
    trainer = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Trainer")
    lines = trainer.end_lineno - trainer.lineno + 1
    assert lines < TRAINER_LINES, f"Trainer is {lines} lines; move a part it only calls into selib/train/"


def test_checking_a_config_imports_no_torch():
    probe = ("import sys; from selib import config; "
             "cfg = config.load('configs/course/dccrn-tiny-dfkd.yaml', {'model.overrides': {'rnn_units': 16}}); "
             "print(cfg.kd.method, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.stdout.split() == ["dfkd", "False"], out.stderr
