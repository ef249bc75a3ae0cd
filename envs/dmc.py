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

import collections
import logging
import math
import os
import warnings

import gymnasium as gym
import numpy as np

# dm_control picks its renderer at import; without a display GLFW prints a warning on every run
# (and would end up in a one-line error message). EGL renders headless; a user's choice stands.
os.environ.setdefault("MUJOCO_GL", "egl")

# MuJoCo 3's compiler warns through absl, on every build of a model that sets a total mass (quadruped,
# walker, ...), that the attribute is deprecated: the model is dm_control's, not the user's, and the
# line would precede a one-line error message. Only that message is dropped.
logging.getLogger("absl").addFilter(lambda record: "'settotalmass' is deprecated" not in record.getMessage())

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
    """A seeded gymnasium env with float32 vector observations and actions in [-1, 1]^A.

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
        # the agent acts in [-1, 1]^A on every task (jaxrl2 wraps its envs the same way): quadruped's box is
        # wider, Pendulum's [-2, 2]; the policy's tanh and the target entropy of the CE paper assume the unit box
        env = gym.wrappers.RescaleAction(env, -1.0, 1.0)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env


# --- pixels: the DMC tasks seen from a camera (ce_drq.py, baselines/drq.py) ---
#
# Who renders: shimmy's own `render_mode="rgb_array"` (the same bridge as `make_env`), which calls
# dm_control's `physics.render(height, width, camera_id)` and nothing else, so it costs what calling
# dm_control directly costs (measured the same, within noise) and keeps one bridge for both kinds of
# observation. Headless: MUJOCO_GL=egl (set above). Measured on the 2-core CPU machine without a GPU,
# where EGL is Mesa's llvmpipe (software): about 50 frames per CPU second, at 64x64 and at 84x84 alike
# (benchmarks/drq_speed.py). The cost does not depend on the image size: three quarters of it is the
# 2048x2048 shadow map and the reflections dm_control's models ask for. We keep them (a smaller shadow
# map is 1.3-1.6x faster but changes pixels, so results would no longer compare with DrQ's); on a GPU
# machine EGL renders in hardware at thousands of frames per second.

# PlaNet's action repeat per domain (Hafner et al. 2019), used by DrQ and jaxrl2's train_online_pixels; 2 elsewhere
PLANET_ACTION_REPEAT = {"cartpole": 8, "reacher": 4, "cheetah": 4, "ball_in_cup": 4}


def pixel_action_repeat(env_id: str) -> int:
    """PlaNet's action repeat of a DMC `domain-task`: cartpole 8; reacher, cheetah, ball_in_cup 4; otherwise 2."""
    return PLANET_ACTION_REPEAT.get(env_id.split("-")[0], 2)


class PixelObservation(gym.Wrapper):
    """Action repeat, rendering and frame stacking: observations uint8 [3 * frame_stack, H, W], oldest frame first.

    One agent step repeats the action `action_repeat` times (summing the rewards, stopping early where the
    episode ends) and renders once, after the last repeat. `reset` fills the stack with copies of the first
    frame (as jaxrl2 and DrQ do), so the stack at agent step t holds frames max(t - k, 0) for k = stack-1 .. 0.
    `episode_length` is an episode's length in agent steps: DMC's time limit (1000 env steps) / action
    repeat, rounded up (inf for a task without a time limit); the pixel replay buffers size their frame
    storage with it.
    """

    def __init__(self, env: gym.Env, action_repeat: int, frame_stack: int, time_limit: float):
        super().__init__(env)
        self.action_repeat, self.frame_stack = action_repeat, frame_stack
        self.episode_length = math.ceil(time_limit / action_repeat) if math.isfinite(time_limit) else math.inf
        height, width = env.unwrapped.render_kwargs["height"], env.unwrapped.render_kwargs["width"]
        self.observation_space = gym.spaces.Box(0, 255, (3 * frame_stack, height, width), np.uint8)
        self._frames: collections.deque = collections.deque(maxlen=frame_stack)

    def _frame(self) -> np.ndarray:
        return self.env.render().transpose(2, 0, 1)  # [H, W, 3] -> [3, H, W]

    def reset(self, *, seed=None, options=None):
        _, info = self.env.reset(seed=seed, options=options)
        frame = self._frame()
        for _ in range(self.frame_stack):
            self._frames.append(frame)
        return np.concatenate(self._frames), info

    def step(self, action):
        total_reward = 0.0
        for _ in range(self.action_repeat):
            _, reward, terminated, truncated, info = self.env.step(action)
            total_reward += float(reward)
            if terminated or truncated:
                break
        self._frames.append(self._frame())
        return np.concatenate(self._frames), total_reward, terminated, truncated, info


def make_pixel_env(env_id: str, seed: int, image_size: int = 64, frame_stack: int = 3, action_repeat: int | None = None) -> gym.Env:
    """A seeded DMC task seen from a camera: uint8 observations [3 * frame_stack, image_size, image_size], actions in [-1, 1]^A.

    jaxrl2's (and DrQ's) pixel settings: RGB images of `image_size` (64), a stack of the last `frame_stack` (3)
    frames, camera 2 for quadruped (its default camera 0 follows too far) and 0 otherwise, and the action
    repeated `action_repeat` times, by default PlaNet's (`pixel_action_repeat`). Episodes still end by
    truncation after 1000 env steps, i.e. 1000 / action_repeat agent steps; a step's reward is the sum over
    its repeats. Seeding as `make_env`. Raises ValueError, with the valid ids, if `env_id` is not a DMC task.
    """
    _register_dmc()
    if not (f"dm_control/{env_id}-v0" in gym.registry and env_id.count("-") == 1):
        raise ValueError(
            f"unknown DMC task {env_id!r}; pixels need a DMC `domain-task` such as {', '.join(DMC15[:4])}, "
            "cartpole-swingup, walker-walk (all of them: `envs.dmc.dmc_ids()`)"
        )
    if action_repeat is None:
        action_repeat = pixel_action_repeat(env_id)
    camera_id = 2 if env_id.startswith("quadruped-") else 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32", category=UserWarning)
        env = gym.make(f"dm_control/{env_id}-v0", render_mode="rgb_array",
                       render_kwargs={"height": image_size, "width": image_size, "camera_id": camera_id})
        time_limit = env.unwrapped._env._step_limit  # dm_control's time limit in env steps (1000 on the suite)
        visual = env.unwrapped._env.physics.model.vis.global_  # the offscreen buffer (640x480 on most tasks) must hold
        visual.offwidth, visual.offheight = max(visual.offwidth, image_size), max(visual.offheight, image_size)  # the image
        env = gym.wrappers.RescaleAction(env, -1.0, 1.0)  # as make_env: the policy's tanh box on every task
    env = PixelObservation(env, action_repeat, frame_stack, time_limit)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env
