"""Generated prose: placeholders, their errors, and the family of run-vs-run tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from wmquant.errors import StudyError
from wmquant.study.prose import format_p, hand_written_fractions, render_prose, run_name
from wmquant.study.report import build_report
from wmquant.study.stats import holm_adjust, mcnemar

TABLE3 = Path(__file__).resolve().parents[2] / "results" / "wall_study" / "table3"
pytestmark = pytest.mark.skipif(not TABLE3.is_dir(), reason="published Wall results not present")


@pytest.fixture(scope="module")
def reports():
    return {"table3": build_report(TABLE3)}


def test_run_names_drop_only_a_hash_suffix():
    assert run_name("rtn_w4a4_gpc_pt-16436816") == "rtn_w4a4_gpc_pt"
    assert run_name("rtn_enc-w8a8_pred-w4a4_gpc_pt-c4681435") == "rtn_enc-w8a8_pred-w4a4_gpc_pt"
    assert run_name("my-run") == "my-run"


@pytest.mark.parametrize("p, text", [(1.0, "1"), (0.25, "0.25"), (0.0078125, "0.0078"), (4.5e-13, "4.5e-13"),
                                     (0.00048828125, "0.00049")])
def test_format_p(p, text):
    assert format_p(p) == text


def test_cells_stars_and_intervals(reports):
    text = render_prose("{{cell table3/rtn_w4a4_gpc_pt}} {{ci table3/rtn_w4a4_gpc_pt}} {{cell table3/rtn_w4a4_gpc_ptok}} "
                        "{{rate table3/fp 5}} {{paper table3/fp}}", reports)
    # RTN W4A4 per-tensor is significant after Holm, per-token (raw p 0.002, Holm 0.053) is not
    assert text == "0.14* [0.07, 0.26] 0.78 0.98 0.94"


def test_pvs_holm_is_adjusted_over_the_templates_own_family(reports):
    pairs = [("table3/rtn_w4a4_gpc_pt", "table3/rtn_w4a4_gpc_ptok"), ("table3/rtn_w4a8_gpc_pt", "table3/rtn_w4a8_gpc_ptok")]
    template = " ".join(f"{{{{pvs_holm {a} {b}}}}}" for a, b in pairs) + " {{pvs_family}}"
    rows = {run_name(r.run_id): r.result for r in reports["table3"].rows if r.result}
    raw = [mcnemar(rows[a.split("/")[1]]["success_by_iter"][-1], rows[b.split("/")[1]]["success_by_iter"][-1])["p_value"]
           for a, b in pairs]
    assert render_prose(template, reports).split() == [*(format_p(p) for p in holm_adjust(raw)), "2"]


def test_span_and_count_with_filters(reports):
    assert render_prose("{{span rate table3/*_w4a4_*}} {{count table3/*_w4a4_* final<0.5}}", reports) == "0.14-0.96 4"


@pytest.mark.parametrize("template, message", [
    ("{{rate table9/fp}}", "names sweep 'table9'"),
    ("{{rate table3/nope}}", "no complete run of table3 matches 'nope'"),
    ("{{rate table3/rtn_w4a4_*}}", "matches 2 runs"),
    ("{{rate fp}}", "is not SPEC/RUN"),
    ("{{frobnicate table3/fp}}", "unknown function 'frobnicate'"),
    ("{{rate table3/fp 7}}", "column 7 is not in the report"),
    ("{{p table3/fp}}", "was not tested against FP"),
    ("{{loss table3/fp 51}}", "iterations 1..50"),
])
def test_placeholder_errors_name_the_problem(reports, template, message):
    with pytest.raises(StudyError, match=message.replace("(", r"\(").replace(".", r"\.").replace("*", r"\*")):
        render_prose(template, reports)


def test_hand_written_fractions_ignore_placeholders_code_and_integers():
    template = "W4A4 ends at {{rate table3/fp}}; `torch 2.11.0`; 50 episodes; it was 0.78 by hand\n```\nx = 1.5\n```"
    assert hand_written_fractions(template) == ["0.78"]


def test_comments_are_dropped(reports):
    assert render_prose("<!-- 0.5 is a note {{nope}} -->\nFP {{rate table3/fp}}", reports) == "FP 0.98"
