"""PushT data: the official `pusht_noise` layout (fixture written here, incl. lossy MP4), the generator's
round trip and determinism, the scripted policy's statistics, and bad inputs."""

from __future__ import annotations

import pickle
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from wmquant.data import pusht as pusht_data
from wmquant.data.pusht import PushTDataset, generate_pusht_dataset
from wmquant.envs import make
from wmquant.errors import ConfigError, DatasetError

# ---- an official-layout fixture ---------------------------------------------------------------

FIXTURE_LENGTHS = {"train": [12, 7, 10], "val": [9, 12]}
FIXTURE_MAX_LENGTH = 12
FIXTURE_SIZE = 64


def write_lossy_mp4(path: Path, frames: np.ndarray) -> None:
    """H.264 in yuv420p, like the videos of the released archive (lossy)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def make_official_split(split_dir: Path, lengths: list[int], seed: int, lengths_as_numpy: bool, shapes: list[str] | None):
    """Episodes played in the env with random actions, stored as upstream's files: float64 padded
    arrays, pixel actions, pickled lengths, one lossy MP4 per episode. Returns the true values."""
    rng = np.random.default_rng(seed)
    env = make("pusht", render_size=FIXTURE_SIZE)
    count = len(lengths)
    states = np.zeros((count, FIXTURE_MAX_LENGTH, 5))
    velocities = np.zeros((count, FIXTURE_MAX_LENGTH, 2))
    rel_actions = np.zeros((count, FIXTURE_MAX_LENGTH, 2))
    truth = []
    (split_dir / "obses").mkdir(parents=True)
    for i, length in enumerate(lengths):
        actions_px = rng.normal(0, 20, (length, 2))
        init = [rng.uniform(100, 400), rng.uniform(100, 400), 256.0, 256.0, rng.uniform(0, 6), 0.0, 0.0]
        obs, env_states = env.rollout(0, init, actions_px[:-1] / 100)
        states[i, :length], velocities[i, :length] = env_states[:, :5], env_states[:, 5:]
        rel_actions[i, :length] = actions_px
        write_lossy_mp4(split_dir / "obses" / f"episode_{i:03d}.mp4", obs["visual"])
        truth.append({"states": env_states, "actions_px": actions_px, "visual": obs["visual"]})
    torch.save(torch.from_numpy(states), split_dir / "states.pth")
    torch.save(torch.from_numpy(velocities), split_dir / "velocities.pth")
    torch.save(torch.from_numpy(rel_actions), split_dir / "rel_actions.pth")
    torch.save(torch.from_numpy(rel_actions + 256.0), split_dir / "abs_actions.pth")  # present upstream, unused
    stored_lengths = np.array(lengths, dtype=np.int64) if lengths_as_numpy else list(lengths)
    (split_dir / "seq_lengths.pkl").write_bytes(pickle.dumps(stored_lengths))
    if shapes is not None:
        (split_dir / "shapes.pkl").write_bytes(pickle.dumps(shapes))
    return truth


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    root = tmp_path_factory.mktemp("pusht_noise")
    truth = {
        "train": make_official_split(root / "train", FIXTURE_LENGTHS["train"], 0, lengths_as_numpy=False, shapes=None),
        "val": make_official_split(root / "val", FIXTURE_LENGTHS["val"], 1, lengths_as_numpy=True, shapes=["T", "T"]),
    }
    return root, truth


def test_official_layout_loads_with_folder_split_and_seq_lengths(official):
    root, truth = official
    for split, lengths in FIXTURE_LENGTHS.items():
        dataset = PushTDataset(root, split)
        assert len(dataset) == len(lengths) and dataset.env_name == "pusht"
        for i, length in enumerate(lengths):
            episode = dataset[i]
            expected = truth[split][i]
            assert len(episode) == length == dataset.seq_length(i)
            assert episode.visual.shape == (length, 3, FIXTURE_SIZE, FIXTURE_SIZE) and episode.visual.dtype == torch.uint8
            assert episode.states.dtype == torch.float32 and episode.states.shape == (length, 7)
            np.testing.assert_allclose(episode.states.numpy(), expected["states"], rtol=1e-6, atol=1e-3)
            np.testing.assert_allclose(episode.proprio.numpy(), expected["states"][:, [0, 1, 5, 6]], rtol=1e-6, atol=1e-3)
            np.testing.assert_allclose(episode.actions.numpy(), expected["actions_px"] / 100, rtol=1e-6, atol=1e-7)
            assert episode.env_info == {"shape": "T"}
            # H.264 in yuv420p is lossy: close to the rendered frames, not equal
            error = np.abs(episode.visual.permute(0, 2, 3, 1).numpy().astype(int) - expected["visual"].astype(int))
            assert error.mean() < 4.0


def test_fixed_normalisation_constants(official):
    dataset = PushTDataset(official[0], "train")
    norm = dataset.normalization
    np.testing.assert_allclose(norm.action_mean, [-0.0087, 0.0068])
    np.testing.assert_allclose(norm.action_std, [0.2019, 0.2002])
    np.testing.assert_allclose(norm.proprio_mean, [236.6155, 264.5674, -2.93032027, 2.54307914])
    np.testing.assert_allclose(norm.proprio_std, [101.1202, 87.0112, 74.84556075, 74.14009094])
    np.testing.assert_allclose(norm.state_mean, [236.6155, 264.5674, 255.1307, 266.3721, 1.9584, -2.93032027, 2.54307914])
    np.testing.assert_allclose(norm.state_std, [101.1202, 87.0112, 52.7054, 57.4971, 1.7556, 74.84556075, 74.14009094])
    episode = dataset[0]
    np.testing.assert_allclose(
        norm.normalize_actions(episode.actions).numpy(),
        (episode.actions.numpy() - [-0.0087, 0.0068]) / [0.2019, 0.2002],
        rtol=1e-5,
    )


# ---- generation -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "pusht"
    stats = generate_pusht_dataset(out, episodes=4, seed=11, steps=20, workers=0, progress=False, render_size=64)
    return out, stats


def test_generated_layout_and_stats(generated):
    out, stats = generated
    assert stats["train_episodes"] == 3 and stats["val_episodes"] == 1 and stats["steps"] == 20
    for split, count in (("train", 3), ("val", 1)):
        folder = out / split
        assert torch.load(folder / "states.pth", weights_only=True).shape == (count, 20, 5)
        assert torch.load(folder / "velocities.pth", weights_only=True).shape == (count, 20, 2)
        assert torch.load(folder / "rel_actions.pth", weights_only=True).shape == (count, 20, 2)
        assert pickle.loads((folder / "seq_lengths.pkl").read_bytes()) == [20] * count  # plain pickle, as upstream reads it
        assert sorted(p.name for p in (folder / "obses").iterdir()) == [f"episode_{i:03d}.mp4" for i in range(count)]
        assert not (folder / "shapes.pkl").exists()
    assert not list(out.parent.glob(".tmp-*"))


def test_generate_load_round_trip_replays_exactly(generated):
    """Loaded states, actions and frames are exactly what the env produces when the episode is
    replayed from its loaded initial state with its loaded actions (lossless video)."""
    out, _ = generated
    env = make("pusht", render_size=64)
    for split in ("train", "val"):
        dataset = PushTDataset(out, split)
        for i in range(len(dataset)):
            episode = dataset[i]
            obs, states = env.rollout(0, episode.states[0].numpy(), episode.actions[:-1].numpy())
            np.testing.assert_array_equal(states.astype(np.float32), episode.states.numpy())
            np.testing.assert_array_equal(obs["visual"], episode.visual.permute(0, 2, 3, 1).numpy())
            assert episode.env_info == {"shape": "T"}


def test_generation_is_deterministic_across_workers_and_frame_formats(generated, tmp_path):
    out, _ = generated
    again = tmp_path / "again"
    generate_pusht_dataset(again, episodes=4, seed=11, steps=20, workers=2, progress=False, render_size=64, video="pth")
    assert (again / "train" / "obses" / "episode_000.pth").exists()
    for split in ("train", "val"):
        first, second = PushTDataset(out, split), PushTDataset(again, split)
        for i in range(len(first)):
            a, b = first[i], second[i]
            for name in ("visual", "states", "actions", "proprio"):
                assert torch.equal(getattr(a, name), getattr(b, name)), (split, i, name)
    other = pusht_data.generate_episode(0, seed=12, steps=20, render_size=64, policy="expert")
    assert not np.array_equal(other["states"], PushTDataset(out, "train")[0].states[:, :5].numpy())


def test_generation_into_an_existing_empty_directory(tmp_path):
    """How `wmquant data` calls it: into the empty temporary directory it renames at the end."""
    out = tmp_path / "staging"
    out.mkdir()
    generate_pusht_dataset(out, episodes=2, seed=0, steps=3, workers=0, progress=False, render_size=16, video="pth")
    assert len(PushTDataset(out, "train")) == 1 and len(PushTDataset(out, "val")) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["staging"]


def test_scripted_policy_moves_the_block_in_most_transitions():
    episodes = [pusht_data.generate_episode(i, seed=0, steps=100, render_size=16, policy="pusher") for i in range(12)]
    states = np.stack([e["states"] for e in episodes])
    assert pusht_data.block_moving_fraction(states) > 0.5
    actions = np.concatenate([e["rel_actions"][:-1] for e in episodes])
    assert 12.0 < actions.std(axis=0).min() and actions.std(axis=0).max() < 30.0  # the dataset's ~20 px
    assert (states[:, :, 2:4] > 5).all() and (states[:, :, 2:4] < 506).all()  # the block stays in the arena


def test_block_moving_fraction_counts_block_displacements():
    states = np.zeros((1, 4, 5))
    states[0, :, 2] = [100.0, 100.4, 101.0, 101.0]  # moves 0.4, 0.6, 0.0
    states[0, 3, 4] = 1.0  # a pure rotation of the angle does not move the position
    assert pusht_data.block_moving_fraction(states) == pytest.approx(1 / 3)


# ---- bad input --------------------------------------------------------------------------------


def copy_split(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def test_missing_directory_and_split(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        PushTDataset(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match="no val/ folder"):
        PushTDataset(tmp_path, "val")
    with pytest.raises(ConfigError, match="split"):
        PushTDataset(tmp_path, "test")


def test_corrupt_tensor_file_is_named(generated, tmp_path):
    root = copy_split(generated[0], tmp_path / "ds")
    (root / "train" / "velocities.pth").write_bytes(b"not a tensor file")
    with pytest.raises(DatasetError, match="velocities.pth"):
        PushTDataset(root, "train")


def test_inconsistent_shapes_are_named(generated, tmp_path):
    root = copy_split(generated[0], tmp_path / "ds")
    torch.save(torch.zeros(3, 19, 2), root / "train" / "rel_actions.pth")
    with pytest.raises(DatasetError, match="rel_actions.pth has shape"):
        PushTDataset(root, "train")
    torch.save(torch.zeros(3, 20, 3), root / "train" / "rel_actions.pth")
    with pytest.raises(DatasetError, match=r"expected \(N, T_max, 2\)"):
        PushTDataset(root, "train")


def _nan_states(split):
    states = torch.load(split / "states.pth")
    states[1, 3, 2] = float("nan")
    torch.save(states, split / "states.pth")


@pytest.mark.parametrize("damage, message", [
    (lambda split: (split / "states.pth").unlink(), r"missing .*states\.pth"),
    (lambda split: (split / "seq_lengths.pkl").unlink(), r"missing .*seq_lengths\.pkl"),
    (lambda split: torch.save([1.0, 2.0], split / "velocities.pth"), r"velocities\.pth holds a list; expected a tensor"),
    (lambda split: (split / "seq_lengths.pkl").write_bytes(pickle.dumps({"a": 20})), r"seq_lengths\.pkl holds a dict; expected a list"),
    (lambda split: (split / "shapes.pkl").write_bytes(pickle.dumps(["T"])), r"shapes\.pkl must hold 3 shape names, got 1 values"),
    (_nan_states, "has NaN or inf in states, velocities or rel_actions"),
])
def test_damaged_split_files_are_named(generated, tmp_path, damage, message):
    root = copy_split(generated[0], tmp_path / "ds")
    damage(root / "train")
    with pytest.raises(DatasetError, match=message):
        PushTDataset(root, "train")


def test_bad_seq_lengths_and_unsafe_pickles(generated, tmp_path):
    root = copy_split(generated[0], tmp_path / "ds")
    lengths = root / "train" / "seq_lengths.pkl"
    lengths.write_bytes(pickle.dumps([20, 21, 5]))
    with pytest.raises(DatasetError, match=r"ints in \[1, 20\]"):
        PushTDataset(root, "train")
    lengths.write_bytes(pickle.dumps([20, 20]))
    with pytest.raises(DatasetError, match="must hold 3 ints"):
        PushTDataset(root, "train")

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    lengths.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(DatasetError, match="refusing to load"):
        PushTDataset(root, "train")
    assert not (tmp_path / "pwned").exists()


def test_missing_and_corrupt_videos(generated, tmp_path):
    root = copy_split(generated[0], tmp_path / "ds")
    (root / "train" / "obses" / "episode_001.mp4").unlink()
    with pytest.raises(DatasetError, match="episode 1"):
        PushTDataset(root, "train")
    (root / "train" / "obses" / "episode_001.mp4").write_bytes(b"\x00" * 100)
    dataset = PushTDataset(root, "train")
    dataset[0]
    with pytest.raises(DatasetError, match="episode_001.mp4"):
        dataset[1]
    lengths = root / "train" / "seq_lengths.pkl"
    frames = pusht_data.read_video(root / "train" / "obses" / "episode_002.mp4")
    pusht_data.write_video(root / "train" / "obses" / "episode_002.mp4", frames[:5])
    with pytest.raises(DatasetError, match="has 5 frames"):
        PushTDataset(root, "train")[2]
    assert pickle.loads(lengths.read_bytes()) == [20, 20, 20]


def test_generation_rejects_bad_settings_and_leaves_nothing_behind(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="episodes"):
        generate_pusht_dataset(tmp_path / "a", episodes=1, seed=0, steps=5, workers=0, progress=False)
    with pytest.raises(ConfigError, match="steps"):
        generate_pusht_dataset(tmp_path / "a", episodes=2, seed=0, steps=0, workers=0, progress=False)
    with pytest.raises(ConfigError, match="video"):
        generate_pusht_dataset(tmp_path / "a", episodes=2, seed=0, steps=5, workers=0, progress=False, video="avi")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "file").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        generate_pusht_dataset(occupied, episodes=2, seed=0, steps=5, workers=0, progress=False)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pusht_data, "_write_split", fail)
    with pytest.raises(OSError, match="disk full"):
        generate_pusht_dataset(tmp_path / "partial", episodes=2, seed=0, steps=5, workers=0, progress=False, render_size=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]
