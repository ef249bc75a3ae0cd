"""The one entry point the scripts use to build MESA's environments and draw their tasks.

    env = make_env("climb-one-step", task, **settings)       # a PettingZoo ParallelEnv
    train_tasks, test_tasks = sample_tasks("mpe-climb", 30, 3, task_seed=0, n=3, U=6)

Every environment: agents agent_0 .. agent_{n-1}; float32 Box observations; one team reward
given to every agent; `env.state()` a float32 vector in `env.state_space`; `env.max_steps`
the episode length. Climb games end by termination after their last stage (the game is
over); MPE and Swimmer end by truncation at `max_steps` (time is not observed).

`settings` are the keys of DEFAULT_SETTINGS[env_id] (paper values; unknown keys raise
ValueError); `make_env` and `sample_tasks` accept the same settings, so a script passes one
dict to both. The MPE and MuJoCo modules are imported only when their environment is asked
for, so the climb-game scripts need neither pygame nor MuJoCo.
"""

from __future__ import annotations

import math

from pettingzoo import ParallelEnv

ENV_IDS = ("climb-one-step", "climb-multi-stage", "mpe-climb", "swimmer-climb")

DEFAULT_SETTINGS: dict[str, dict] = {
    # section 6.2 / B.1.1: 2 players, U = 10 actions, delta = 1/2; multi-stage S = 5
    "climb-one-step": {"n": 2, "U": 10, "delta": 0.5},
    "climb-multi-stage": {"n": 2, "U": 10, "S": 5, "delta": 0.5},
    # section 6.3 / B.1.2: n in {2, 3}, U in {5, 6}, k = 2, delta = 1/2; landmark_size and
    # max_steps are ours (paper silent, see envs/mpe_climb.py)
    "mpe-climb": {"n": 2, "U": 5, "k": 2, "delta": 0.5, "landmark_size": 0.1, "max_steps": 100,
                  "continuous_actions": False, "render_mode": None},
    # section 6.4 / B.1.3: alpha in (-30 deg, 30 deg), delta = 1/2, 1000-step episodes; eps is
    # "a very small angle" in the paper, 5 deg is ours
    "swimmer-climb": {"eps": math.radians(5.0), "delta": 0.5, "max_steps": 1000,
                      "alpha_max": math.radians(30.0), "render_mode": None},
}


def _settings(env_id: str, settings: dict) -> dict:
    """DEFAULT_SETTINGS[env_id] updated with `settings`; ValueError for an unknown env_id or key."""
    if env_id not in ENV_IDS:
        raise ValueError(f"unknown env_id {env_id!r}; valid ids: {', '.join(ENV_IDS)}")
    defaults = DEFAULT_SETTINGS[env_id]
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ValueError(f"unknown settings {unknown} for {env_id}; valid settings: {', '.join(defaults)}")
    return {**defaults, **settings}


def make_env(env_id: str, task, **settings) -> ParallelEnv:
    """A fresh PettingZoo ParallelEnv playing `task` (one element of sample_tasks' lists)."""
    s = _settings(env_id, settings)
    if env_id == "climb-one-step":
        from envs.climb import OneStepClimbEnv

        return OneStepClimbEnv(task, n=s["n"], U=s["U"], delta=s["delta"])
    if env_id == "climb-multi-stage":
        from envs.climb import MultiStageClimbEnv

        return MultiStageClimbEnv(task, n=s["n"], U=s["U"], S=s["S"], delta=s["delta"])
    if env_id == "mpe-climb":
        from envs.mpe_climb import MPEClimbEnv

        return MPEClimbEnv(
            task, n=s["n"], U=s["U"], k=s["k"], delta=s["delta"], landmark_size=s["landmark_size"],
            max_steps=s["max_steps"], continuous_actions=s["continuous_actions"], render_mode=s["render_mode"],
        )
    from envs.swimmer_climb import SwimmerClimbEnv

    return SwimmerClimbEnv(
        task, eps=s["eps"], delta=s["delta"], max_steps=s["max_steps"], render_mode=s["render_mode"]
    )


def sample_tasks(env_id: str, num_train: int, num_test: int, task_seed: int, **settings) -> tuple[list, list]:
    """Disjoint (train_tasks, test_tasks) drawn uniformly from env_id's task space with
    envs.climb.task_rng(task_seed): the same arguments always give the same lists (B.2: "sampled
    uniformly at random from the task space ... and then divided into the training and testing tasks")."""
    s = _settings(env_id, settings)
    if env_id == "climb-one-step":
        from envs.climb import sample_one_step_tasks

        return sample_one_step_tasks(num_train, num_test, task_seed, n=s["n"], U=s["U"])
    if env_id == "climb-multi-stage":
        from envs.climb import sample_multi_stage_tasks

        return sample_multi_stage_tasks(num_train, num_test, task_seed, S=s["S"], n=s["n"], U=s["U"])
    if env_id == "mpe-climb":
        from envs.mpe_climb import sample_mpe_tasks

        return sample_mpe_tasks(num_train, num_test, task_seed, n=s["n"], U=s["U"], k=s["k"],
                                landmark_size=s["landmark_size"], delta=s["delta"], max_steps=s["max_steps"])
    from envs.swimmer_climb import sample_swimmer_tasks

    return sample_swimmer_tasks(num_train, num_test, task_seed, alpha_max=s["alpha_max"])


def check_disjoint(train_tasks, test_tasks) -> None:
    """ValueError if a test task is also a training task (meta-testing must use unseen tasks)."""
    shared = [task for task in test_tasks if task in set(train_tasks)]
    if shared:
        raise ValueError(f"test tasks must differ from the training tasks; also in training: {shared}")
