"""Study specs: each key's value check, at its edges, as a spec file or the command line gives it."""

import pytest

from wmquant.errors import StudyError
from fake_runner import build_result
from wmquant.study.paper import SettingKey, setting_key_from_result
from wmquant.study.spec import (flatten_overrides, make_run_spec, normalise_run, parse_override_strings, parse_spec,
                                run_slug, setting_key_from_overrides)

RTN = {"env": "wall", "method": "rtn", "w_bits": 8, "a_bits": 8}


def _run(**settings):
    return normalise_run({**RTN, **settings}, "the test")


@pytest.mark.parametrize("bits", [2, 3, 8, 16])
def test_bit_widths_from_2_to_8_and_16_are_accepted(bits):
    assert _run(predictor_wbit=bits)["predictor_wbit"] == bits


@pytest.mark.parametrize("bits", [1, 9, 15, 0, -4, 8.5, True, "eight"])
def test_other_bit_widths_are_refused_by_name(bits):
    with pytest.raises(StudyError, match=r"invalid value .* for predictor_wbit; valid: 2-8, or 16 for not quantized"):
        _run(predictor_wbit=bits)


@pytest.mark.parametrize("bits", [32, "32"])
def test_32_bits_is_refused_with_the_papers_meaning_of_it(bits):
    with pytest.raises(StudyError, match="invalid value 32 for encoder_abit; the paper's 32 bits is 16 here"):
        _run(encoder_abit=bits)


def test_integers_given_as_text_or_as_whole_floats_become_integers():
    run = _run(predictor_wbit="4", n_evals=10.0, quant_iter="3", seed=0.0)
    assert (run["predictor_wbit"], run["n_evals"], run["quant_iter"], run["seed"]) == (4, 10, 3, 0)
    assert all(type(run[key]) is int for key in ("predictor_wbit", "n_evals", "quant_iter", "seed"))
    for key, value in (("n_evals", 10.5), ("quant_iter", 0), ("seed", -1), ("n_calib", "many")):
        with pytest.raises(StudyError, match=f"invalid value .* for {key}"):
            _run(**{key: value})


@pytest.mark.parametrize("size", [-1, 1, 32, 128])
def test_group_sizes_are_minus_one_or_positive(size):
    assert _run(W_GROUP_SIZE=size)["W_GROUP_SIZE"] == size


@pytest.mark.parametrize("size", [0, -2, 12.5])
def test_other_group_sizes_are_refused(size):
    with pytest.raises(StudyError, match="for W_GROUP_SIZE; valid: -1 .per output channel. or a positive group size"):
        _run(W_GROUP_SIZE=size)


def test_booleans_are_true_or_false_also_as_text():
    assert _run(quant_encoder="false")["quant_encoder"] is False
    assert _run(mechanisms="true")["mechanisms"] is True
    for value in (1, "yes please", None):
        with pytest.raises(StudyError, match="for quant_encoder; valid: true or false"):
            _run(quant_encoder=value)


def test_text_keys_take_strings_and_numbers_as_text_but_no_lists_or_booleans():
    assert _run(tag=3)["tag"] == "3" and _run(scale_tag="iter2_opt30_eval50")["scale_tag"] == "iter2_opt30_eval50"
    for value in ([1], True, None):
        with pytest.raises(StudyError, match="for tag; valid: a string"):
            _run(tag=value)


def test_choices_are_checked():
    assert _run(calib_mode_a="token_wise")["calib_mode_a"] == "token_wise"
    assert _run(w_format="nvfp4")["w_format"] == "nvfp4"
    with pytest.raises(StudyError, match="for calib_mode_a; valid: layer_wise, token_wise"):
        _run(calib_mode_a="per_token")
    with pytest.raises(StudyError, match="for a_format; valid: int, fp8_e4m3"):
        _run(a_format="fp16")


def test_planner_and_engine_keys_pass_as_scalars_read_from_text():
    run = _run(**{"planner.sub_planner.var_scale": "0.5", "engine.device": "cpu", "planner.max_iter": "5"})
    assert run["planner.sub_planner.var_scale"] == 0.5 and run["engine.device"] == "cpu"
    assert run["planner.max_iter"] == 5
    with pytest.raises(StudyError, match=r"invalid value \[1, 2\] for engine.device; valid: a scalar"):
        _run(**{"engine.device": [1, 2]})
    with pytest.raises(StudyError, match="for planner.max_iter; valid: a positive integer"):
        _run(**{"planner.max_iter": 0})
    with pytest.raises(StudyError, match="unknown key 'planner.'"):  # a prefix alone is no key
        _run(**{"planner.": 1})


def test_an_unknown_key_lists_the_keys_shorthands_and_prefixes():
    with pytest.raises(StudyError) as raised:
        _run(colour=1)
    message = str(raised.value)
    assert "unknown key 'colour' in the test" in message
    for valid in ("W_GROUP_SIZE", "n_evals", "w_bits", "wa_bits", "enc_pred_bits", "aqg", "planner.*", "engine.*"):
        assert valid in message


def test_shorthands_set_the_keys_they_stand_for():
    assert flatten_overrides({"wa_bits": [4, 8]}, "t") == {
        "encoder_wbit": 4, "encoder_abit": 8, "predictor_wbit": 4, "predictor_abit": 8}
    assert flatten_overrides({"enc_pred_bits": [4, 6, 8, 16]}, "t") == {
        "encoder_wbit": 4, "encoder_abit": 6, "predictor_wbit": 8, "predictor_abit": 16}
    assert flatten_overrides({"aqg": "per_token"}, "t") == {"calib_mode_a": "token_wise"}
    for key, value in (("wa_bits", [4, 8, 8]), ("wa_bits", "48"), ("enc_pred_bits", [4, 4, 4])):
        with pytest.raises(StudyError, match=f"invalid value .* for {key}; valid: a list of"):
            flatten_overrides({key: value}, "t")


def test_a_recipe_from_the_command_line_is_the_same_recipe():
    given = parse_override_strings(["method=[smoothquant, gptq]"])
    assert _run(**given)["method"] == "smoothquant+gptq"
    assert _run(method="smoothquant+gptq") == _run(method=["smoothquant", "gptq"])


def test_a_misspelt_shorthand_or_planner_key_is_named_with_its_likely_meaning():
    with pytest.raises(StudyError, match="unknown key 'wa_bit' in the test .did you mean wa_bits.."):
        _run(wa_bit=[4, 4])
    with pytest.raises(StudyError, match="unknown key 'planer.max_iter' in the test .did you mean planner.max_iter.."):
        _run(**{"planer.max_iter": 5})


def test_a_quantized_encoder_needs_its_bit_widths_and_a_float_one_does_not():
    predictor_only = {"env": "wall", "method": "rtn", "predictor_wbit": 4, "predictor_abit": 8}
    with pytest.raises(StudyError, match=r"the test \(method rtn\) does not set encoder_wbit, encoder_abit"):
        normalise_run(predictor_only, "the test")
    run = normalise_run({**predictor_only, "quant_encoder": False}, "the test")
    assert "encoder_wbit" not in run and run["quant"] is True
    assert setting_key_from_overrides(run) == SettingKey.make("rtn", 16, 16, 4, 8, None, "per_tensor")


def test_a_runs_row_reads_quant_and_quant_encoder_as_true_when_absent():
    overrides = {"method": "rtn", "encoder_wbit": 4, "encoder_abit": 16, "predictor_wbit": 4, "predictor_abit": 16,
                 "W_GROUP_SIZE": 32}
    assert setting_key_from_overrides(overrides) == SettingKey.make("rtn", 4, 16, 4, 16, 32, None)
    assert setting_key_from_overrides({**overrides, "quant": False}).method == "rtn"
    assert setting_key_from_overrides({**overrides, "quant": False}).enc_w == 16
    assert setting_key_from_overrides({**overrides, "quant_encoder": False}).enc_w == 16


@pytest.mark.parametrize("settings", [
    {"enc_pred_bits": [8, 8, 16, 16], "w_format": "fp8_e4m3", "a_format": "fp8_e4m3"},  # the encoder alone
    {"enc_pred_bits": [4, 16, 16, 16], "w_format": "mxfp4", "a_format": "fp8_e4m3"},
    {"enc_pred_bits": [16, 8, 16, 16], "w_format": "mxfp4", "a_format": "fp8_e4m3"},
    {"wa_bits": [16, 8], "w_format": "mxfp4", "a_format": "fp8_e5m2"},  # activations alone
    {"wa_bits": [4, 8], "w_format": "nvfp4", "a_format": "int", "W_GROUP_SIZE": 16, "aqg": "per_token"},
    {"enc_pred_bits": [4, 4, 8, 16], "w_format": "fp8_e4m3", "a_format": "mxfp4"},
    {"wa_bits": [4, 4], "quant_encoder": False},
])
def test_a_pending_run_keys_as_its_result_will(settings):
    run = normalise_run({"env": "wall", "method": "rtn", **settings}, "the test")
    assert setting_key_from_overrides(run) == setting_key_from_result(build_result(run, "r"))


def test_the_encoders_format_names_an_encoder_only_run():
    fp8 = normalise_run({"env": "wall", "method": "rtn", "enc_pred_bits": [8, 8, 16, 16], "w_format": "fp8_e4m3",
                         "a_format": "fp8_e4m3"}, "the test")
    integer = normalise_run({**fp8, "w_format": "int", "a_format": "int"}, "the test")
    assert setting_key_from_overrides(fp8).fmt == "fp8_e4m3" and setting_key_from_overrides(integer).fmt == "int"
    assert make_run_spec(fp8).run_id.startswith("rtn_enc-w8a8_pred-w16a16_gpc_pt_fp8_e4m3-")
    assert make_run_spec(integer).run_id.startswith("rtn_enc-w8a8_pred-w16a16_gpc_pt-")


def test_readable_ids_name_the_calibration_set_the_model_and_a_float_encoder():
    run = normalise_run({**RTN, "wa_bits": [4, 8]}, "the test")
    assert make_run_spec(run).run_id.startswith("rtn_w4a8_gpc_pt-")
    replicate = normalise_run({**run, "calib_seed_offset": 2, "model_name": "wall_seed1"}, "the test")
    assert make_run_spec(replicate).run_id.startswith("rtn_w4a8_gpc_pt_cal2_m-wall_seed1-")
    shipped = normalise_run({**run, "calib_seed_offset": 0, "model_name": "wall"}, "the test")
    assert make_run_spec(shipped).run_id.startswith("rtn_w4a8_gpc_pt-")  # the first set, the env's own model
    # overrides without quant_encoder (not normalised) name a quantized encoder, as their row does
    mixed = {"method": "rtn", "encoder_wbit": 4, "encoder_abit": 8, "predictor_wbit": 8, "predictor_abit": 8}
    assert run_slug(mixed) == "rtn_enc-w4a8_pred-w8a8_gpc_pt"
    float_encoder = normalise_run({**run, "quant_encoder": False}, "the test")
    assert make_run_spec(float_encoder).run_id.startswith("rtn_enc-fp_pred-w4a8_gpc_pt-")
    assert make_run_spec(normalise_run({**run, "aqg": "per_token"}, "t")).run_id.startswith("rtn_w4a8_gpc_ptok-")
    both = normalise_run({**run, "w_format": "mxfp4", "a_format": "fp8_e4m3"}, "t")
    assert make_run_spec(both).run_id.startswith("rtn_w4a8_gpc_pt_mxfp4-fp8_e4m3-")


def test_a_key_that_takes_two_values_across_runs_cannot_be_overridden():
    spec = parse_spec({"name": "t", "env": "wall", "columns": [0], "base": {"wa_bits": [8, 8]},
                       "runs": [{"method": "fp"}, {"grid": {"method": ["rtn"], "n_calib": [4, 8]}}]})
    assert spec.axis_keys() == {"method", "n_calib"}
    with pytest.raises(StudyError, match="cannot override n_calib"):
        spec.expand({"n_calib": 2})
    assert len(spec_hash := spec.spec_hash) == 16 and int(spec_hash, 16) >= 0


def test_a_selection_given_as_text_matches_the_runs_values():
    spec = parse_spec({"name": "t", "env": "wall", "columns": [0], "base": {"a_bits": 16},
                       "runs": [{"method": "fp"}, {"grid": {"method": ["rtn"], "w_bits": [8, 4]}}]})
    selected = spec.expand(select={"w_bits": "4"})
    assert [(r.overrides["method"], r.overrides.get("predictor_wbit")) for r in selected] == [("fp", None), ("rtn", 4)]
    assert [r.overrides.get("predictor_wbit") for r in spec.expand(select={"w_bits": ["8", 4]})] == [None, 8, 4]


@pytest.mark.parametrize("columns", [[-1, 5], [0, 2.5], [0, True], [0, 0], [], "0, 5"])
def test_columns_are_increasing_non_negative_integers(columns):
    with pytest.raises(StudyError, match="columns must be increasing non-negative integers"):
        parse_spec({"name": "t", "env": "wall", "columns": columns, "runs": [{"method": "fp"}]})
