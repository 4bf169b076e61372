"""scripts/mutation_check.py: which small changes it makes, and that each mutant is valid code."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mutation_check.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("mutation_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutation_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["mutation_check"]


SOURCE = '''LIMIT = 3


def clipped(x, low=0):
    """A docstring is not mutated."""
    y = x + 1
    if y > LIMIT:
        raise ValueError(f"{y} too big")
    return max(-y, low)
'''


def test_mutants_are_made_inside_function_bodies_only(tool):
    mutants = {m.description: code for m, code in tool.find_mutants(SOURCE, "toy.py")}
    assert set(mutants) == {
        "delete statement: y = x + 1",
        "operator: x + 1 -> x - 1",
        "keep left operand of x + 1",
        "constant 1 -> 2",
        "negate if: y > LIMIT",
        "comparison: y > LIMIT -> y >= LIMIT",
        "name max -> min",
        "drop unary: -y",
    }  # not LIMIT, the default 0, the docstring or the error message
    namespace = {}
    exec(compile(mutants["operator: x + 1 -> x - 1"], "toy.py", "exec"), namespace)
    assert namespace["clipped"](-1) == 2  # max(-(-1 - 1), 0)
    exec(compile(mutants["negate if: y > LIMIT"], "toy.py", "exec"), namespace)
    with pytest.raises(ValueError):
        namespace["clipped"](0)


def test_bad_arguments_exit_2_with_one_line(tool, capsys):
    assert tool.main(["src/wmquant/no_such_module.py", "tests", "--out", "unused.jsonl"]) == 2
    assert tool.main(["src/wmquant/quant/qmath.py", "tests/no_such_test.py", "--out", "unused.jsonl"]) == 2
    assert tool.main(["src/wmquant/quant/qmath.py", "tests", "--out", "unused.jsonl", "--workers", "0"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
    assert "no_such_module.py" in errors[0] and "no_such_test.py" in errors[1] and "--workers=0" in errors[2]


def test_a_cut_last_result_line_is_dropped_and_a_cut_earlier_one_is_an_error(tool, tmp_path):
    whole = json.dumps({"line": 1, "col": 0, "description": "constant 0 -> 1", "status": "killed"})
    results = tmp_path / "results.jsonl"
    results.write_text(whole + "\n" + '{"line": 2, "co')  # the run was killed mid-write
    assert tool._read_records(results) == [json.loads(whole)]
    results.write_text('{"line": 2, "co\n' + whole + "\n")
    with pytest.raises(json.JSONDecodeError):
        tool._read_records(results)


NESTED = '''def outer(x):
    def inner(y):
        return y + 1
    return inner(x) * 2


class Box:
    def size(self):
        return 3 - 1
'''


def test_function_spans_cover_methods_and_nested_functions(tool):
    spans = tool.function_spans(NESTED, "toy.py")
    assert spans == {"outer": [(1, 4)], "inner": [(2, 3)], "size": [(8, 9)]}


def test_functions_option_limits_the_mutants_and_refuses_unknown_names(tool, tmp_path, capsys, monkeypatch):
    module = "src/wmquant/data/transforms.py"  # two functions; no mutant is really run below
    out = tmp_path / "results.jsonl"
    assert tool.main([module, "tests", "--out", str(out), "--functions", "no_such"]) == 2
    assert tool.main([module, "tests", "--out", str(out), "--functions", " , "]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "'no_such' is not a function of src/wmquant/data/transforms.py; valid:" in errors[0]
    assert "frames_are_channels_last, to_model_input" in errors[0] and "' , '" in errors[1] and not out.exists()

    run_lines: list[int] = []

    def pretend_to_run(workspace, relative, original, mutant, mutated, tests, timeout):
        run_lines.append(mutant.line)
        return {"line": mutant.line, "col": mutant.col, "description": mutant.description, "status": "killed"}

    monkeypatch.setattr(tool, "_make_workspace", lambda root: root)
    monkeypatch.setattr(tool, "_run_mutant", pretend_to_run)
    spans = tool.function_spans((tool.REPO / module).read_text(), "transforms.py")
    counts = {}
    for name in ("frames_are_channels_last", "to_model_input", "to_model_input,frames_are_channels_last"):
        run_lines.clear()
        out.unlink(missing_ok=True)
        assert tool.main([module, "tests", "--out", str(out), "--workers", "1", "--functions", name]) == 0
        inside = [span for part in name.split(",") for span in spans[part]]
        assert run_lines and all(any(a <= line <= b for a, b in inside) for line in run_lines)
        counts[name] = len(run_lines)
    both = counts["to_model_input,frames_are_channels_last"]
    assert both == counts["frames_are_channels_last"] + counts["to_model_input"] == len(
        tool.find_mutants((tool.REPO / module).read_text(), module))


def test_the_workspace_holds_the_published_results_the_study_tests_read(tool, tmp_path):
    repo = tmp_path / "repo"
    for name in ("src/pkg", "tests", "results/table3/runs", "docs", "src/pkg/__pycache__"):
        (repo / name).mkdir(parents=True, exist_ok=True)
    (repo / "pyproject.toml").write_text("[project]\n")
    (repo / "src/pkg/m.py").write_text("x = 1\n")
    (repo / "src/pkg/__pycache__/m.pyc").write_bytes(b"stale")
    (repo / "results/table3/runs/r.json").write_text("{}")
    (repo / "docs/study_wall.md").write_text("# study\n")
    workspace = tool._make_workspace(tmp_path / "work", repo)
    copied = sorted(str(p.relative_to(workspace)) for p in workspace.rglob("*") if p.is_file())
    assert copied == ["docs/study_wall.md", "pyproject.toml", "results/table3/runs/r.json", "src/pkg/m.py"]
    bare = tmp_path / "bare"
    (bare / "src").mkdir(parents=True)
    (bare / "tests").mkdir()
    (bare / "pyproject.toml").write_text("")
    assert sorted(p.name for p in tool._make_workspace(tmp_path / "work2", bare).iterdir()) == [
        "pyproject.toml", "src", "tests"]
