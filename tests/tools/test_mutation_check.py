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
