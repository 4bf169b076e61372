"""Figures: valid PNGs whose layout and content follow their inputs."""

import matplotlib.image
import numpy as np
import pytest
from fake_runner import build_result

from wmquant.errors import StudyError
from wmquant.study.figures import (VARIANT_STYLES, line_style, plot_activation_outliers, plot_latent_mse_and_loss,
                                   plot_rollout_grid, plot_success_curves, success_figure)


def _results(settings):
    out = [build_result({"method": "fp", "env": "wall", "n_evals": 8, "planner.max_iter": 6}, "fp")]
    for w in settings:
        for method in ("rtn", "omse"):
            overrides = {"method": method, "env": "wall", "n_evals": 8, "planner.max_iter": 6,
                         "encoder_wbit": w, "encoder_abit": 16, "predictor_wbit": w, "predictor_abit": 16}
            out.append(build_result(overrides, f"{method}{w}"))
    return out


def _image(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path)


def test_success_curves_one_panel_per_setting(tmp_path):
    one = _image(plot_success_curves(_results([8]), tmp_path / "one.png"))
    five = _image(plot_success_curves(_results([8, 6, 4, 3, 2]), tmp_path / "five.png", ncols=4))
    assert five.shape[1] > 3 * one.shape[1]       # four panels across
    assert five.shape[0] > 1.6 * one.shape[0]     # two rows of panels
    with pytest.raises(StudyError):
        plot_success_curves([], tmp_path / "none.png")


def test_latent_mse_and_loss_rows_follow_settings(tmp_path):
    one = _image(plot_latent_mse_and_loss(_results([8]), tmp_path / "one.png"))
    three = _image(plot_latent_mse_and_loss(_results([8, 4, 3]), tmp_path / "three.png"))
    assert three.shape[0] > 2.5 * one.shape[0] and abs(three.shape[1] - one.shape[1]) < 0.1 * one.shape[1]
    unrecorded = [dict(r, latent_mse_by_iter=[], planning_loss_by_iter=[]) for r in _results([8])]
    assert _image(plot_latent_mse_and_loss(unrecorded, tmp_path / "empty.png")).size


def test_rollout_grid_shows_the_frames(tmp_path):
    red = np.zeros((3, 16, 16, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((2, 16, 16, 3), np.uint8)
    blue[..., 2] = 255
    image = _image(plot_rollout_grid({"FP": red, "RTN W4A4": blue}, tmp_path / "grid.png"))[..., :3]
    top, bottom = image[: image.shape[0] // 2], image[image.shape[0] // 2:]

    def count(part, colour):
        return int(np.sum(np.all(np.abs(part - np.array(colour)) < 0.05, axis=-1)))

    assert count(top, (1, 0, 0)) > 100 and count(top, (0, 0, 1)) == 0
    assert count(bottom, (0, 0, 1)) > 100 and count(bottom, (1, 0, 0)) == 0
    with pytest.raises(StudyError, match="uint8 frames of shape"):
        plot_rollout_grid({"FP": red.astype(np.float32)}, tmp_path / "bad.png")
    with pytest.raises(StudyError):
        plot_rollout_grid({}, tmp_path / "bad.png")


def test_activation_outliers(tmp_path):
    rng = np.random.default_rng(0)
    before = {"encoder.blocks.0.attn.qkv": np.abs(rng.normal(size=384)),
              "predictor.blocks.0.mlp.fc1": rng.normal(size=(5, 404))}
    after = {name: np.sqrt(np.abs(values)) for name, values in before.items()}
    image = _image(plot_activation_outliers(before, after, list(before), tmp_path / "outliers.png"))
    single = _image(plot_activation_outliers(before, after, ["encoder.blocks.0.attn.qkv"], tmp_path / "one.png"))
    assert image.shape[0] > 1.6 * single.shape[0]
    with pytest.raises(StudyError, match="no after-smoothing statistics for layer 'x'"):
        plot_activation_outliers({**before, "x": np.ones(4)}, after, ["x"], tmp_path / "missing.png")
    with pytest.raises(StudyError, match="not finite"):
        plot_activation_outliers({"x": np.array([1.0, np.nan])}, {"x": np.ones(2)}, ["x"], tmp_path / "nan.png")


def test_engine_variants_get_their_own_line_styles():
    fp = build_result({"method": "fp", "env": "wall", "n_evals": 8, "planner.max_iter": 6}, "fp")
    bf16 = build_result({"method": "fp", "env": "wall", "n_evals": 8, "planner.max_iter": 6,
                         "engine.precision": "bf16"}, "fp_bf16")
    real = build_result({"method": "rtn", "env": "wall", "n_evals": 8, "planner.max_iter": 6, "engine.backend": "real",
                         "predictor_wbit": 8, "predictor_abit": 8}, "real")
    assert line_style(fp, baseline=True) == "--"
    assert line_style(bf16, baseline=True) == VARIANT_STYLES["bf16"] != "--"
    assert line_style(real) == VARIANT_STYLES["real kernels"] != line_style(fp)


def test_success_curves_draw_the_papers_numbers():
    figure = success_figure(_results([8]), paper={"fp": {0: 0.1, 5: 0.2}, "rtn8": {50: 0.7}})
    axis = figure.axes[0]
    markers = [line for line in axis.get_lines() if line.get_marker() == "D"]
    # FP's numbers after MPC iterations 1 and 5 (column 0 is iteration 1), RTN's at column 50
    assert sorted((tuple(line.get_xdata()), tuple(line.get_ydata())) for line in markers) == [
        ((1, 5), (0.1, 0.2)), ((50,), (0.7,))]
    assert "paper" in figure._suptitle.get_text()
    assert not [line for line in success_figure(_results([8])).axes[0].get_lines() if line.get_marker() == "D"]


def test_legends_sit_outside_the_curves():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = success_figure(_results([8, 4]))
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    for axis in figure.axes:
        legend = axis.get_legend().get_window_extent(renderer)
        assert legend.x0 >= axis.get_window_extent(renderer).x1  # right of the plot area, over no curve
