"""Multi-agent MuJoCo Swimmer climb game G(alpha) of MESA (Zhang et al., AAMAS 2023, section 6.4
and Appendix B.1.3).

Two agents, each one hinge of the 3-link Swimmer (agent_0: motor1_rot, agent_1: motor2_rot),
each acting with the torque on its hinge. With alpha_1, alpha_2 the two joint angles and alpha
the task's target angle, the per-step team reward is 1 if |alpha_1 - alpha| < eps and
|alpha_2 - alpha| < eps, 1 - delta if both are farther than eps, else 0 (B.1.3; delta = 1/2).
This is the 2-player climb game with per-agent action "close to alpha" (u) or "not", k = 2, so
it is computed by `envs.climb.climb_reward`. Task space: alpha uniform in (-30 deg, 30 deg)
(B.1.3). 1000-step episodes (sub-optimal return 500, section 6.4 / our spec).

Built on gymnasium-robotics' MaMuJoCo (`gymnasium_robotics.mamujoco_v1`, scenario "Swimmer",
agent_conf "2x1"), the maintained multi-agent MuJoCo the paper cites [29]; it works with our
pins (gymnasium 1.4, mujoco 3.x) and already splits Swimmer-v5 into one hinge per agent, so
nothing is split by hand. `SwimmerClimbEnv` subclasses its ParallelEnv and replaces only the
reward, the float32 casts and the episode length.

Decisions where the paper is silent (ours):
- eps is "a very small angle" in the paper; an argument here, default 5 degrees.
- A joint angle exactly eps away counts as "not close" (the paper's two strict inequalities
  leave |alpha_i - alpha| = eps undefined; this closes the gap, and it has probability 0).
- Observations: MaMuJoCo's defaults for Swimmer 2x1 with agent_obsk = 1 (own hinge and the
  neighbouring hinge's angle and velocity, plus the body's global qvel/qpos items), cast to
  float32; alpha is never observed. Global state `env.state()`: Swimmer-v5's full observation
  (qpos without x, y, then qvel; 8 values) as float32.
- Episodes end by truncation at max_steps (Swimmer never terminates); time is not observed.
- Initial state: Swimmer-v5's (uniform noise of scale 0.1 on qpos and qvel), from reset(seed).
- The forward-motion reward of Swimmer-v5 is discarded; its per-step info dict is passed on.
- Tasks are plain floats (alpha in radians); explicit tasks must lie inside the hinge range
  (-100 deg, 100 deg), so the target is reachable.
"""

from __future__ import annotations

import math

import farama_notifications  # a dependency of gymnasium
import numpy as np
from gymnasium import spaces

# gymnasium_robotics prints a note on its Adroit hand environments to stderr when imported (from
# farama_notifications); it says nothing about Swimmer, so it is dropped before the import
farama_notifications.notifications.pop("gymnasium_robotics", None)
from gymnasium_robotics.envs.multiagent_mujoco.mujoco_multi import MultiAgentMujocoEnv  # noqa: E402

from envs.climb import check_task_counts, climb_reward, task_rng  # noqa: E402

JOINT_LIMIT = math.radians(100.0)  # Swimmer-v5's hinge range: motor1_rot, motor2_rot in [-100 deg, 100 deg]
ALPHA_MAX = math.radians(30.0)  # task space (-30 deg, 30 deg), B.1.3
EPS = math.radians(5.0)  # "a very small angle" (B.1.3); 5 deg is ours


def swimmer_climb_reward(joint_angles, alpha: float, eps: float, delta: float = 0.5) -> float:
    """Team reward of G(alpha) (B.1.3) for the two hinge angles [2] (radians): 1 if both are
    within eps of alpha, 1 - delta if neither is, 0 if exactly one is."""
    close = [int(abs(float(a) - alpha) < eps) for a in joint_angles]  # 1 = "plays u"
    return climb_reward(close, k=len(close), u=1, delta=delta)


def check_swimmer_settings(eps: float, delta: float, max_steps: int, alpha_max: float = ALPHA_MAX) -> None:
    """ValueError with a one-line message when a Swimmer climb setting is out of range."""
    if not 0.0 < eps < math.pi:
        raise ValueError(f"eps must be an angle in radians in (0, pi) (default radians(5) = 0.0873), got {eps!r}")
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must lie in [0, 1] (paper: 0.5), got {delta!r}")
    if not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"max_steps must be an integer >= 1 (paper: 1000), got {max_steps!r}")
    if not 0.0 < alpha_max < JOINT_LIMIT:
        raise ValueError(
            f"alpha_max must be in (0, radians(100) = {JOINT_LIMIT:.4f}) (paper: radians(30)), got {alpha_max!r}"
        )


def sample_swimmer_tasks(num_train: int, num_test: int, task_seed: int, alpha_max: float = ALPHA_MAX):
    """Disjoint (train, test) lists of target angles alpha ~ U(-alpha_max, alpha_max), radians (B.1.3)."""
    check_swimmer_settings(EPS, 0.5, 1000, alpha_max)
    total = check_task_counts(num_train, num_test)
    rng = task_rng(task_seed)
    tasks, seen = [], set()
    while len(tasks) < total:
        alpha = float(rng.uniform(-alpha_max, alpha_max))
        if alpha not in seen and alpha != -alpha_max:  # open interval; a repeat has probability ~0
            seen.add(alpha)
            tasks.append(alpha)
    return tasks[:num_train], tasks[num_train:]


class SwimmerClimbEnv(MultiAgentMujocoEnv):
    """2-agent Swimmer climb game G(alpha) as a PettingZoo ParallelEnv; Box(-1, 1, (1,)) torques."""

    def __init__(self, task: float, eps: float = EPS, delta: float = 0.5, max_steps: int = 1000, render_mode=None):
        check_swimmer_settings(eps, delta, max_steps)
        is_angle = isinstance(task, (float, int, np.floating, np.integer)) and not isinstance(task, bool)
        if not is_angle or not -JOINT_LIMIT < task < JOINT_LIMIT:
            raise ValueError(
                f"a Swimmer climb task is a target angle alpha in radians in "
                f"(-{JOINT_LIMIT:.4f}, {JOINT_LIMIT:.4f}), got {task!r}"
            )
        super().__init__("Swimmer", "2x1", agent_obsk=1, render_mode=render_mode, max_episode_steps=max_steps)
        self.task, self.alpha, self.eps, self.delta, self.max_steps = task, float(task), eps, delta, max_steps
        # qpos index of each agent's hinge (MaMuJoCo stores them as negative indices: -2, -1)
        self._hinge_qpos = [node.qpos_ids for (node,) in self.agent_action_partitions]
        for agent in self.possible_agents:
            shape = self.observation_spaces[agent].shape
            self.observation_spaces[agent] = spaces.Box(-np.inf, np.inf, shape, np.float32)
        self.state_space = spaces.Box(-np.inf, np.inf, self.single_agent_env.observation_space.shape, np.float32)

    def joint_angles(self) -> np.ndarray:
        """[alpha_1, alpha_2]: the two hinge angles in radians."""
        return self.single_agent_env.unwrapped.data.qpos[self._hinge_qpos].copy()

    def _get_obs(self) -> dict[str, np.ndarray]:
        return {agent: obs.astype(np.float32) for agent, obs in super()._get_obs().items()}

    def state(self) -> np.ndarray:
        return super().state().astype(np.float32)

    def reset(self, seed=None, options=None):
        obs, infos = super().reset(seed=seed, options=options)
        self.agents = list(self.possible_agents)  # MaMuJoCo aliases possible_agents here
        return obs, infos

    def step(self, actions):
        obs, _, terminations, truncations, infos = super().step(actions)  # Swimmer's forward reward dropped
        reward = swimmer_climb_reward(self.joint_angles(), self.alpha, self.eps, self.delta)
        return obs, {agent: reward for agent in obs}, terminations, truncations, infos
