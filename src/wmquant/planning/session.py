"""One planning session: a loaded world model, its preprocessing, and the episodes to plan on.

`PlanningSession` is what `wmquant plan`, `plan-act`, `quant`, `demo` and the study runner share:
it validates the config before any work, loads the model (shipped, a wmquant checkpoint directory,
or an official DINO-WM run), builds evaluation or calibration episodes with their environments, and
runs MPC. Quantization happens to `session.model` between loading and planning; nothing here knows
about it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..data.base import Normalization
from ..envs import ENV_NAMES, make_batch
from ..errors import ConfigError
from .cem import CEMConfig, CEMPlanner
from .engine import Engine, resolve_device
from .episodes import GOAL_SOURCES, EpisodeSet, calibration_seeds, check_seed, evaluation_seeds, make_episodes
from .gd import GDConfig, GDPlanner
from .mpc import MPCConfig, PlanningTrace, run_mpc
from .objective import Objective

PLANNERS = ("mpc", "cem", "gd")
SUB_PLANNERS = ("cem", "gd")


@dataclass
class ModelBundle:
    """A world model and everything needed to feed it."""

    model: torch.nn.Module
    name: str
    env: str
    img_size: int
    frameskip: int
    normalization: Normalization
    action_dim: int  # raw env action dimension (the model's action input is action_dim * frameskip)
    render_size: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    goals_path: Path | None = None  # the trajectories goals are drawn from when no dataset_path is set


def _positive_int(cfg: DictConfig, key: str) -> int:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return int(value)


def calibration_budget(cfg: DictConfig) -> dict[str, int]:
    """The CEM budget of calibration planning: `calib_planner.*`, each null falling back to the
    evaluation's `planner.sub_planner.*`."""
    own = cfg.get("calib_planner") or {}
    return {
        key: int(cfg.planner.sub_planner[key]) if own.get(key) is None else _positive_int(cfg, f"calib_planner.{key}")
        for key in ("num_samples", "topk", "opt_steps")
    }


def validate_planning_config(cfg: DictConfig) -> None:
    """Everything that can be checked without loading anything."""
    if cfg.env not in ENV_NAMES:
        raise ConfigError(f"unknown env {cfg.env!r}; valid envs: {', '.join(ENV_NAMES)}")
    for key in ("n_evals", "goal_H", "planner.max_iter", "planner.sub_planner.num_samples",
                "planner.sub_planner.topk", "planner.sub_planner.opt_steps"):
        _positive_int(cfg, key)
    if cfg.planner.name not in PLANNERS:
        raise ConfigError(f"unknown planner {cfg.planner.name!r}; valid planners: {', '.join(PLANNERS)}")
    if cfg.planner.sub_planner.name not in SUB_PLANNERS:
        raise ConfigError(
            f"unknown sub-planner {cfg.planner.sub_planner.name!r}; valid: {', '.join(SUB_PLANNERS)}"
        )
    if cfg.planner.name != "mpc" and cfg.planner.name != cfg.planner.sub_planner.name:
        # one open-loop plan runs the planner that planner.sub_planner configures, so the two names
        # must agree; otherwise planner.name=gd would silently plan with CEM
        raise ConfigError(
            f"planner.name={cfg.planner.name} plans once with planner.sub_planner's settings, but "
            f"planner.sub_planner.name={cfg.planner.sub_planner.name}; set both, or use planner={cfg.planner.name}"
        )
    if cfg.goal_source not in GOAL_SOURCES:
        raise ConfigError(f"unknown goal_source {cfg.goal_source!r}; valid: {', '.join(GOAL_SOURCES)}")
    for key in ("resume", "planner.skip_succeeded", "quant", "quant_encoder", "sta_scale", "mechanisms",
                "save_plots", "save_video", "engine.compile"):
        value = OmegaConf.select(cfg, key)
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
    if cfg.get("engine") is not None:
        from ..kernels.real import check_engine_backend, check_int8_kernel

        check_engine_backend(str(cfg.engine.get("backend", "fake")))
        check_int8_kernel(str(cfg.engine.get("int8_kernel", "torch")))
    check_seed(cfg.seed)
    if cfg.get("n_calib") is not None:
        _positive_int(cfg, "n_calib")
    calibration_seeds(int(cfg.seed), 1, cfg.get("calib_seed_offset") or 0)  # checks the offset
    calib = calibration_budget(cfg)
    if cfg.planner.sub_planner.name == "cem" and calib["topk"] > calib["num_samples"]:
        raise ConfigError(f"calibration CEM keeps topk={calib['topk']} of num_samples={calib['num_samples']}; need topk <= "
                          "num_samples (calib_planner.topk / calib_planner.num_samples)")
    if cfg.env == "pusht" and cfg.get("reset_mode") is not None:
        from ..envs.pusht import check_reset_mode

        check_reset_mode(cfg.reset_mode)
    sub = cfg.planner.sub_planner
    if sub.name == "cem" and sub.topk > sub.num_samples:
        raise ConfigError(f"planner.sub_planner.topk={sub.topk} exceeds num_samples={sub.num_samples}; need topk <= num_samples")
    Objective(mode=cfg.objective.mode, alpha=float(cfg.objective.alpha), base=float(cfg.objective.base))


def load_planning_model(cfg: DictConfig) -> ModelBundle:
    """Load the model that `cfg` names, with its preprocessing."""
    if cfg.get("ckpt_base_path"):
        from ..models.official import load_official_run
        from ..data import load_dataset

        if not cfg.get("dataset_path"):  # checked before the run and its encoder load
            raise ConfigError("an official DINO-WM run (ckpt_base_path) needs its dataset for normalisation "
                              "statistics: set dataset_path=DIR")
        model, train_cfg = load_official_run(
            cfg.ckpt_base_path, cfg.model_name, model_epoch=cfg.model_epoch, dinov2_weights=cfg.dinov2_weights
        )
        dataset = load_dataset(cfg.env, cfg.dataset_path, split="val")
        return ModelBundle(
            model=model,
            name=str(cfg.model_name),
            env=str(cfg.env),
            img_size=int(train_cfg.get("img_size", 224)),
            frameskip=int(train_cfg.get("frameskip", 5)),
            normalization=dataset.normalization,
            action_dim=int(dataset.normalization.action_mean.numel()),
            render_size=None,
            config=dict(train_cfg),
        )
    from ..models.checkpoint import load_world_model, model_directory

    directory = model_directory(str(cfg.model_name))
    model, model_cfg = load_world_model(directory)
    meta = model_cfg.get("planning") or {}
    missing = [k for k in ("env", "img_size", "frameskip", "normalization", "action_dim") if k not in meta]
    if missing:
        raise ConfigError(f"model {cfg.model_name!r} has no planning metadata {missing} in its config.yaml")
    return ModelBundle(
        model=model,
        name=str(cfg.model_name),
        env=str(meta["env"]),
        img_size=int(meta["img_size"]),
        frameskip=int(meta["frameskip"]),
        normalization=Normalization.from_dict(meta["normalization"]),
        action_dim=int(meta["action_dim"]),
        render_size=meta.get("render_size"),
        config=model_cfg,
        goals_path=directory / meta["goals_file"] if meta.get("goals_file") else None,
    )


class PlanningSession:
    def __init__(self, cfg: DictConfig, bundle: ModelBundle | None = None) -> None:
        validate_planning_config(cfg)
        self.cfg = cfg
        self.bundle = bundle or load_planning_model(cfg)
        if self.bundle.env != cfg.env:
            raise ConfigError(
                f"model {self.bundle.name!r} was trained on env {self.bundle.env!r} but env={cfg.env}; "
                f"use --config-name plan_{self.bundle.env}.yaml"
            )
        if cfg.goal_source in ("dset", "random_action") and not cfg.dataset_path and self.bundle.goals_path is None:
            raise ConfigError(
                f"goal_source={cfg.goal_source} draws goals from a dataset and model {self.bundle.name!r} ships none: "
                f"set dataset_path=DIR (make one with `wmquant data --env {cfg.env} --out DIR`)"
            )
        self._datasets: dict[str, Any] = {}
        if cfg.goal_source in ("dset", "random_action"):
            self.dataset("val")  # a missing, corrupt or foreign dataset or goal file fails before any output
        if cfg.engine.get("threads"):
            torch.set_num_threads(int(cfg.engine.threads))
        self.device = resolve_device(cfg.engine.device)
        self.objective = Objective(mode=cfg.objective.mode, alpha=float(cfg.objective.alpha), base=float(cfg.objective.base))
        self.engine = self.engine_for(self.bundle.model)

    def engine_for(self, model: torch.nn.Module) -> Engine:
        """An engine with this session's device, precision and batching for `model` (the session's
        own, or another copy of it, such as the float model beside a quantized one)."""
        chunk = self.cfg.engine.chunk_episodes
        return Engine(
            model=model,
            normalization=self.bundle.normalization,
            img_size=self.bundle.img_size,
            objective=self.objective,
            device=self.device,
            precision=str(self.cfg.engine.precision),
            chunk_episodes=chunk if chunk == "auto" else int(chunk),
            compile=self.cfg.engine.get("compile", False),
        )

    @property
    def model(self) -> torch.nn.Module:
        return self.bundle.model

    def dataset(self, split: str):
        """The `split` that goals are drawn from: of `dataset_path` if set, else of the goal file the
        model ships (None if neither: goals are then sampled states)."""
        if split not in self._datasets:
            if self.cfg.dataset_path:
                from ..data import load_dataset

                self._datasets[split] = load_dataset(self.cfg.env, self.cfg.dataset_path, split=split)
            elif self.bundle.goals_path is not None and self.cfg.goal_source != "random_state":
                from ..data.goals import GoalTrajectories

                self._datasets[split] = GoalTrajectories(self.bundle.goals_path, split, self.cfg.env)
            else:
                return None
        return self._datasets[split]

    def make_env(self, num_envs: int):
        kwargs: dict[str, Any] = {}
        render = self.cfg.render_size or self.bundle.render_size
        if self.cfg.env == "pusht":
            if render:
                kwargs["render_size"] = int(render)
            if self.cfg.get("reset_mode"):
                kwargs["reset_mode"] = str(self.cfg.reset_mode)
        return make_batch(self.cfg.env, num_envs, **kwargs)

    def episodes(self, purpose: str = "evaluation") -> tuple[EpisodeSet, Any]:
        """Evaluation episodes (seeds seed*n+1, validation split) or calibration episodes
        (seeds seed*n+2, training split). Returns the episodes and their BatchEnv."""
        n = int(self.cfg.n_evals)
        if purpose == "evaluation":
            seeds, split = evaluation_seeds(int(self.cfg.seed), n), "val"
        elif purpose == "calibration":
            n = self.calibration_episode_count()
            seeds, split = calibration_seeds(int(self.cfg.seed), n, self.calibration_replicate()), "train"
        else:
            raise ValueError(purpose)
        env = self.make_env(n)
        goal_H = int(self.cfg.goal_H)
        episodes = make_episodes(
            env, self.cfg.env, seeds, str(self.cfg.goal_source), goal_H, self.bundle.frameskip, self.dataset(split)
        )
        return episodes, env

    def calibration_episode_count(self) -> int:
        """`n_calib`, or `n_evals` when it is null (the original study calibrates on n_evals episodes)."""
        return int(self.cfg.n_evals) if self.cfg.get("n_calib") is None else int(self.cfg.n_calib)

    def calibration_replicate(self) -> int:
        """`calib_seed_offset`: which disjoint calibration set (0 = the study's)."""
        return int(self.cfg.get("calib_seed_offset") or 0)

    def calibration_budget(self) -> dict[str, int]:
        return calibration_budget(self.cfg)

    def planner(self, budget: dict[str, int] | None = None):
        """The sub-planner of the config; `budget` replaces its num_samples / topk / opt_steps."""
        sub = OmegaConf.merge(self.cfg.planner.sub_planner, budget or {})
        horizon = int(self.cfg.goal_H)  # upstream forces the horizon to goal_H
        action_dim = self.bundle.action_dim * self.bundle.frameskip
        if sub.name == "cem":
            return CEMPlanner(
                CEMConfig(horizon=horizon, topk=int(sub.topk), num_samples=int(sub.num_samples),
                          var_scale=float(sub.var_scale), opt_steps=int(sub.opt_steps)),
                action_dim,
            )
        zero = self.bundle.normalization.normalize_actions(torch.zeros(self.bundle.action_dim))
        return GDPlanner(
            GDConfig(horizon=horizon, opt_steps=int(sub.opt_steps), lr=float(sub.lr),
                     action_noise=float(sub.action_noise), sample_type=str(sub.sample_type)),
            action_dim,
            zero.repeat(self.bundle.frameskip),
        )

    def estimate_plan_seconds(self, episodes: EpisodeSet, max_iter: int, budget: dict[str, int] | None = None) -> float | None:
        """Expected seconds to plan `episodes` for `max_iter` MPC iterations without skipping, from one
        timed cost evaluation of every episode's samples (CEM; None for other planners). The probe
        scores random action sequences from the goal latents; it changes no state."""
        planner = self.planner(budget)
        if not isinstance(planner, CEMPlanner):
            return None
        cfg = planner.config
        z_goal = self.engine.encode(episodes.obs_g)
        actions = torch.randn((len(episodes), cfg.num_samples, cfg.horizon, planner.action_dim),
                              generator=torch.Generator().manual_seed(0)).to(self.engine.device)
        start = time.perf_counter()
        self.engine.sample_costs(z_goal, z_goal, actions).cpu()  # .cpu() waits for the device
        return (time.perf_counter() - start) * cfg.opt_steps * max_iter

    def plan(
        self,
        episodes: EpisodeSet,
        env,
        max_iter: int | None = None,
        skip_succeeded: bool | None = None,
        progress: bool = True,
        desc: str = "MPC",
        plot_episodes: int = 0,
        on_iteration=None,
        checkpoint=None,
        run_fingerprint: str = "",
        budget: dict[str, int] | None = None,
    ) -> PlanningTrace:
        mpc = self.cfg.planner.name == "mpc"
        config = MPCConfig(
            n_taken_actions=int(self.cfg.goal_H) if mpc else int(self.cfg.goal_H),
            max_iter=(int(max_iter) if max_iter is not None else int(self.cfg.planner.max_iter)) if mpc else 1,
            skip_succeeded=bool(self.cfg.planner.skip_succeeded if skip_succeeded is None else skip_succeeded),
        )
        return run_mpc(
            self.engine, self.planner(budget), env, episodes, config, self.bundle.frameskip, int(self.cfg.seed),
            progress=progress, desc=desc, plot_episodes=plot_episodes, on_iteration=on_iteration,
            checkpoint=checkpoint, run_fingerprint=run_fingerprint,
        )
