"""Every command of the original study's README (sections 4-6), in its wmquant form, on a tiny budget.

The flags are copied from the README; only the budget is shrunk (`TINY`) and outputs go to tmp_path.
"""

from __future__ import annotations

import json
import shlex

import pytest

from wmquant.cli import main
from wmquant.models.checkpoint import shipped_model_names

TINY = ("n_evals=2 planner.max_iter=1 planner.sub_planner.num_samples=8 planner.sub_planner.topk=2 "
        "planner.sub_planner.opt_steps=1 quant_iter=1 save_plots=false").split()

WALL_COMMANDS = {
    "fp": "plan --config-name plan_wall.yaml model_name=wall",
    "plan_act": "plan-act --config-name plan_wall.yaml model_name=wall_single tag=fp sta_scale=True n_evals=50 "
                "planner.max_iter=2 planner.sub_planner.opt_steps=10 scale_tag=iter2_opt10_eval50",
    "rtn_tensor": "quant --config-name plan_wall.yaml model_name=wall_single quant=True quant_encoder=True predictor_wbit=8 "
                  "predictor_abit=8 encoder_wbit=8 encoder_abit=8 w_quant_method=minmax a_quant_method=minmax "
                  "calib_mode_a=layer_wise quant_iter=2 tag=RTN_quant_Pw8a8_Ew8a8_per_tensor_iter2",
    "rtn_token": "quant --config-name plan_wall.yaml model_name=wall_single quant=True quant_encoder=True predictor_wbit=8 "
                 "predictor_abit=8 encoder_wbit=8 encoder_abit=8 w_quant_method=minmax a_quant_method=minmax "
                 "calib_mode_a=token_wise quant_iter=2 tag=RTN_quant_Pw8a8_Ew8a8_per_token_iter2",
    "omse": "quant --config-name plan_wall.yaml model_name=wall_single quant=True quant_encoder=True predictor_wbit=8 "
            "predictor_abit=8 encoder_wbit=8 encoder_abit=8 w_quant_method=omse a_quant_method=minmax "
            "calib_mode_a=layer_wise quant_iter=2 tag=OMSE_quant_Pw8a8_Ew8a8_per_tensor_iter2",
    "smoothquant": "quant --config-name plan_wall.yaml model_name=wall_single quant=True quant_encoder=True predictor_wbit=8 "
                   "predictor_abit=8 encoder_wbit=8 encoder_abit=8 w_quant_method=minmax a_quant_method=minmax "
                   "calib_mode_a=layer_wise quant_iter=2 scale_tag=iter2_opt10_eval50 method=smoothquant "
                   "tag=smooth_quant_Pw8a8_Ew8a8_per_tensor_iter2",
    "omniquant": "quant --config-name plan_wall.yaml model_name=wall_single quant=True quant_encoder=True predictor_wbit=8 "
                 "predictor_abit=8 encoder_wbit=8 encoder_abit=8 w_quant_method=omniquant a_quant_method=omniquant "
                 "calib_mode_a=layer_wise quant_iter=2 scale_tag=iter2_opt10_eval50 "
                 "tag=omni_quant_Pw8a8_Ew8a8_per_tensor_iter2 method_options.epochs=1 method_options.n_samples=4",
    "awq": "quant --config-name plan_wall.yaml model_name=wall_single quant=True quant_encoder=True predictor_wbit=8 "
           "predictor_abit=16 encoder_wbit=8 encoder_abit=16 w_quant_method=awq a_quant_method=minmax quant_iter=2 "
           "scale_tag=iter2_opt10_eval50 tag=awq_quant_Pw8a16_Ew8a16_iter2",
}
EXPECTED_METHOD = {"rtn_tensor": "rtn", "rtn_token": "rtn", "omse": "omse", "smoothquant": "smoothquant",
                   "omniquant": "omniquant", "awq": "awq"}

pytestmark = pytest.mark.skipif("wall" not in shipped_model_names(), reason="the shipped Wall model is missing")


@pytest.fixture(scope="module")
def stats_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("act_scales")


def _run(command: str, tmp_path, stats_dir, *extra: str) -> int:
    args = shlex.split(command) + TINY + [f"act_scales_dir={stats_dir}", *extra]
    if not args[0] == "plan-act":
        args.append(f"output_dir={tmp_path / 'run'}")
    return main(args)


@pytest.mark.parametrize("name", list(WALL_COMMANDS))
def test_wall_seed_readme_command(name, tmp_path, stats_dir):
    if name in ("smoothquant", "omniquant"):  # both read the plan-act statistics (README section 5)
        assert _run(WALL_COMMANDS["plan_act"], tmp_path, stats_dir) == 0
    assert _run(WALL_COMMANDS[name], tmp_path, stats_dir) == 0
    if name == "plan_act":
        files = list(stats_dir.glob("wm_act_scales_wall_single_iter2_opt10_eval50.safetensors"))
        assert len(files) == 1
        return
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["n_evals"] == 2 and len(result["success_rate_by_iter"]) == 1
    if name == "fp":
        assert result["method"] == "fp" and result["quant"] is None and result["calibration_seeds"] is None
        return
    assert result["method"] == EXPECTED_METHOD[name]
    assert result["calibration_seeds"] == [2, 101] and result["eval_seeds"] == [1, 100]
    quant = result["quant"]
    assert quant["encoder"]["w_bits"] == 8 and quant["predictor"]["w_bits"] == 8
    assert quant["predictor"]["a_bits"] == (16 if name == "awq" else 8)
    assert quant["predictor"]["a_granularity"] == ("per_token" if name == "rtn_token" else "per_tensor")
    assert 8.0 < quant["avg_bits_per_weight"]["predictor"] < 12.0
    assert result["fake_quant_kernels"] == "eager"  # the fused kernels are CUDA-only


def test_w_group_size_environment_variable(tmp_path, stats_dir, monkeypatch):
    monkeypatch.setenv("W_GROUP_SIZE", "128")
    assert _run(WALL_COMMANDS["rtn_tensor"], tmp_path, stats_dir) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["quant"]["predictor"]["w_group_size"] == 128
    assert result["config"]["W_GROUP_SIZE"] == 128


def test_w_group_size_key_beats_nothing_and_minus_one_is_per_channel(tmp_path, stats_dir, monkeypatch):
    monkeypatch.delenv("W_GROUP_SIZE", raising=False)
    assert _run(WALL_COMMANDS["rtn_tensor"], tmp_path, stats_dir, "W_GROUP_SIZE=-1") == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["quant"]["predictor"]["w_group_size"] is None


@pytest.mark.parametrize("args, fragment", [
    (["plan", "env=mars"], "unknown env"),
    (["plan", "n_evals=0"], "n_evals"),
    (["plan", "planner.sub_planner.topk=400"], "topk"),
    (["plan", "planner.name=beam"], "unknown planner"),
    (["plan", "planner=beam"], "unknown planner 'beam'; valid: mpc_cem, mpc_gd, cem, gd"),
    (["plan", "planner.name=gd"], "planner.name=gd plans once with planner.sub_planner's settings"),
    (["plan", "model_name=nosuchmodel"], "unknown model name"),
    (["plan", "--config-name", "plan_wall.yaml", "model_name=wall", "goal_source=dset"], "dataset_path"),
    (["plan", "--config-name", "plan_pusht.yaml", "model_name=wall"], "trained on env 'wall'"),
    (["quant", "predictor_wbit=9"], "predictor_wbit=9 is not a valid bit width"),
    (["quant", "predictor_abit=abc"], "predictor_abit='abc' is not a valid bit width"),
    (["quant", "encoder_wbit=2.5"], "encoder_wbit=2.5 is not a valid bit width"),
    (["quant", "W_GROUP_SIZE=0"], "W_GROUP_SIZE"),
    (["quant", "method=magic"], "unknown method"),
    (["quant", "calib_mode_a=channel_wise"], "calib_mode_a"),
    (["quant", "method=awq", "predictor_abit=8"], "weight-only"),
    (["quant", "method=smoothquant", "scale_tag=never_made"], "wmquant plan-act"),
    (["quant", "engine.backend=real", "engine.int8_kernel=cutlass"], "unknown engine.int8_kernel 'cutlass'; valid: torch, triton"),
    (["plan", "seed=1"], "seed"),
    (["plan", "output_dir=/proc/wmq_out"], "output_dir=/proc/wmq_out cannot be created"),
    (["plan", "resume=maybe"], "resume='maybe' must be true or false"),
    (["quant", "quant_encoder=maybe"], "quant_encoder='maybe' must be true or false"),
    (["plan", "save_plots=1"], "save_plots=1 must be true or false"),
    (["plan", "engine.backend=magic"], "unknown engine.backend 'magic'; valid: fake, real"),
    (["plan", "predictor_wbitt=3"], "no such key; closest keys: predictor_wbit"),
    (["plan", "--config-name", "plan_pusht.yaml", "model_name=pusht", "dataset_path=/nonexistent/pusht"], "does not exist"),
    (["frobnicate"], "unknown command"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, fragment, tmp_path, capsys, stats_dir):
    own_output = any(a.startswith("output_dir=") for a in args)
    code = main([*args, *([] if own_output else [f"output_dir={tmp_path / 'never'}"]), f"act_scales_dir={stats_dir}"]
                if args[0] in ("plan", "quant") else args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert fragment in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "never").exists()  # nothing is left behind
