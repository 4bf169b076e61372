"""The batched environment interface that planners, evaluators and data generators use.

A `BatchEnv` holds `num_envs` independent environments with persistent state. Every array has the
env index as its leading axis. Observations are `{"visual": uint8 (n, H, W, 3), "proprio": float32
(n, P)}`; states are float64 (n, S); actions are in raw env units, float (n, A).

Stepping a subset (`indices`) leaves the other environments untouched, so an MPC loop can stop
stepping episodes that already succeeded. Persistent state means that `reset_to(s); step(a0);
step(a1)` gives exactly the same result as `rollout(s, [a0, a1])`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np

Obs = dict[str, np.ndarray]


class BatchEnv(ABC):
    num_envs: int
    state_dim: int
    proprio_dim: int
    action_dim: int

    @abstractmethod
    def update_env(self, env_infos: Sequence[dict[str, Any]], indices: Sequence[int] | None = None) -> None:
        """Set each environment's layout (Wall: wall x and door y; PushT: block shape)."""

    @abstractmethod
    def reset_to(self, states: np.ndarray, indices: Sequence[int] | None = None) -> tuple[Obs, np.ndarray]:
        """Put environments `indices` (default: all) into `states` (len(indices), S).
        Returns their observations and the states actually reached."""

    @abstractmethod
    def step(self, actions: np.ndarray, indices: Sequence[int] | None = None) -> tuple[Obs, np.ndarray]:
        """One env step for environments `indices` with actions (len(indices), A)."""

    @abstractmethod
    def eval_state(self, goal_states: np.ndarray, cur_states: np.ndarray) -> dict[str, np.ndarray]:
        """{"success": bool (n,), "state_dist": float (n,)} for paired rows of goal and current states."""

    @abstractmethod
    def sample_random_init_goal_states(self, seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(init (n, S), goal (n, S)), row i drawn from `seeds[i]` exactly as the single env does."""

    def rollout(
        self, init_states: np.ndarray, actions: np.ndarray, indices: Sequence[int] | None = None
    ) -> tuple[Obs, np.ndarray]:
        """Reset to `init_states` and apply actions (n, T, A). Returns observations with T+1 frames
        (initial first): visual (n, T+1, H, W, 3), proprio (n, T+1, P); states (n, T+1, S)."""
        obs, state = self.reset_to(init_states, indices)
        visuals, proprios, states = [obs["visual"]], [obs["proprio"]], [state]
        for t in range(actions.shape[1]):
            obs, state = self.step(actions[:, t], indices)
            visuals.append(obs["visual"])
            proprios.append(obs["proprio"])
            states.append(state)
        return (
            {"visual": np.stack(visuals, axis=1), "proprio": np.stack(proprios, axis=1)},
            np.stack(states, axis=1),
        )

    def close(self) -> None:
        """Release workers, if any."""

    def __enter__(self) -> "BatchEnv":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
