"""DINO-WM chooses its planner with a config group (`planner=mpc_cem`); here that choice sets
planner.name and planner.sub_planner.name and leaves the budget keys alone."""

from __future__ import annotations

import pytest

from wmquant.configs import compose_config
from wmquant.errors import ConfigError
from wmquant.models.checkpoint import shipped_model_names
from wmquant.planning.session import PlanningSession

pytestmark = pytest.mark.skipif("wall" not in shipped_model_names(), reason="the shipped Wall model is missing")


@pytest.mark.parametrize("group, outer, sub", [("mpc_cem", "mpc", "cem"), ("mpc_gd", "mpc", "gd"),
                                               ("cem", "cem", "cem"), ("gd", "gd", "gd")])
def test_dino_wm_planner_groups_pick_both_names_and_keep_the_budget(group, outer, sub):
    cfg = compose_config("plan_wall", [f"planner={group}", "planner.sub_planner.opt_steps=7"])
    assert (cfg.planner.name, cfg.planner.sub_planner.name) == (outer, sub)
    assert cfg.planner.sub_planner.opt_steps == 7 and cfg.planner.max_iter == 50
    session = PlanningSession(cfg)
    planner = session.planner()
    assert type(planner).__name__ == {"cem": "CEMPlanner", "gd": "GDPlanner"}[sub]
    assert planner.config.opt_steps == 7


def test_open_loop_planner_and_sub_planner_must_agree():
    cfg = compose_config("plan_wall", ["planner.name=gd"])
    with pytest.raises(ConfigError, match="planner.sub_planner.name=cem; set both, or use planner=gd"):
        PlanningSession(cfg)


def test_unknown_planner_group_names_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown planner 'beam'; valid: mpc_cem, mpc_gd, cem, gd"):
        compose_config("plan_pusht", ["planner=beam"])
