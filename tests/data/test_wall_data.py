"""Wall datasets: official layout fixture, generate -> load round trip, determinism, bad input."""

from __future__ import annotations

import argparse
import json
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch

from wmquant.data import generate_dataset, load_dataset
from wmquant.data import wall as wall_data
from wmquant.data.generate import MANIFEST_FILE
from wmquant.data.wall import WallDataset
from wmquant.envs.wall import WallBatchEnv, WallEnv
from wmquant.errors import ConfigError, DatasetError


def write_official_fixture(root: Path, episodes: int = 12, steps: int = 3, seed: int = 0) -> dict:
    """The official `wall_single` layout: float32 (T+1, 3, 224, 224) frames in [0, 255] per episode,
    states/actions (N, T, 2), door/wall locations (N, T, 1) stored as floats."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    (root / "obses").mkdir()
    states = torch.from_numpy(rng.uniform(5, 60, (episodes, steps, 2)).astype(np.float32))
    actions = torch.from_numpy(rng.normal(0, 0.5, (episodes, steps, 2)).astype(np.float32))
    walls = torch.from_numpy(rng.integers(20, 45, episodes).astype(np.float32))[:, None, None].repeat(1, steps, 1)
    doors = torch.from_numpy(rng.integers(10, 55, episodes).astype(np.float32))[:, None, None].repeat(1, steps, 1)
    torch.save(states, root / "states.pth")
    torch.save(actions, root / "actions.pth")
    torch.save(walls, root / "wall_locations.pth")
    torch.save(doors, root / "door_locations.pth")
    frames = []
    for i in range(episodes):
        episode_frames = torch.from_numpy(rng.uniform(0, 255, (steps + 1, 3, 224, 224)).astype(np.float32))
        torch.save(episode_frames, root / "obses" / f"episode_{i:03d}.pth")
        frames.append(episode_frames)
    return {"states": states, "actions": actions, "walls": walls, "doors": doors, "frames": frames}


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    root = tmp_path_factory.mktemp("official") / "wall_single"
    return root, write_official_fixture(root)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated") / "wall"
    stats = generate_dataset("wall", root, episodes=10, seed=3, steps=12, workers=1, progress=False)
    return root, stats


def test_official_layout_split_and_episodes(official):
    root, data = official
    order = torch.randperm(12, generator=torch.Generator().manual_seed(42)).tolist()
    train, val, every = (load_dataset("wall", root, split) for split in ("train", "val", "all"))
    assert train.episode_ids == order[:10] and val.episode_ids == order[10:]  # int(0.9 * 12) = 10
    assert len(train) == 10 and len(val) == 2 and every.episode_ids == list(range(12))
    assert load_dataset("wall", root, "valid").episode_ids == val.episode_ids
    episode = val.episode(1)
    file_index = order[11]
    assert episode.visual.dtype == torch.float32 and episode.visual.shape == (3, 3, 224, 224)
    assert torch.equal(episode.visual, data["frames"][file_index][:3])  # the (T+1)-th frame is never read
    assert torch.equal(episode.states, data["states"][file_index])
    assert torch.equal(episode.proprio, data["states"][file_index])
    assert torch.equal(episode.actions, data["actions"][file_index])
    assert episode.env_info == {
        "fix_door_location": int(data["doors"][file_index, 0, 0]),
        "fix_wall_location": int(data["walls"][file_index, 0, 0]),
    }
    env = WallEnv()
    env.update_env(episode.env_info)
    assert env.layout.wall_x == episode.env_info["fix_wall_location"]


def test_official_normalisation_is_computed_over_the_whole_dataset(official):
    root, data = official
    norm = load_dataset("wall", root, "val").normalization
    actions = data["actions"].reshape(-1, 2).double()
    states = data["states"].reshape(-1, 2).double()
    torch.testing.assert_close(norm.action_mean, actions.mean(0).float())
    torch.testing.assert_close(norm.action_std, actions.std(0, unbiased=True).float())
    torch.testing.assert_close(norm.proprio_mean, states.mean(0).float())
    torch.testing.assert_close(norm.proprio_std, states.std(0, unbiased=True).float())
    torch.testing.assert_close(norm.state_std, norm.proprio_std)
    raw = WallDataset(root, "all", normalize=False).normalization
    assert torch.equal(raw.action_mean, torch.zeros(2)) and torch.equal(raw.proprio_std, torch.ones(2))
    limited = WallDataset(root, "all", n_rollout=4)
    assert len(limited) == 4
    torch.testing.assert_close(limited.normalization.action_mean, data["actions"][:4].reshape(-1, 2).mean(0))


def test_generate_then_load_round_trip_replays_in_the_env(generated):
    root, stats = generated
    dataset = load_dataset("wall", root, "all")
    assert len(dataset) == 10 and dataset.traj_len == 12
    frames_on_disk = torch.load(root / "obses" / "episode_004.pth", weights_only=True)
    assert frames_on_disk.dtype == torch.uint8 and frames_on_disk.shape == (13, 3, 65, 65)
    env = WallBatchEnv(1)
    for index in range(len(dataset)):
        episode = dataset.episode(index)
        env.update_env([episode.env_info])
        obses, states = env.rollout(episode.states[:1].double().numpy(), episode.actions[None].double().numpy())
        # the stored float32 states and actions are what the env ran on: the replay is exact
        assert np.array_equal(states[0, :-1].astype(np.float32), episode.states.numpy())
        replayed = torch.from_numpy(obses["visual"][0]).permute(0, 3, 1, 2)
        assert torch.equal(replayed[:-1], episode.visual)
        if index == 4:
            assert torch.equal(replayed, frames_on_disk)


def test_generated_walks_follow_the_generator_distribution(tmp_path):
    root = tmp_path / "walk"
    stats = generate_dataset("wall", root, episodes=40, seed=1, steps=50, workers=1, progress=False)
    actions = torch.load(root / "actions.pth", weights_only=True).double()
    lengths = actions.norm(dim=-1)
    assert lengths.min() >= 0.2 - 1e-6 and lengths.max() <= 1.8 + 1e-6
    assert abs(lengths.mean().item() - 1.0) < 0.05  # truncation at +-2 sigma is symmetric
    headings = torch.atan2(actions[..., 1], actions[..., 0])
    turn_cos = torch.cos(headings[:, 1:] - headings[:, :-1]).mean().item()
    # von Mises(kappa = 5): E[cos] = I1(5) / I0(5) = 0.8934
    assert abs(turn_cos - 0.8934) < 0.02
    states = torch.load(root / "states.pth", weights_only=True)
    assert states.min() >= 4 and states.max() <= 60
    starts = states[:, 0]
    assert (starts[:, 0] < 29).any() and (starts[:, 0] > 35).any()  # starts on both sides
    assert 0 <= stats["door_crossing_fraction"] <= 1 and 0 < stats["collision_step_fraction"] < 1
    manifest = json.loads((root / MANIFEST_FILE).read_text())
    assert manifest["env"] == "wall" and manifest["episodes"] == 40 and manifest["seed"] == 1
    assert manifest["stats"]["collision_step_fraction"] == stats["collision_step_fraction"]


def test_generation_statistics_describe_the_files(generated, tmp_path):
    root, stats = generated
    actions = torch.load(root / "actions.pth", weights_only=True).reshape(-1, 2).double()
    states = torch.load(root / "states.pth", weights_only=True).reshape(-1, 2).double()
    assert stats["episodes"] == 10 and stats["steps_per_episode"] == 12 and stats["frames_per_episode"] == 13
    assert stats["frame_shape"] == [3, 65, 65] and stats["distinct_layouts"] == 1
    for name, values in (("action", actions), ("state", states)):
        np.testing.assert_allclose(stats[f"{name}_mean"], values.mean(0).tolist(), rtol=1e-12)
        np.testing.assert_allclose(stats[f"{name}_std"], values.std(0, unbiased=True).tolist(), rtol=1e-12)
    # one sample has no spread: std 1, as the loader's normalisation would use
    single = wall_data.generate_wall_dataset(tmp_path / "one", 1, 0, 1, 1, False)
    assert single["action_std"] == [1.0, 1.0] and single["state_std"] == [1.0, 1.0]
    one_action = torch.load(tmp_path / "one" / "actions.pth", weights_only=True)
    assert single["action_mean"] == one_action[0, 0].double().tolist()
    two = wall_data.generate_wall_dataset(tmp_path / "two", 1, 0, 2, 1, False)  # two samples: a spread
    two_actions = torch.load(tmp_path / "two" / "actions.pth", weights_only=True)[0].double()
    two_states = torch.load(tmp_path / "two" / "states.pth", weights_only=True)[0].double()
    np.testing.assert_allclose(two["action_std"], two_actions.std(0).tolist(), rtol=1e-12)
    np.testing.assert_allclose(two["state_std"], two_states.std(0).tolist(), rtol=1e-12)


def test_collision_and_crossing_statistics_match_a_replay(generated):
    root, stats = generated
    dataset = load_dataset("wall", root, "all")
    collisions = crossings = 0
    for index in range(len(dataset)):
        episode = dataset.episode(index)
        env = WallBatchEnv(1)
        env.update_env([episode.env_info])
        env.reset_to(episode.states[:1].double().numpy())
        xs = [episode.states[0, 0].item()]
        for action in episode.actions.double().numpy():
            _, state = env.step(action[None])
            collisions += int(env.collided[0])
            xs.append(state[0, 0])
        wall_x = episode.env_info["fix_wall_location"]
        crossings += min(xs) < wall_x - 3 and max(xs) > wall_x + 3
    assert stats["collision_step_fraction"] == pytest.approx(collisions / (10 * 12))
    assert stats["door_crossing_fraction"] == pytest.approx(crossings / 10)


def test_generation_is_deterministic_whatever_the_worker_count(tmp_path, monkeypatch):
    monkeypatch.setattr(wall_data, "CHUNK_EPISODES", 4)  # several chunks from a small dataset
    kwargs = dict(episodes=9, seed=5, steps=6, progress=False)
    generate_dataset("wall", tmp_path / "a", workers=1, **kwargs)
    generate_dataset("wall", tmp_path / "b", workers=1, **kwargs)
    generate_dataset("wall", tmp_path / "c", episodes=9, seed=6, steps=6, workers=1, progress=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 9 + 4 + 1
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "actions.pth").read_bytes() != (tmp_path / "c" / "actions.pth").read_bytes()
    # the first episodes do not depend on how many episodes are generated in total
    fewer = tmp_path / "d"
    generate_dataset("wall", fewer, episodes=5, seed=5, steps=6, workers=1, progress=False)
    a = torch.load(tmp_path / "a" / "actions.pth", weights_only=True)
    assert torch.equal(torch.load(fewer / "actions.pth", weights_only=True), a[:5])


def test_generation_with_worker_processes_matches_in_process(tmp_path, monkeypatch):
    # two chunks of the real chunk size, run in 2 spawned workers
    pools = []

    def recorded_pool(*args, **kwargs):
        pools.append(kwargs["max_workers"])
        return real_pool(*args, **kwargs)

    real_pool = wall_data.ProcessPoolExecutor
    monkeypatch.setattr(wall_data, "ProcessPoolExecutor", recorded_pool)
    episodes = wall_data.CHUNK_EPISODES + 3
    generate_dataset("wall", tmp_path / "one", episodes=episodes, seed=2, steps=2, workers=1, progress=False)
    assert pools == []
    generate_dataset("wall", tmp_path / "two", episodes=episodes, seed=2, steps=2, workers=3, progress=False)
    assert pools == [2]  # no more workers than chunks
    for name in ("states.pth", "actions.pth", "obses/episode_066.pth"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_one_chunk_is_generated_in_process_whatever_the_worker_count(tmp_path, monkeypatch):
    def no_pool(*args, **kwargs):
        raise AssertionError("a single chunk started worker processes")

    monkeypatch.setattr(wall_data, "ProcessPoolExecutor", no_pool)
    generate_dataset("wall", tmp_path / "w", episodes=3, seed=0, steps=2, workers=4, progress=False)
    assert len(load_dataset("wall", tmp_path / "w", "all")) == 3


class InProcessPool:
    """A stand-in for ProcessPoolExecutor that runs each chunk when it is submitted and records how
    it is shut down: the pool path's logic without spawning processes."""

    instances: list["InProcessPool"] = []

    def __init__(self, max_workers, mp_context):
        self.max_workers, self.shutdowns = max_workers, []
        InProcessPool.instances.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown(wait=True)

    def submit(self, fn, *args):
        future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        self.shutdowns.append((wait, cancel_futures))


@pytest.fixture
def in_process_pool(monkeypatch):
    InProcessPool.instances = []
    monkeypatch.setattr(wall_data, "ProcessPoolExecutor", InProcessPool)
    monkeypatch.setattr(wall_data, "CHUNK_EPISODES", 2)
    return InProcessPool.instances


@pytest.mark.parametrize("workers", [1, 3])
def test_the_progress_bar_counts_episodes(tmp_path, capsys, in_process_pool, workers):
    generate_dataset("wall", tmp_path / "w", episodes=5, seed=0, steps=2, workers=workers, progress=True)
    err = capsys.readouterr().err
    assert "wall episodes" in err and "5/5" in err
    assert [pool.max_workers for pool in in_process_pool] == ([] if workers == 1 else [3])


def test_a_failed_chunk_cancels_the_chunks_not_yet_started(tmp_path, in_process_pool, monkeypatch):
    real_chunk = wall_data._generate_chunk

    def fail_on_second_chunk(out_dir, settings, episodes):
        if episodes.start > 0:
            raise RuntimeError("disk full")
        return real_chunk(out_dir, settings, episodes)

    monkeypatch.setattr(wall_data, "_generate_chunk", fail_on_second_chunk)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_dataset("wall", tmp_path / "out", 6, 0, steps=2, workers=2, progress=False)
    assert in_process_pool[0].shutdowns[0] == (True, True)
    assert list(tmp_path.iterdir()) == []


def test_the_generator_called_directly(tmp_path):
    """`generate_wall_dataset` on its own (as `generate_dataset` calls it): a str path, a directory
    not made yet, the default 50 steps, and the layout files in upstream's (N, T, 1) shape."""
    out = tmp_path / "new" / "wall"
    stats = wall_data.generate_wall_dataset(str(out), 2, 0, None, 1, False)
    assert stats["steps_per_episode"] == 50 and stats["frames_per_episode"] == 51
    assert torch.load(out / "actions.pth", weights_only=True).shape == (2, 50, 2)
    for name in ("door_locations.pth", "wall_locations.pth"):
        assert torch.load(out / name, weights_only=True).shape == (2, 50, 1)
    assert load_dataset("wall", out, "all").env_info(1) == {"fix_door_location": 30, "fix_wall_location": 32}
    again = tmp_path / "empty"
    (again / "obses").mkdir(parents=True)  # an existing, empty layout
    wall_data.generate_wall_dataset(again, 1, 0, 3, 1, False)
    assert len(load_dataset("wall", again, "all")) == 1


@pytest.mark.parametrize("name, value", [("episodes", 0), ("steps", 0), ("workers", 0), ("seed", -1)])
def test_the_generator_called_directly_refuses_bad_counts(tmp_path, name, value):
    arguments = dict(out_dir=tmp_path / "w", episodes=1, seed=0, steps=2, workers=1, progress=False)
    arguments[name] = value
    with pytest.raises(ConfigError, match=rf"{name} must be a (positive|non-negative) integer, got {value}"):
        wall_data.generate_wall_dataset(**arguments)
    assert not (tmp_path / "w").exists()


def test_random_layouts(tmp_path):
    generate_dataset("wall", tmp_path / "r", 6, 0, steps=3, workers=1, progress=False, random_layouts=True)
    dataset = load_dataset("wall", tmp_path / "r", "all")
    layouts = {tuple(dataset.env_info(i).values()) for i in range(6)}
    assert len(layouts) > 1
    for door, wall in layouts:
        assert 20 <= wall < 45 and 10 <= door < 55


# --------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(env_name="maze"), "valid envs"),
        (dict(episodes=0), "--episodes"),
        (dict(episodes=-3), "--episodes"),
        (dict(episodes=True), "--episodes"),
        (dict(episodes="4"), "--episodes"),
        (dict(seed=-1), "--seed"),
        (dict(steps=0), "--steps"),
        (dict(workers=0), "workers"),
        (dict(wall_x=70), "wall x"),
    ],
)
def test_generate_rejects_bad_arguments_and_writes_nothing(tmp_path, kwargs, match):
    arguments = dict(env_name="wall", out_dir=tmp_path / "out", episodes=2, seed=0, steps=2, workers=1, progress=False)
    arguments.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        generate_dataset(**arguments)
    assert list(tmp_path.iterdir()) == []


def test_generate_refuses_an_existing_directory(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        generate_dataset("wall", tmp_path / "out", 2, 0, steps=2, workers=1, progress=False)


def test_failed_generation_leaves_no_partial_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(wall_data, "CHUNK_EPISODES", 2)
    real_chunk = wall_data._generate_chunk

    def fail_on_second_chunk(out_dir, settings, episodes):
        if episodes.start > 0:
            raise RuntimeError("disk full")
        return real_chunk(out_dir, settings, episodes)

    monkeypatch.setattr(wall_data, "_generate_chunk", fail_on_second_chunk)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_dataset("wall", tmp_path / "out", 4, 0, steps=2, workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_missing_directory(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "nope")):
        load_dataset("wall", tmp_path / "nope")


def test_unknown_split_and_env(official):
    root, _ = official
    with pytest.raises(ConfigError, match="split"):
        load_dataset("wall", root, "test")
    with pytest.raises(ConfigError, match="valid envs"):
        load_dataset("maze", root)


def copy_dataset(src: Path, dst: Path) -> Path:
    dst.mkdir()
    (dst / "obses").mkdir()
    for path in src.rglob("*.pth"):
        (dst / path.relative_to(src)).write_bytes(path.read_bytes())
    return dst


def test_corrupt_episode_file_names_the_file(generated, tmp_path):
    root = copy_dataset(generated[0], tmp_path / "copy")
    bad = root / "obses" / "episode_002.pth"
    bad.write_bytes(b"not a tensor file" * 10)
    dataset = load_dataset("wall", root, "all")
    with pytest.raises(DatasetError, match="episode_002.pth"):
        dataset.episode(2)


def test_truncated_tensor_file(generated, tmp_path):
    root = copy_dataset(generated[0], tmp_path / "copy")
    data = (root / "actions.pth").read_bytes()
    (root / "actions.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="actions.pth"):
        load_dataset("wall", root)


def test_non_tensor_content_is_refused(generated, tmp_path):
    root = copy_dataset(generated[0], tmp_path / "copy")
    torch.save({"states": torch.zeros(3)}, root / "states.pth")
    with pytest.raises(DatasetError, match="states.pth holds a dict"):
        load_dataset("wall", root)


def test_a_pickled_object_is_not_unpickled(generated, tmp_path):
    """Tensor files are read with weights_only=True: a pickle of an arbitrary class is refused as
    unreadable before any of its code could run, not loaded and then found not to be a tensor."""
    root = copy_dataset(generated[0], tmp_path / "copy")
    torch.save(argparse.Namespace(states=torch.zeros(3)), root / "states.pth")
    with pytest.raises(DatasetError, match=r"cannot read .*states.pth as a tensor file \(UnpicklingError"):
        load_dataset("wall", root)


@pytest.mark.parametrize(
    "name, tensor, match",
    [
        ("actions.pth", torch.zeros(10, 11, 2), "states.pth .* and actions.pth"),
        ("states.pth", torch.zeros(10, 12), "states.pth"),
        ("door_locations.pth", torch.zeros(7, 12, 1), "door_locations.pth"),
        ("wall_locations.pth", torch.full((10, 12, 1), 32.5), "wall_locations.pth holds non-integer"),
    ],
)
def test_inconsistent_shapes(generated, tmp_path, name, tensor, match):
    root = copy_dataset(generated[0], tmp_path / "copy")
    torch.save(tensor, root / name)
    with pytest.raises(DatasetError, match=match):
        load_dataset("wall", root)


@pytest.mark.parametrize("shape", [(10,), (10, 12), (10, 12, 1), (10, 1, 1)])
def test_layout_files_of_any_episode_leading_shape_give_frame_0(generated, tmp_path, shape):
    """Door and wall files hold one value per frame (N, T, 1) upstream; (N, T) and (N,) mean the
    same, and only frame 0 is read."""
    root = copy_dataset(generated[0], tmp_path / "copy")
    walls = torch.arange(20, 30, dtype=torch.float32)  # episode i's wall at 20 + i
    values = walls.reshape(10, *([1] * (len(shape) - 1))).expand(shape).clone()
    if len(shape) > 1 and shape[1] > 1:
        values[:, 1:] = 50  # later frames are not read
    torch.save(values, root / "wall_locations.pth")
    dataset = load_dataset("wall", root, "all")
    assert [dataset.env_info(i)["fix_wall_location"] for i in range(10)] == list(range(20, 30))


@pytest.mark.parametrize("shape", [(), (10, 0, 1), (10, 0)])
def test_layout_files_without_a_value_per_episode_are_refused(generated, tmp_path, shape):
    root = copy_dataset(generated[0], tmp_path / "copy")
    torch.save(torch.zeros(shape), root / "door_locations.pth")
    with pytest.raises(DatasetError, match=r"door_locations.pth has shape .*; expected \(10, T, 1\)"):
        load_dataset("wall", root)


@pytest.mark.parametrize("shape", [(0, 12, 2), (10, 0, 2)])
def test_no_episodes_or_no_steps(generated, tmp_path, shape):
    root = copy_dataset(generated[0], tmp_path / "copy")
    torch.save(torch.zeros(shape), root / "states.pth")
    torch.save(torch.zeros(shape), root / "actions.pth")
    with pytest.raises(DatasetError, match=rf"states.pth has shape \({shape[0]}, {shape[1]}, 2\), no steps to read"):
        load_dataset("wall", root)


def test_a_constant_dimension_is_normalised_by_1_not_0(generated, tmp_path):
    root = copy_dataset(generated[0], tmp_path / "copy")
    states = torch.load(root / "states.pth", weights_only=True)
    states[..., 1] = 7.0  # the dot never moves vertically
    torch.save(states, root / "states.pth")
    norm = load_dataset("wall", root, "all").normalization
    assert norm.proprio_mean[1].item() == 7.0 and norm.proprio_std[1].item() == 1.0
    assert norm.proprio_std[0].item() == pytest.approx(states[..., 0].double().std().item(), rel=1e-6)
    assert torch.equal(norm.state_std, norm.proprio_std)
    one_step = WallDataset(root, "all", n_rollout=1)  # one episode, but still 12 samples
    assert one_step.normalization.proprio_std[1].item() == 1.0 and len(one_step) == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(split_ratio=0.0), "split_ratio must lie strictly between 0 and 1, got 0.0"),
    (dict(split_ratio=1.0), "split_ratio must lie strictly between 0 and 1, got 1.0"),
    (dict(split_ratio=1.5), "split_ratio must lie strictly between 0 and 1, got 1.5"),
    (dict(n_rollout=0), "n_rollout must be a positive integer or None, got 0"),
    (dict(n_rollout=-2), "n_rollout must be a positive integer or None, got -2"),
    (dict(n_rollout=True), "n_rollout must be a positive integer or None, got True"),
])


def test_bad_split_ratio_or_rollout_count(generated, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        WallDataset(generated[0], "all", **kwargs)


def test_split_ratio_seed_and_one_rollout(generated):
    root, _ = generated
    for ratio, seed in ((0.5, 42), (0.3, 7)):
        order = torch.randperm(10, generator=torch.Generator().manual_seed(seed)).tolist()
        train = WallDataset(root, "train", split_ratio=ratio, split_seed=seed)
        val = WallDataset(root, "valid", split_ratio=ratio, split_seed=seed)
        assert train.episode_ids == order[: int(ratio * 10)] and val.episode_ids == order[int(ratio * 10):]
        assert train.split == "train" and val.split == "val"
    assert WallDataset(root, "all", n_rollout=1).episode_ids == [0]
    assert len(WallDataset(root, "all", n_rollout=50)) == 10  # more than there are: all of them


def test_missing_or_short_episode_frames(generated, tmp_path):
    root = copy_dataset(generated[0], tmp_path / "copy")
    (root / "obses" / "episode_007.pth").unlink()
    with pytest.raises(DatasetError, match="episode_007.pth"):
        load_dataset("wall", root)
    root = copy_dataset(generated[0], tmp_path / "copy2")
    torch.save(torch.zeros(5, 3, 65, 65, dtype=torch.uint8), root / "obses" / "episode_001.pth")
    with pytest.raises(DatasetError, match=r"episode_001.pth has shape \(5, 3, 65, 65\)"):
        load_dataset("wall", root, "all").episode(1)
    # T frames (no (T+1)-th, which is never read) are enough
    torch.save(torch.full((12, 3, 65, 65), 9, dtype=torch.uint8), root / "obses" / "episode_001.pth")
    assert torch.equal(load_dataset("wall", root, "all").episode(1).visual, torch.full((12, 3, 65, 65), 9, dtype=torch.uint8))
