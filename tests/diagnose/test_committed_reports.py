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


def test_the_planning_aware_proxy_table_is_the_one_its_results_give():
    """docs/planning_aware.md's CPU proxy table: printed by docs/planning_aware_proxy.py from the
    published results/planning_aware_proxy runs, whose ranking summaries are their episodes'."""
    import importlib.util

    import numpy as np

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("planning_aware_proxy", root / "docs" / "planning_aware_proxy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = root / "results" / "planning_aware_proxy"
    document = (root / "docs" / "planning_aware.md").read_text()
    rows = module.table_rows(results)
    assert len(rows) == 2 + len(module.CONFIGS)
    for row in rows:
        assert row in document
    for directory in module.CONFIGS:
        ranking = json.loads((results / directory / "result.json").read_text())["quant"]["mechanisms"]["ranking"]
        per_episode = ranking["per_episode"]
        assert len(per_episode["rho_quantized_fp"]) == 30
        assert math.isclose(ranking["summary"]["median_rho_quantized_fp"], float(np.median(per_episode["rho_quantized_fp"])))
        assert math.isclose(ranking["summary"]["mean_elite_overlap"], float(np.mean(per_episode["elite_overlap"])))
