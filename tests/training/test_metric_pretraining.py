"""The encoder's temporal-metric pretraining, called directly: the pair sampler, the latent distance, the
state displacement, the loss of the module docstring step by step, and the unit-variance scale.

The loop is checked against a reference written here from the docstring's formula: a plain SGD
optimizer makes every parameter update equal to the learning rate times the (clipped) gradient, so
any change to the loss, the schedule, the clipping or the order of the steps moves the weights."""

from __future__ import annotations

import math

import pytest
import torch

from wmquant.data.transforms import to_model_input
from wmquant.errors import ConfigError
from wmquant.training.batches import EpisodeTensors
from wmquant.training.encoder import (MetricPretrainConfig, StateReadout, latent_distance, pretrain_metric_encoder,
                                      sample_pairs, state_displacement, unit_variance_scale)
from wmquant.training.state import cosine_lr


class _MeanEncoder(torch.nn.Module):
    """Two tokens (top and bottom half of an 8x8 frame), each a linear map of its half's channel means."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Linear(3, 4)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(4, 3, generator=generator))
            self.proj.bias.copy_(torch.randn(4, generator=generator))
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        halves = torch.stack([x[..., :4, :].mean((-2, -1)), x[..., 4:, :].mean((-2, -1))], dim=1)
        return self.proj(halves)


def _episodes(lengths: list[int], states: int = 3, seed: int = 0, longest: int | None = None) -> EpisodeTensors:
    """Episodes of random 8x8 frames and random states; padding (after each length) is all 255 and 1e3."""
    generator = torch.Generator().manual_seed(seed)
    longest = longest or max(lengths)
    visual = torch.randint(0, 200, (len(lengths), longest, 3, 8, 8), generator=generator).to(torch.uint8)
    state = torch.randn(len(lengths), longest, states, generator=generator) * 2.0
    for i, length in enumerate(lengths):
        visual[i, length:] = 255
        state[i, length:] = 1e3
    n = len(lengths)
    return EpisodeTensors(visual, torch.zeros(n, longest, 2), torch.zeros(n, longest, 2), state, torch.tensor(lengths))


def _config(**overrides) -> MetricPretrainConfig:
    settings = dict(steps=6, batch_size=8, lr=0.05, warmup_fraction=0.34, grad_clip=0.0, max_gap=3,
                    target_scale=2.0, state_weights=(1.0, 0.5), angle_dims=(), push_margin=3.0,
                    push_weight=(0.4, 0.1), amp_bf16=False, seed=5)
    settings.update(overrides)
    return MetricPretrainConfig(**settings)


def _to_input(frames: torch.Tensor) -> torch.Tensor:
    """What the encoder sees: to_model_input at the frames' own size (uint8 -> [-1, 1])."""
    return to_model_input(frames, frames.shape[-1])


def _reference(encoder: torch.nn.Module, episodes: EpisodeTensors, config: MetricPretrainConfig, start_step: int = 0,
               readout: StateReadout | None = None) -> list[dict[str, float]]:
    """The docstring's objective with SGD, written out; returns each step's loss, mean d and mean delta."""
    params = list(encoder.parameters()) + (list(readout.parameters()) if readout is not None else [])
    generator = torch.Generator().manual_seed(config.seed + start_step)
    weights = torch.zeros(episodes.states.shape[-1])
    weights[:len(config.state_weights)] = torch.tensor(list(config.state_weights))
    warmup = int(config.warmup_fraction * config.steps)
    losses = []
    for step in range(start_step, config.steps):
        e, t, k = sample_pairs(episodes, config.batch_size, config.max_gap, generator)
        z1 = encoder(_to_input(episodes.visual[e, t]))
        z2 = encoder(_to_input(episodes.visual[e, t + k]))
        # (+1e-8: a negative can be the pair's own frame, whose distance 0 has no finite gradient)
        d = (((z1 - z2) ** 2).sum(-1).mean(-1) + 1e-8).sqrt()
        if config.target == "state":
            diff = episodes.states[e, t + k] - episodes.states[e, t]
            for dim in config.angle_dims:
                diff[:, dim] = (diff[:, dim] + math.pi) % (2 * math.pi) - math.pi
            delta = (diff * weights).norm(dim=-1) / config.target_scale
        else:
            delta = k.float() / config.target_scale
        previous = torch.arange(len(e)).roll(1)
        d_neg = (((z1 - z2[previous]) ** 2).sum(-1).mean(-1) + 1e-8).sqrt()
        other = e != e[previous]
        push = torch.relu(config.push_margin - d_neg)[other].mean() if other.any() else torch.zeros(())
        fraction = step / max(1, config.steps - 1)
        loss = ((d - delta) ** 2).mean() + (config.push_weight[0] * (1 - fraction)
                                            + config.push_weight[1] * fraction) * push
        if readout is not None:
            loss = loss + config.state_readout_weight * readout.loss(
                torch.cat([z1, z2]), torch.cat([episodes.states[e, t], episodes.states[e, t + k]]))
        grads = torch.autograd.grad(loss, params)
        scale = 1.0
        if config.grad_clip:
            norm = torch.cat([g.flatten() for g in grads]).norm()
            scale = min(1.0, config.grad_clip / (norm.item() + 1e-6))
        lr = cosine_lr(step, config.steps, warmup, config.lr)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * scale * g
        losses.append({"loss": loss.item(), "mean_d": d.mean().item(), "mean_delta": delta.mean().item()})
    return losses


def _sgd(encoder: torch.nn.Module, readout: StateReadout | None = None) -> torch.optim.SGD:
    params = list(encoder.parameters()) + (list(readout.parameters()) if readout is not None else [])
    return torch.optim.SGD(params, lr=1.0)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-6), (name, (x - y).abs().max().item())


def _run(config: MetricPretrainConfig, episodes: EpisodeTensors, **kwargs):
    trained, reference = _MeanEncoder(), _MeanEncoder()
    log: list[dict] = []
    pretrain_metric_encoder(trained, episodes, 8, config, log=log.append, progress=False,
                            optimizer=_sgd(trained), **kwargs)
    losses = _reference(reference, episodes, config, start_step=kwargs.get("start_step", 0))
    return trained, reference, log, losses


# ---------------------------------------------------------------- the pieces


def test_latent_distance_is_the_root_of_the_token_mean_of_each_tokens_squared_distance():
    z1 = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]])
    z2 = torch.tensor([[[3.0, 4.0], [1.0, 1.0], [0.0, 2.0]]])  # per token: 25, 0, 4
    assert latent_distance(z1, z2).item() == pytest.approx(math.sqrt(29 / 3), rel=1e-6)
    assert latent_distance(z2, z1).item() == pytest.approx(math.sqrt(29 / 3), rel=1e-6)
    batch = torch.randn(5, 4, 3), torch.randn(5, 4, 3)
    expected = torch.stack([latent_distance(batch[0][i:i + 1], batch[1][i:i + 1])[0] for i in range(5)])
    assert latent_distance(*batch).shape == (5,) and torch.allclose(latent_distance(*batch), expected)


def test_latent_distance_has_a_finite_gradient_where_the_latents_coincide():
    z = torch.randn(2, 3, 4, requires_grad=True)
    latent_distance(z, z.detach().clone()).sum().backward()
    assert torch.isfinite(z.grad).all()
    assert latent_distance(z, z).max().item() < 1e-3


def test_state_displacement_weights_each_dim_and_wraps_angles():
    s1 = torch.tensor([[0.0, 0.0, 3.0], [1.0, 1.0, -3.0]])
    s2 = torch.tensor([[3.0, 8.0, -3.0], [1.0, 1.0, 3.0]])
    weights = torch.tensor([1.0, 0.5, 1.0])
    wrapped = 2 * math.pi - 6.0  # 3 -> -3 is a turn of 2pi - 6, not of 6
    out = state_displacement(s1, s2, weights, [2])
    assert out[0].item() == pytest.approx(math.sqrt(9 + 16 + wrapped ** 2), rel=1e-5)
    assert out[1].item() == pytest.approx(wrapped, rel=1e-5)
    unwrapped = state_displacement(s1, s2, weights, [])
    assert unwrapped[1].item() == pytest.approx(6.0, rel=1e-6)
    assert torch.equal(s1, torch.tensor([[0.0, 0.0, 3.0], [1.0, 1.0, -3.0]]))  # the inputs stay as they were


def test_pairs_lie_within_their_episode_with_every_gap_up_to_max_gap():
    episodes = _episodes([1, 4, 12, 30, 2])
    generator = torch.Generator().manual_seed(0)
    e, t, k = sample_pairs(episodes, 20000, 5, generator)
    lengths = episodes.lengths[e]
    assert (e != 0).all(), "an episode of one step has no pair"
    assert set(e.tolist()) == {1, 2, 3, 4}  # two steps make one pair
    assert set(zip(t[e == 4].tolist(), k[e == 4].tolist())) == {(0, 1)}
    assert ((k >= 1) & (t >= 0) & (t + k < lengths)).all()
    assert set(k[e == 3].tolist()) == {1, 2, 3, 4, 5} and set(k[e == 1].tolist()) == {1, 2, 3}
    # every start that leaves room for the gap is drawn, and episodes come uniformly
    assert set(t[(e == 3) & (k == 5)].tolist()) == set(range(25))
    counts = torch.bincount(e, minlength=5)[1:].float() / len(e)
    assert torch.allclose(counts, torch.full((4,), 1 / 4), atol=0.02)
    gaps = torch.bincount(k[e == 3], minlength=6)[1:].float() / int((e == 3).sum())
    assert torch.allclose(gaps, torch.full((5,), 0.2), atol=0.03)


def test_pairs_depend_on_the_generator_alone():
    episodes = _episodes([6, 9])
    first = sample_pairs(episodes, 50, 3, torch.Generator().manual_seed(4))
    again = sample_pairs(episodes, 50, 3, torch.Generator().manual_seed(4))
    other = sample_pairs(episodes, 50, 3, torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize("settings, message", [
    (dict(target="pixels"), "unknown encoder pretraining target 'pixels'"),
    (dict(max_gap=0), "max_gap >= 1"),
    (dict(steps=-1), "steps >= 0"),
    (dict(batch_size=1), "batch_size >= 2"),
])
def test_the_config_refuses_bad_settings(settings, message):
    with pytest.raises(ConfigError, match=message):
        MetricPretrainConfig(**settings)


def test_the_smallest_valid_settings_are_accepted():
    config = MetricPretrainConfig(target="time", max_gap=1, steps=0, batch_size=2, state_readout_weight=0.0)
    encoder = _MeanEncoder()
    before = [p.clone() for p in encoder.parameters()]
    pretrain_metric_encoder(encoder, _episodes([5]), 8, config, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.parameters())) and not encoder.training


# ---------------------------------------------------------------- the loop against the reference


def test_each_step_follows_the_docstrings_objective_with_warmup_cosine_and_annealed_push():
    config = _config()
    trained, reference, log, losses = _run(config, _episodes([9, 12, 7, 10]))
    _assert_same_weights(trained, reference)
    assert [entry["step"] for entry in log] == [0, 5]
    for logged, expected in ((log[0], losses[0]), (log[1], losses[-1])):
        assert {key: logged[key] for key in expected} == pytest.approx(expected, rel=1e-5)
    assert log[0]["lr"] == pytest.approx(cosine_lr(0, 6, 2, 0.05))
    assert log[1]["lr"] == pytest.approx(cosine_lr(5, 6, 2, 0.05))
    last = log[-1]
    assert last["loss"] == pytest.approx(last["pull"] + 0.1 * last["push"], rel=1e-5) and last["push"] > 0


def test_a_later_start_step_reseeds_the_pairs_and_weighs_the_push_by_its_own_step():
    config = _config(steps=7)
    trained, reference, log, losses = _run(config, _episodes([9, 12, 7, 10]), start_step=3)
    _assert_same_weights(trained, reference)
    assert [entry["step"] for entry in log] == [6] and log[0]["loss"] == pytest.approx(losses[-1]["loss"], rel=1e-5)


def test_two_steps_go_from_the_first_push_weight_to_the_last():
    trained, reference, log, _ = _run(_config(steps=2, warmup_fraction=0.0), _episodes([9, 12, 7, 10]))
    _assert_same_weights(trained, reference)
    assert log[-1]["loss"] == pytest.approx(log[-1]["pull"] + 0.1 * log[-1]["push"], rel=1e-5)
    assert log[-1]["push"] > 0


def test_gradients_are_clipped_to_the_configured_norm():
    config = _config(grad_clip=0.05, lr=0.5)
    trained, reference, _, _ = _run(config, _episodes([9, 12, 7, 10]))
    _assert_same_weights(trained, reference)
    unclipped, _, _, _ = _run(_config(lr=0.5), _episodes([9, 12, 7, 10]))
    assert not torch.allclose(trained.proj.weight, unclipped.proj.weight)


def test_the_time_target_is_the_gap_over_the_target_scale():
    trained, reference, log, _ = _run(_config(target="time", target_scale=4.0), _episodes([9, 12, 7, 10]))
    _assert_same_weights(trained, reference)
    assert 0.25 <= log[0]["mean_delta"] <= 0.75  # gaps of 1..3 over 4


def test_angles_are_wrapped_and_the_states_unweighted_dims_are_ignored():
    episodes = _episodes([9, 12, 7, 10])
    episodes.states[..., 2] = torch.remainder(episodes.states[..., 2] * 3, 2 * math.pi)
    trained, reference, _, _ = _run(_config(state_weights=(1.0, 0.5, 2.0), angle_dims=(2,)), episodes)
    _assert_same_weights(trained, reference)
    # weights shorter than the state: the rest of its dims count for nothing
    ignored = _episodes([9, 12, 7, 10])
    ignored.states[..., 2] = torch.randn(ignored.states.shape[:2]) * 100
    plain, _, _, _ = _run(_config(), _episodes([9, 12, 7, 10]))
    noisy, _, _, _ = _run(_config(), ignored)
    _assert_same_weights(plain, noisy)
    with pytest.raises(ConfigError, match="state_weights has 4 entries but states have 3 dims"):
        _run(_config(state_weights=(1.0, 1.0, 1.0, 1.0)), episodes)


def test_one_episode_gives_no_negatives_and_no_push():
    trained, reference, log, _ = _run(_config(), _episodes([15]))
    _assert_same_weights(trained, reference)
    assert all(entry["push"] == 0 for entry in log)
    assert log[0]["loss"] == pytest.approx(log[0]["pull"], rel=1e-6)


def test_pairs_of_the_same_episode_are_not_pushed_apart():
    # two episodes: about half the neighbours in the batch share an episode, and only the others push
    trained, reference, _, _ = _run(_config(batch_size=16, push_margin=50.0), _episodes([10, 10]))
    _assert_same_weights(trained, reference)


def test_bf16_autocast_is_for_cuda_only_and_leaves_a_cpu_run_in_float32():
    episodes = _episodes([9, 12, 7, 10])
    bf16, _, _, _ = _run(_config(amp_bf16=True), episodes)
    fp32, _, _, _ = _run(_config(amp_bf16=False), episodes)
    _assert_same_weights(bf16, fp32)


def test_the_encoder_trains_in_train_mode_and_ends_in_eval_mode():
    encoder = _MeanEncoder()
    encoder.eval()
    pretrain_metric_encoder(encoder, _episodes([9, 12]), 8, _config(steps=2), progress=False)
    assert encoder.modes == [True, True] and not encoder.training


def test_the_default_optimizer_is_adamw_with_the_configs_settings_and_is_returned():
    encoder = _MeanEncoder()
    config = _config(steps=1, betas=(0.8, 0.9), weight_decay=0.3)
    optimizer = pretrain_metric_encoder(encoder, _episodes([9, 12]), 8, config, progress=False)
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert group["betas"] == (0.8, 0.9) and group["weight_decay"] == 0.3
    assert len(group["params"]) == 2 and all(a is b for a, b in zip(group["params"], encoder.parameters()))
    given = _sgd(_MeanEncoder())
    assert pretrain_metric_encoder(_MeanEncoder(), _episodes([9, 12]), 8, config, progress=False,
                                   optimizer=given) is given


def test_checkpoints_come_every_n_steps_but_not_at_the_end():
    saved = []
    pretrain_metric_encoder(_MeanEncoder(), _episodes([9, 12]), 8, _config(steps=7), progress=False,
                            checkpoint=lambda step, optimizer: saved.append((step, type(optimizer))),
                            checkpoint_every=3)
    assert saved == [(3, torch.optim.AdamW), (6, torch.optim.AdamW)]
    none = []
    pretrain_metric_encoder(_MeanEncoder(), _episodes([9, 12]), 8, _config(steps=3), progress=False,
                            checkpoint=lambda step, optimizer: none.append(step), checkpoint_every=0)
    assert none == []


def test_the_log_comes_every_50_steps_and_at_the_last():
    log = []
    pretrain_metric_encoder(_MeanEncoder(), _episodes([9, 12]), 8, _config(steps=102, batch_size=2), progress=False,
                            log=log.append)
    assert [entry["step"] for entry in log] == [0, 50, 100, 101]
    assert set(log[0]) == {"step", "loss", "pull", "push", "lr", "mean_d", "mean_delta"}


def test_the_readout_is_trained_and_clipped_with_the_encoder():
    episodes = _episodes([9, 12, 7, 10])
    config = _config(state_readout_weight=0.7, grad_clip=0.2)
    trained, reference = _MeanEncoder(), _MeanEncoder()
    torch.manual_seed(3)
    readout = StateReadout(8, episodes, angle_dims=[])
    reference_readout = StateReadout(8, episodes, angle_dims=[])
    reference_readout.load_state_dict(readout.state_dict())
    initial = readout.linear.weight.clone()
    log = []
    pretrain_metric_encoder(trained, episodes, 8, config, log=log.append, progress=False, readout=readout,
                            optimizer=_sgd(trained, readout))
    _reference(reference, episodes, config, readout=reference_readout)
    _assert_same_weights(trained, reference)
    _assert_same_weights(readout, reference_readout)
    assert not torch.equal(initial, readout.linear.weight)
    assert log[-1]["loss"] == pytest.approx(log[-1]["pull"] + 0.1 * log[-1]["push"] + 0.7 * log[-1]["readout"],
                                            rel=1e-5)


def test_a_zero_readout_weight_leaves_a_given_readout_out():
    episodes = _episodes([9, 12])
    readout = StateReadout(8, episodes, angle_dims=[])
    initial = readout.linear.weight.clone()
    log = []
    pretrain_metric_encoder(_MeanEncoder(), episodes, 8, _config(steps=2), log=log.append, progress=False,
                            readout=readout)
    assert torch.equal(initial, readout.linear.weight) and "readout" not in log[0]


# ---------------------------------------------------------------- the scale after pretraining


class _OffsetTokens(_MeanEncoder):
    """Tokens 5 apart: their spread over the tokens of one frame is no part of the latents' variance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + torch.tensor([[0.0], [5.0]])


def test_the_unit_variance_scale_gives_the_latents_unit_variance_over_the_valid_frames():
    episodes = _episodes([40, 25, 60], longest=80)  # padding frames (255) would blow up the variance
    episodes.visual[0, :40] //= 4  # a darker first episode: leaving it out would shrink the variance
    encoder = _OffsetTokens().eval()
    valid = torch.cat([episodes.visual[i, :n] for i, n in enumerate(episodes.lengths.tolist())])
    with torch.no_grad():
        z = encoder(_to_input(valid))
    expected = 1 / math.sqrt(z.var(dim=0).mean().item())
    scale = unit_variance_scale(encoder, episodes, 8, frames=1500)  # 3 chunks of 512 frames
    assert scale == pytest.approx(expected, rel=0.08)
    assert unit_variance_scale(encoder, episodes, 8, frames=1500) == scale  # seeded
    assert unit_variance_scale(encoder, episodes, 8, frames=1500, seed=1) != scale
    assert math.isfinite(unit_variance_scale(encoder, episodes, 8, frames=2))  # both frames count


def test_the_unit_variance_scale_of_a_constant_encoder_is_finite():
    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.ones(x.shape[0], 2, 3)

    assert math.isfinite(unit_variance_scale(Constant(), _episodes([5, 6]), 8, frames=10))
