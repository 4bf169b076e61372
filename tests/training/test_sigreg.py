"""SIGReg (wmquant.training.sigreg) against the Epps-Pulley distance's closed form, and the world
model trained end to end with it (`training.encoder_regularizer=sigreg`): the visual targets keep
their gradient, each frame's latent is held to an isotropic Gaussian, the encoder may start
untrained (`encoder_pretrain.steps=0`)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from wmquant.cli import main
from wmquant.models.checkpoint import load_world_model
from wmquant.training.sigreg import epps_pulley, epps_pulley_closed_form, sigreg_loss
from wmquant.training.world_model import frame_sigreg_loss, rollout_losses

from test_train import TINY

SAMPLES = {
    "normal": lambda g: torch.randn(400, generator=g),
    "collapsed": lambda g: torch.zeros(50),
    "wide": lambda g: 3 * torch.randn(300, generator=g),
    "shifted": lambda g: torch.randn(200, generator=g) + 1,
    "uniform": lambda g: torch.rand(300, generator=g),
    "skewed": lambda g: torch.distributions.Exponential(1.0).sample((300,)) - 1,
}


@pytest.mark.parametrize("name", SAMPLES)
def test_the_quadrature_matches_the_closed_form(name):
    sample = SAMPLES[name](torch.Generator().manual_seed(0))
    closed = epps_pulley_closed_form(sample).item()
    assert epps_pulley(sample[:, None]).item() == pytest.approx(closed, abs=2e-4)


def test_the_distance_is_zero_for_the_normal_and_known_for_a_point_mass():
    g = torch.Generator().manual_seed(1)
    assert epps_pulley(torch.randn(20000, 1, generator=g)).item() < 2e-4
    # all mass at 0: the integral of (1 - exp(-t^2/2))^2 exp(-t^2/2) over the line
    point_mass = math.sqrt(2 * math.pi) - 2 * math.sqrt(math.pi) + math.sqrt(2 * math.pi / 3)
    assert epps_pulley_closed_form(torch.zeros(7)).item() == pytest.approx(point_mass, rel=1e-12)
    # columns are separate variables
    normal = torch.randn(2000, generator=g)
    both = epps_pulley(torch.stack([torch.zeros(2000), normal], dim=1))
    torch.testing.assert_close(both, torch.cat([epps_pulley(torch.zeros(2000, 1)), epps_pulley(normal[:, None])]))
    assert both[0].item() > 100 * both[1].item()


def test_sigreg_wants_isotropic_gaussian_embeddings():
    g = torch.Generator().manual_seed(2)
    isotropic = torch.randn(4000, 32, generator=g)
    loss = lambda z: sigreg_loss(z, generator=torch.Generator().manual_seed(3)).item()  # noqa: E731
    assert loss(isotropic) < 2e-3
    # every projection of an anisotropic Gaussian is normal, but not standard normal
    assert loss(isotropic * torch.linspace(0.2, 2.0, 32)) > 10 * loss(isotropic)
    # embeddings on one line, or all near one point, are what collapse looks like
    line = torch.randn(4000, 1, generator=g) * torch.randn(1, 32, generator=g)
    assert loss(line) > 0.05 and loss(0.01 * isotropic) > 0.3


def test_sigreg_draws_its_directions_from_the_given_generator_only():
    embeddings = torch.randn(64, 8, generator=torch.Generator().manual_seed(6))
    seeded = lambda: sigreg_loss(embeddings, directions=4, generator=torch.Generator().manual_seed(7))  # noqa: E731
    torch.manual_seed(0)
    global_state = torch.get_rng_state()
    first = seeded()
    assert torch.equal(torch.get_rng_state(), global_state)  # the global generator is left alone
    torch.manual_seed(1)  # another global state: the same loss
    assert seeded().item() == first.item()
    torch.manual_seed(0)
    unseeded = sigreg_loss(embeddings, directions=4)
    assert not torch.equal(torch.get_rng_state(), global_state)  # without a generator, the global one draws
    assert unseeded.item() != first.item()


def test_sigreg_runs_in_float32_under_bfloat16_autocast():
    embeddings = torch.randn(256, 16, generator=torch.Generator().manual_seed(8))
    unit = torch.randn(16, 256, generator=torch.Generator().manual_seed(9))  # the directions, as drawn
    exact = epps_pulley(embeddings @ (unit / unit.norm(dim=0))).mean()  # float32 throughout
    assert sigreg_loss(embeddings, generator=torch.Generator().manual_seed(9)).item() == pytest.approx(exact.item(), rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = sigreg_loss(embeddings, generator=torch.Generator().manual_seed(9))
    assert autocast.dtype == torch.float32 and autocast.item() == pytest.approx(exact.item(), rel=1e-6)


@pytest.mark.parametrize("shape", [(1, 4), (5,), (2, 3, 4)])
def test_sigreg_refuses_fewer_than_two_embeddings_or_a_shape_other_than_n_by_d(shape):
    with pytest.raises(ValueError, match=rf"needs embeddings of shape \(n >= 2, d\), got \({', '.join(map(str, shape))},?\)"):
        sigreg_loss(torch.zeros(shape))


def test_two_embeddings_of_one_dimension_are_enough():
    pair = torch.tensor([[-1.0], [1.0]])  # every projection on the unit "sphere" of R^1 is +-pair
    expected = epps_pulley_closed_form(torch.tensor([-1.0, 1.0])).item()
    assert sigreg_loss(pair, directions=3).item() == pytest.approx(expected, abs=2e-4)


def test_descending_sigreg_spreads_a_collapsed_cloud_to_unit_variance():
    g = torch.Generator().manual_seed(4)
    points = (0.05 * torch.randn(1024, 8, generator=g) + 0.5).requires_grad_(True)
    optimizer = torch.optim.Adam([points], lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        sigreg_loss(points, directions=64, generator=g).backward()
        optimizer.step()
    with torch.no_grad():
        assert points.mean(0).abs().max().item() < 0.15
        std = points.std(0)
        assert std.min().item() > 0.8 and std.max().item() < 1.2, std


def test_frame_sigreg_judges_whole_frames_at_the_unfolded_scale():
    g = torch.Generator().manual_seed(5)
    latents = torch.randn(16, 4, 6, 5, generator=g)  # (b, T, N, E)
    torch.manual_seed(0)
    unit = frame_sigreg_loss(latents)
    torch.manual_seed(0)
    assert frame_sigreg_loss(4 * latents, latent_scale=4.0).item() == pytest.approx(unit.item(), rel=1e-5)
    # tokens that depend on their position alone look Gaussian across positions, but every frame
    # is the same: a whole-frame sample sees the collapse
    positional = torch.randn(1, 1, 6, 5, generator=g).expand(16, 4, 6, 5)
    torch.manual_seed(0)
    assert frame_sigreg_loss(positional).item() > 0.3 > 10 * unit.item()


def _model_and_batch():
    model, _ = load_world_model("wall")
    model.decoder = None
    n, g = model.num_hist, torch.Generator().manual_seed(0)
    latents = torch.randn(2, n + 2, model.predictor.num_patches, model.visual_dim, generator=g, requires_grad=True)
    proprio = torch.randn(2, n + 2, 2, generator=g, requires_grad=True)
    return model, n, latents, proprio, torch.randn(2, n + 2, 10, generator=g)


@pytest.mark.parametrize("gradient", [False, True])
def test_visual_targets_keep_their_gradient_end_to_end_and_proprio_targets_never(gradient):
    model, n, latents, proprio, actions = _model_and_batch()
    losses = model({"visual_latent": latents[:, : n + 1], "proprio": proprio[:, : n + 1]}, actions[:, : n + 1],
                   visual_target_gradient=gradient)
    rollout = rollout_losses(model, {"visual_latent": latents, "proprio": proprio, "actions": actions}, 2,
                             visual_target_gradient=gradient)
    for loss in (losses["z_loss"], rollout["rollout_loss"]):
        latents.grad = proprio.grad = None
        loss.backward()
        assert latents.grad[:, :n].abs().sum() > 0
        assert (latents.grad[:, n:].abs().sum() > 0) == gradient
        assert proprio.grad[:, n:].abs().sum() == 0  # a proprio embedding must not collapse onto its prediction


def _train_end_to_end(data, out, *overrides):
    return main(["train", "--config-name", "train_wall.yaml", f"dataset_path={data}", f"output_dir={out}",
                 "encoder_pretrain.steps=0", "model.train_encoder=true", "training.encoder_regularizer=sigreg",
                 "training.encoder_lr=3e-3", *TINY, *overrides])


def test_end_to_end_training_from_an_untrained_encoder(wall_data, tmp_path):
    out = tmp_path / "run"
    assert _train_end_to_end(wall_data, out, "training.steps=5", "training.sigreg_weight=2", "encoder_output_scale=3",
                             "training.rollout_steps=2") == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[0] == {"stage": "encoder", "step": 0, "pretrained": False}  # no pretraining, no scale folded
    steps = [e for e in log if e["stage"] == "world_model"]
    assert len(steps) == 5 and not any("train/encoder_anchor_loss" in e for e in steps)
    assert all(e["train/loss"] == pytest.approx(e["train/z_loss"] + e["train/decoder_recon_loss"]
                                                + 2 * e["train/sigreg_loss"] + e["train/rollout_loss"], rel=1e-5)
               for e in steps)
    model, cfg = load_world_model(out / "model")
    assert cfg["model"]["train_encoder"] is False and cfg["training"]["encoder_regularizer"] == "sigreg"
    untrained = load_file(str(out / "encoder" / "encoder.safetensors"))
    moved = [name for name, tensor in model.encoder.state_dict().items() if not torch.allclose(tensor, untrained[name])]
    assert moved  # the encoder was trained, from its initial weights


def test_sigreg_divides_out_the_folded_output_scale(wall_data, tmp_path):
    """`encoder_output_scale` sets the visual latent's weight in the planning cost; SIGReg must hold
    the encoder's own output, before that factor, to the unit Gaussian. Same seed, same batch and
    directions: the first step's SIGReg is the same at any scale."""
    first = {}
    for scale in ("1", "4"):
        out = tmp_path / scale
        assert _train_end_to_end(wall_data, out, "training.steps=1", f"encoder_output_scale={scale}") == 0
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        first[scale] = log[-1]["train/sigreg_loss"]
    assert first["4"] == pytest.approx(first["1"], rel=1e-4), first


@pytest.mark.parametrize("overrides, message", [
    (["training.encoder_regularizer=orthogonal"], "encoder_regularizer='orthogonal' is unknown; valid: anchor, sigreg"),
    (["training.sigreg_weight=-1"], "sigreg_weight"),
    (["model.train_encoder=false"], "needs model.train_encoder=true"),
    (["encoder_pretrain.steps=-2"], "steps >= 0"),
])


def test_bad_end_to_end_settings_get_one_line(wall_data, tmp_path, capsys, overrides, message):
    out = tmp_path / "run"
    assert _train_end_to_end(wall_data, out, *overrides) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()
