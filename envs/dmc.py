"""DeepMind Control (and other continuous-control gymnasium) environments for the CE scripts.

`make_env("cheetah-run", seed=1)` builds the DMC task `cheetah-run` through Farama's
maintained bridge, shimmy (`dm_control/cheetah-run-v0`), with its dict observation
flattened into one float32 vector. DMC never terminates: every episode ends by
truncation after 1000 steps (dm_control's own time limit of the suite's tasks), so a
learner must bootstrap through the last step.

Any other registered gymnasium id with a continuous (Box) action space works as well,
e.g. `Hopper-v5` (the paper's section 5.5), with its own time limit.
"""

from __future__ import annotations

import os
import warnings

import gymnasium as gym
import numpy as np

# dm_control picks its renderer at import; without a display GLFW prints a warning on every run
# (and would end up in a one-line error message). EGL renders headless; a user's choice stands.
os.environ.setdefault("MUJOCO_GL", "egl")

# The 15 tasks of the CE paper's Table 1 ("DMC15"), named `domain-task`.
DMC15 = (
    "acrobot-swingup",
    "cheetah-run",
    "finger-turn_hard",
    "fish-swim",
    "hopper-hop",
    "hopper-stand",
    "humanoid-run",
    "humanoid-stand",
    "humanoid-walk",
    "pendulum-swingup",
    "quadruped-run",
    "quadruped-walk",
    "reacher-hard",
    "swimmer-swimmer6",
    "walker-run",
)

_registered = False


def _register_dmc() -> None:
    """Register shimmy's `dm_control/<domain>-<task>-v0` ids once (importing dm_control is slow)."""
    global _registered
    if not _registered:
        import shimmy

        gym.register_envs(shimmy)
        _registered = True


def dmc_ids() -> list[str]:
    """All DMC suite tasks shimmy offers, as `domain-task` names (DMC15 among them)."""
    _register_dmc()
    prefix, suffix = "dm_control/", "-v0"
    return sorted(
        i[len(prefix) : -len(suffix)]
        for i in gym.registry
        if i.startswith(prefix) and i.endswith(suffix) and i.count("-") == 2  # domain-task-v0
    )


def make_env(env_id: str, seed: int) -> gym.Env:
    """A seeded gymnasium env with float32 vector observations and a continuous action space.

    `env_id` is a DMC `domain-task` name (see `DMC15`, `dmc_ids()`) or any registered gymnasium
    id with a Box action space. Seeding: the first `reset` and the action space use `seed`, so
    later `env.reset()` calls without a seed continue a reproducible sequence.
    Raises ValueError with the valid ids if `env_id` is unknown.
    """
    _register_dmc()
    # Gymnasium warns on every build that float64 bounds (dm_control's, and the float32 cast of our
    # DtypeObservation) lose precision as float32: true and harmless, and noise in every run's output.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32", category=UserWarning)
        if f"dm_control/{env_id}-v0" in gym.registry and env_id.count("-") == 1:
            env = gym.make(f"dm_control/{env_id}-v0")
            env = gym.wrappers.FlattenObservation(env)
        elif env_id in gym.registry and not env_id.startswith("dm_control/"):
            env = gym.make(env_id)
            if not isinstance(env.action_space, gym.spaces.Box):
                env.close()
                raise ValueError(
                    f"env {env_id!r} has a {type(env.action_space).__name__} action space; "
                    "the CE scripts need a continuous (Box) one"
                )
            if not (isinstance(env.observation_space, gym.spaces.Box) and len(env.observation_space.shape) == 1):
                env = gym.wrappers.FlattenObservation(env)
        else:
            raise ValueError(
                f"unknown env id {env_id!r}; valid: a DMC task {', '.join(DMC15)} "
                "(or another of `envs.dmc.dmc_ids()`), or a registered gymnasium id with continuous actions such as Hopper-v5"
            )
        env = gym.wrappers.DtypeObservation(env, np.float32)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env
