"""Mutation check: make one small change at a time in a copy of the sources and see whether the tests
notice. A change the tests pass ("survived") is either equivalent to the original or a gap in them.

    python scripts/mutation_check.py src/wmquant/quant/qmath.py tests/quant/test_qmath.py \
        --out mutants/qmath.jsonl [--workers 2] [--survivors-of mutants/qmath.jsonl]

The changes, each inside function bodies only (module constants, defaults and error messages are
left alone): deleting an assignment or a call statement, negating an `if`, swapping an arithmetic
or comparison operator, dropping one operand of an arithmetic operation or a unary minus / not,
moving an integer constant by 1 or doubling a float constant, flipping a boolean constant, and
swapping paired names (amax / amin, max / min, round / floor, mean / sum, ...).

Each mutant runs `pytest -x -m "not slow"` on the given tests in a private copy of src/, tests/,
results/ and docs/ (PYTHONPATH points there, so the installed package is not touched; the study's
tests read the published results). One JSON line per mutant is
appended to --out as soon as it finishes, so an interrupted check resumes where it stopped;
--survivors-of re-runs only the mutants that survived in an earlier file (after new tests).
--functions limits the check to the named functions and methods (their nested functions included),
so that a large module can be checked a part at a time.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SWAPPED_OPERATORS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
                     ast.FloorDiv: ast.Div, ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv}
SWAPPED_COMPARISONS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                       ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn,
                       ast.NotIn: ast.In}
SWAPPED_ATTRIBUTES = {"amax": "amin", "amin": "amax", "round": "floor", "floor": "ceil", "ceil": "floor",
                      "maximum": "minimum", "minimum": "maximum", "clamp": "clamp_min", "abs": "neg",
                      "sqrt": "rsqrt", "mean": "sum", "sum": "mean", "max": "min", "min": "max", "T": "mT",
                      "argmax": "argmin", "argmin": "argmax", "cumsum": "cumprod"}
SWAPPED_NAMES = {"max": "min", "min": "max", "round": "int", "abs": "float", "any": "all", "all": "any"}
# calls whose arguments are messages, not behaviour
MESSAGE_CALLS = {"print", "warn", "warning", "info", "debug", "echo", "write", "tqdm", "ValueError",
                 "TypeError", "RuntimeError", "KeyError"}


@dataclass(frozen=True)
class Mutant:
    line: int
    col: int
    end_line: int
    end_col: int
    replacement: str
    description: str

    @property
    def key(self) -> tuple[int, int, str]:
        return self.line, self.col, self.description

    def apply(self, source_lines: list[str]) -> str:
        lines = list(source_lines)
        head = lines[self.line - 1][:self.col]
        tail = lines[self.end_line - 1][self.end_col:]
        lines[self.line - 1:self.end_line] = [head + self.replacement + tail]
        return "".join(lines)


def _call_name(node: ast.Call) -> str:
    return node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")


class MutantFinder(ast.NodeVisitor):
    """Collects the mutants of one module's source, function bodies only."""

    def __init__(self) -> None:
        self.mutants: list[Mutant] = []
        self.depth = 0  # > 0 inside a function body

    def _add(self, node: ast.AST, replacement: str, description: str) -> None:
        if self.depth:
            self.mutants.append(Mutant(node.lineno, node.col_offset, node.end_lineno, node.end_col_offset,
                                       replacement, description))

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.depth += 1
        for statement in node.body:  # not the decorators, defaults or annotations
            self.visit(statement)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Raise(self, node: ast.Raise) -> None:  # error messages are not behaviour
        pass

    def visit_Assert(self, node: ast.Assert) -> None:
        pass

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        pass

    def visit_Call(self, node: ast.Call) -> None:
        if _call_name(node) not in MESSAGE_CALLS:
            self.generic_visit(node)

    def _delete(self, node: ast.stmt) -> None:
        self._add(node, "pass", f"delete statement: {ast.unparse(node)[:80]}")

    def visit_Assign(self, node: ast.Assign) -> None:
        self._delete(node)
        self.visit(node.value)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._delete(node)
        self.visit(node.value)

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant):  # a docstring
            return
        if isinstance(node.value, ast.Call) and _call_name(node.value) in MESSAGE_CALLS:
            return
        self._delete(node)
        self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        test = ast.unparse(node.test)
        self._add(node.test, f"(not ({test}))", f"negate if: {test[:60]}")
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if type(node.op) in SWAPPED_OPERATORS:
            swapped = copy.copy(node)
            swapped.op = SWAPPED_OPERATORS[type(node.op)]()
            self._add(node, f"({ast.unparse(swapped)})", f"operator: {ast.unparse(node)[:60]} -> {ast.unparse(swapped)[:60]}")
            self._add(node, f"({ast.unparse(node.left)})", f"keep left operand of {ast.unparse(node)[:60]}")
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        if len(node.ops) == 1 and type(node.ops[0]) in SWAPPED_COMPARISONS:
            swapped = copy.copy(node)
            swapped.ops = [SWAPPED_COMPARISONS[type(node.ops[0])]()]
            self._add(node, f"({ast.unparse(swapped)})", f"comparison: {ast.unparse(node)[:60]} -> {ast.unparse(swapped)[:60]}")
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, (ast.USub, ast.Not)):
            self._add(node, f"({ast.unparse(node.operand)})", f"drop unary: {ast.unparse(node)[:60]}")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, bool):
            self._add(node, str(not value), f"constant {value} -> {not value}")
        elif isinstance(value, int):
            self._add(node, str(value + 1), f"constant {value} -> {value + 1}")
        elif isinstance(value, float):
            changed = value * 2 if value != 0 else 1.0
            self._add(node, repr(changed), f"constant {value} -> {changed}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in SWAPPED_ATTRIBUTES and isinstance(node.ctx, ast.Load):
            swapped = copy.copy(node)
            swapped.attr = SWAPPED_ATTRIBUTES[node.attr]
            self._add(node, ast.unparse(swapped), f"attribute .{node.attr} -> .{swapped.attr}")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in SWAPPED_NAMES and isinstance(node.ctx, ast.Load):
            self._add(node, SWAPPED_NAMES[node.id], f"name {node.id} -> {SWAPPED_NAMES[node.id]}")


def find_mutants(source: str, filename: str) -> list[tuple[Mutant, str]]:
    """Every mutant of `source` that still compiles, with its mutated source."""
    finder = MutantFinder()
    finder.visit(ast.parse(source, filename))
    lines = source.splitlines(keepends=True)
    found = []
    for mutant in sorted(set(finder.mutants), key=lambda m: (m.line, m.col, m.description)):
        mutated = mutant.apply(lines)
        try:
            compile(mutated, filename, "exec")
        except SyntaxError:
            continue
        found.append((mutant, mutated))
    return found


def function_spans(source: str, filename: str) -> dict[str, list[tuple[int, int]]]:
    """Name -> the (first, last) source lines of every function or method of that name."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            spans.setdefault(node.name, []).append((node.lineno, node.end_lineno))
    return spans


def _read_records(path: Path) -> list[dict]:
    """The results so far; a last line cut short by a killed run is dropped (its mutant runs again)."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise
    return records


def _record_key(record: dict) -> tuple[int, int, str]:
    return record["line"], record["col"], record["description"]


# copied beside src/ and tests/: tests of the published study read its results and documents, and
# would skip without them
WORKSPACE_DATA = ("results", "docs")


def _make_workspace(root: Path, repo: Path = REPO) -> Path:
    root.mkdir(parents=True)
    for name in ("src", "tests", *WORKSPACE_DATA):
        if (repo / name).is_dir():
            shutil.copytree(repo / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(repo / "pyproject.toml", root / "pyproject.toml")
    return root


def _run_mutant(workspace: Path, relative: Path, original: str, mutant: Mutant, mutated: str, tests: list[str],
                timeout: float) -> dict:
    target = workspace / relative
    target.write_text(mutated)
    started = time.monotonic()
    env = dict(os.environ, PYTHONPATH=str(workspace / "src"), PYTHONDONTWRITEBYTECODE="1")
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                               *tests], cwd=workspace, env=env, capture_output=True, text=True, timeout=timeout)
        status = {0: "survived", 1: "killed"}.get(done.returncode, f"pytest exit {done.returncode}")
        last_line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    except subprocess.TimeoutExpired:
        status, last_line = "timeout", ""
    finally:
        target.write_text(original)
    return {"line": mutant.line, "col": mutant.col, "description": mutant.description, "status": status,
            "seconds": round(time.monotonic() - started, 1), "pytest": last_line}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="the module to mutate, e.g. src/wmquant/quant/qmath.py")
    parser.add_argument("tests", nargs="+", help="test files or directories to run against each mutant")
    parser.add_argument("--out", required=True, help="JSON-lines file of results (appended; resumable)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant; a timeout counts as killed")
    parser.add_argument("--survivors-of", help="run only the mutants that survived in this earlier results file")
    parser.add_argument("--functions", help="comma-separated names: mutate only inside these functions or methods")
    args = parser.parse_args(argv)

    source_path = (REPO / args.source).resolve()
    if not source_path.is_file() or source_path.suffix != ".py" or REPO / "src" not in source_path.parents:
        print(f"error: source {args.source!r} is not a Python file under {REPO / 'src'}", file=sys.stderr)
        return 2
    missing = [t for t in args.tests if not (REPO / t.split("::")[0]).exists()]
    if missing:
        print(f"error: test path {missing[0]!r} does not exist under {REPO}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"error: --workers={args.workers} must be at least 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    previous = None
    if args.survivors_of:
        previous_path = Path(args.survivors_of)
        if not previous_path.is_file():
            print(f"error: --survivors-of {args.survivors_of!r} is not a file", file=sys.stderr)
            return 2
        previous = {_record_key(r) for r in _read_records(previous_path) if r["status"] == "survived"}

    relative = source_path.relative_to(REPO)
    original = source_path.read_text()
    mutants = find_mutants(original, str(relative))
    if args.functions is not None:
        spans = function_spans(original, str(relative))
        names = [name.strip() for name in args.functions.split(",") if name.strip()]
        # the first name that is not a function here (or the whole value, when it names none)
        bad = next((name for name in names if name not in spans), None) if names else args.functions
        if bad is not None:
            print(f"error: --functions {bad!r} is not a function of {relative}; "
                  f"valid: {', '.join(sorted(spans))}", file=sys.stderr)
            return 2
        chosen = [span for name in names for span in spans[name]]
        mutants = [(m, code) for m, code in mutants if any(first <= m.line <= last for first, last in chosen)]
    if previous is not None:
        mutants = [(m, code) for m, code in mutants if m.key in previous]
    done = _read_records(out)
    if out.exists() and not out.read_text().endswith("\n") and out.stat().st_size:
        # a killed run left a cut line: keep the whole records (temporary file, then rename)
        partial = out.with_name(out.name + ".tmp")
        partial.write_text("".join(json.dumps(r) + "\n" for r in done))
        partial.replace(out)
    finished = {_record_key(r) for r in done}
    pending = [(m, code) for m, code in mutants if m.key not in finished]
    print(f"{relative}: {len(mutants)} mutants, {len(pending)} to run", flush=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mutation_check_") as scratch:
        workspaces: queue.Queue[Path] = queue.Queue()
        for index in range(args.workers):
            workspaces.put(_make_workspace(Path(scratch) / f"worker{index}"))
        lock = threading.Lock()
        work = iter(enumerate(pending, 1))

        def worker() -> None:
            workspace = workspaces.get()
            while True:
                with lock:
                    item = next(work, None)
                if item is None:
                    return
                number, (mutant, mutated) = item
                record = _run_mutant(workspace, relative, original, mutant, mutated, args.tests, args.timeout)
                with lock, out.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                    if record["status"] != "killed":
                        print(f"[{number}/{len(pending)}] {record['status']}: line {mutant.line}: {mutant.description}",
                              flush=True)

        threads = [threading.Thread(target=worker) for _ in range(args.workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    keys = {m.key for m, _ in mutants}
    records = [r for r in _read_records(out) if _record_key(r) in keys]
    survivors = [r for r in records if r["status"] == "survived"]
    print(f"{relative}: {len(records)} mutants run, {len(records) - len(survivors)} killed, {len(survivors)} survived")
    return 0


if __name__ == "__main__":
    sys.exit(main())
