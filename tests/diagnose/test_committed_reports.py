"""The objective reports committed under docs/pusht_diagnosis back the numbers of the PushT model
card: each report's summary must be what `summarise` makes of its own per-episode arrays."""

import json
import math
from pathlib import Path

import pytest

from wmquant.diagnose.objective import summarise

REPORTS = sorted((Path(__file__).resolve().parents[2] / "docs" / "pusht_diagnosis").glob("objective_*.json"))


def _same(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


@pytest.mark.parametrize("path", REPORTS, ids=[p.name for p in REPORTS])
def test_committed_summary_is_the_summary_of_its_episodes(path):
    report = json.loads(path.read_text())
    recomputed = json.loads(json.dumps(summarise(report["per_episode"])))
    assert _same(recomputed, report["summary"]), path.name
    assert len(report["per_episode"]["sim_success_of_model_plan"]) == len(report["episodes"])


def test_the_reports_are_there():
    assert len(REPORTS) >= 8
