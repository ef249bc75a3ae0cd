"""MPE climb game of MESA (Zhang et al., AAMAS 2023, section 6.3 and Appendix B.1.2).

G(n, k, u, U, L): n agents move in the 2-D particle world of MPE; U non-overlapping landmarks
sit at positions L ~ Psi_U. With f_j(s) the number of agents on landmark j, the per-step team
reward is 1 if f_u(s) = k and every agent is on some landmark, 1 - delta if f_u(s) = 0 and
every agent is on some landmark, else 0 (B.1.2; delta = 1/2). This is the one-step climb
reward with "landmark an agent stands on" as its action, so it is computed by
`envs.climb.climb_reward`. The observation of an agent holds the relative positions of all
landmarks and of the other agents (B.1.2) and, as our spec adds, its own velocity; u and k
are never observed. Experiments: n in {2, 3}, U in {5, 6}, k = 2 (section 6.3). B.1.2 writes
the task space with k = n, section 6.3 "fixing k = 2"; these agree for n = 2, and for n = 3 we
follow section 6.3 (k is a setting, default 2: the third agent must stand on another landmark).

Built on Farama's mpe2 scenario API: `ClimbScenario` is an mpe2 `BaseScenario`, `_RawMPEClimbEnv`
an mpe2 `SimpleEnv` (an AEC env, wrapped as mpe2 wraps its own), and `MPEClimbEnv` the
PettingZoo AEC-to-parallel conversion with our `max_steps` and `task` attributes.

Decisions where the paper is silent (ours):
- Episode length `max_steps` is an argument, default 100: the paper does not state it, but its
  near-optimal returns of about 61 (Appendix Table 2, 2 agents x 5 landmarks) need at least
  61 rewarded steps, and agents need roughly 10-40 steps to reach and settle on landmarks from
  the random start, which points at 75-100 steps; 100 is the round value in that range.
- Episodes end by truncation at `max_steps` (time is not observed, so a critic should
  bootstrap), as mpe2 does for its own scenarios; there is no termination.
- Psi_U: landmark centres uniform in [-1, 1]^2 (the MPE convention), redrawn until every pair
  is more than 2 * landmark_size apart, so the discs do not overlap and no agent can be on two
  landmarks at once; positions rounded to 3 decimals so a task prints compactly and exactly.
- "On landmark j": distance between the agent's centre and the landmark's centre below
  landmark_size (default 0.1, the capture radius mpe2's simple_spread uses; agents have the
  MPE default size 0.05).
- Agents do not collide (collide=False), so k agents can share one landmark without the
  contact force pushing them off it.
- Initial agent positions are uniform in [-1, 1]^2 with zero velocity, drawn at every reset
  from the reset seed; they are not part of the task.
- Discrete actions by default (Discrete(5): no-op, left, right, down, up), as MADDPG in the paper
  uses the Gumbel-softmax for discrete actions; `continuous_actions=True` gives mpe2's Box(0, 1, (5,)).
- Global state `env.state()` is mpe2's: all agents' observations concatenated [n * obs_dim].
- Tasks: each draw is a fresh layout and a uniform target u (p(G) = Psi_U(L) / U, B.1.2);
  train and test tasks are distinct draws, so every task has its own layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mpe2._mpe_utils.core import Agent, Landmark, World
from mpe2._mpe_utils.scenario import BaseScenario
from mpe2._mpe_utils.simple_env import SimpleEnv
from pettingzoo.utils import wrappers
from pettingzoo.utils.conversions import aec_to_parallel_wrapper

from envs.climb import check_task_counts, climb_reward, task_rng

# redraws of a whole layout before a landmark count is declared too crowded for the square
_MAX_LAYOUT_TRIES = 1000


@dataclass(frozen=True)
class MPEClimbTask:
    """One MPE climb game: landmark centres (U pairs (x, y)), target landmark u, count k."""

    landmarks: tuple[tuple[float, float], ...]
    u: int
    k: int


def check_mpe_settings(n: int, U: int, k: int, delta: float, landmark_size: float, max_steps: int) -> None:
    """ValueError with a one-line message when an MPE climb setting is out of range."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (number of agents) must be an integer >= 1 (paper: 2 or 3), got {n!r}")
    if not isinstance(U, (int, np.integer)) or U < 2:
        raise ValueError(f"U (number of landmarks) must be an integer >= 2 (paper: 5 or 6), got {U!r}")
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer with 1 <= k <= n = {n} (paper: 2), got {k!r}")
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must lie in [0, 1] (paper: 0.5), got {delta!r}")
    if not 0.0 < landmark_size < 1.0:
        raise ValueError(f"landmark_size must lie in (0, 1) (default 0.1), got {landmark_size!r}")
    if not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"max_steps must be an integer >= 1 (default 100), got {max_steps!r}")


def agents_on_landmarks(agent_pos: np.ndarray, landmark_pos: np.ndarray, landmark_size: float) -> list[int]:
    """Index of the landmark each agent is on, -1 if none. agent_pos [n, 2], landmark_pos [U, 2]."""
    dist = np.linalg.norm(agent_pos[:, None, :] - landmark_pos[None, :, :], axis=-1)  # [n, U]
    nearest = dist.argmin(axis=1)  # [n]; landmarks are > 2 radii apart, so at most one is within a radius
    on = dist[np.arange(len(agent_pos)), nearest] < landmark_size  # [n]
    return [int(j) if o else -1 for j, o in zip(nearest, on)]


def mpe_climb_reward(
    agent_pos: np.ndarray, landmark_pos: np.ndarray, landmark_size: float, u: int, k: int, delta: float = 0.5
) -> float:
    """Team reward of G(n, k, u, U, L) (B.1.2): 0 unless every agent is on a landmark, then the
    climb reward of the landmarks they stand on (1 if f_u = k, 1 - delta if f_u = 0, else 0)."""
    on = agents_on_landmarks(agent_pos, landmark_pos, landmark_size)
    if -1 in on:
        return 0.0
    return climb_reward(on, k, u, delta)


def sample_landmark_layout(U: int, landmark_size: float, rng: np.random.Generator) -> tuple[tuple[float, float], ...]:
    """L ~ Psi_U: U centres uniform in [-1, 1]^2, rounded to 3 decimals, pairwise more than
    2 * landmark_size apart (rejection sampling)."""
    for _ in range(_MAX_LAYOUT_TRIES):
        pos = np.round(rng.uniform(-1.0, 1.0, size=(U, 2)), 3)  # [U, 2]
        dist = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)  # [U, U]
        if np.all(dist[np.triu_indices(U, 1)] > 2 * landmark_size):
            return tuple((float(x), float(y)) for x, y in pos)
    raise ValueError(
        f"could not place U = {U} non-overlapping landmarks of size {landmark_size} in [-1, 1]^2; "
        "use fewer or smaller landmarks"
    )


def check_mpe_task(task, U: int, n: int, landmark_size: float) -> None:
    """ValueError unless task is an MPEClimbTask with U non-overlapping landmarks, 0 <= u < U, 1 <= k <= n."""
    if not isinstance(task, MPEClimbTask):
        raise ValueError(f"an MPE climb task must be MPEClimbTask(landmarks, u, k), got {task!r}")
    pos = np.asarray(task.landmarks, dtype=np.float64)
    if pos.shape != (U, 2):
        raise ValueError(f"task.landmarks must hold U = {U} (x, y) pairs, got shape {pos.shape}")
    dist = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)  # [U, U]
    if not np.all(dist[np.triu_indices(U, 1)] > 2 * landmark_size):
        raise ValueError(
            f"task landmarks overlap: centres must be more than 2 * landmark_size = {2 * landmark_size} apart"
        )
    if not 0 <= task.u < U:
        raise ValueError(f"task u must satisfy 0 <= u < U = {U}, got {task.u}")
    if not 1 <= task.k <= n:
        raise ValueError(f"task k must satisfy 1 <= k <= n = {n}, got {task.k}")


def sample_mpe_tasks(
    num_train: int, num_test: int, task_seed: int, n: int = 2, U: int = 5, k: int = 2,
    landmark_size: float = 0.1, delta: float = 0.5, max_steps: int = 100,
):
    """Disjoint (train, test) lists of MPE climb tasks: a layout ~ Psi_U and u uniform per task."""
    check_mpe_settings(n, U, k, delta, landmark_size, max_steps)
    total = check_task_counts(num_train, num_test)
    rng = task_rng(task_seed)
    tasks, seen = [], set()
    while len(tasks) < total:
        task = MPEClimbTask(sample_landmark_layout(U, landmark_size, rng), int(rng.integers(U)), k)
        if task.landmarks not in seen:  # every task its own layout (section 6.3)
            seen.add(task.landmarks)
            tasks.append(task)
    return tasks[:num_train], tasks[num_train:]


class ClimbScenario(BaseScenario):
    """mpe2 scenario of the MPE climb game: fixed landmark layout, random agent starts."""

    def __init__(self, task: MPEClimbTask, landmark_size: float, delta: float):
        self.task, self.landmark_size, self.delta = task, landmark_size, delta
        self.landmark_pos = np.asarray(task.landmarks, dtype=np.float64)  # [U, 2]

    def make_world(self, n: int) -> World:
        world = World()
        world.dim_c = 0
        world.agents = [Agent() for _ in range(n)]
        for i, agent in enumerate(world.agents):
            agent.name = f"agent_{i}"
            agent.collide = False
            agent.silent = True
            agent.size = 0.05
        world.landmarks = [Landmark() for _ in range(len(self.landmark_pos))]
        for j, landmark in enumerate(world.landmarks):
            landmark.name = f"landmark_{j}"
            landmark.collide = False
            landmark.movable = False
            landmark.size = self.landmark_size
        return world

    def reset_world(self, world: World, np_random) -> None:
        for agent in world.agents:
            agent.color = np.array([0.35, 0.35, 0.85])
            agent.state.p_pos = np_random.uniform(-1.0, 1.0, world.dim_p)
            agent.state.p_vel = np.zeros(world.dim_p)
            agent.state.c = np.zeros(world.dim_c)
        for j, landmark in enumerate(world.landmarks):
            landmark.color = np.array([0.25, 0.25, 0.25])  # the target is not shown: u is never observed
            landmark.state.p_pos = self.landmark_pos[j].copy()
            landmark.state.p_vel = np.zeros(world.dim_p)

    def reward(self, agent: Agent, world: World) -> float:
        agent_pos = np.stack([a.state.p_pos for a in world.agents])  # [n, 2]
        task = self.task
        return mpe_climb_reward(agent_pos, self.landmark_pos, self.landmark_size, task.u, task.k, self.delta)

    def observation(self, agent: Agent, world: World) -> np.ndarray:
        """[own velocity (2), landmark positions relative to the agent (2U),
        other agents' positions relative to it (2(n-1))]."""
        landmark_rel = [lm.state.p_pos - agent.state.p_pos for lm in world.landmarks]
        other_rel = [a.state.p_pos - agent.state.p_pos for a in world.agents if a is not agent]
        return np.concatenate([agent.state.p_vel, *landmark_rel, *other_rel])


class _RawMPEClimbEnv(SimpleEnv):
    metadata = {
        "name": "mpe_climb", "render_modes": ["human", "rgb_array"], "is_parallelizable": True, "render_fps": 10
    }

    def __init__(
        self, scenario: ClimbScenario, n: int, max_steps: int, continuous_actions: bool, render_mode=None
    ):
        super().__init__(
            scenario=scenario,
            world=scenario.make_world(n),
            max_cycles=max_steps,
            render_mode=render_mode,
            continuous_actions=continuous_actions,
            local_ratio=None,  # the team reward is scenario.reward for every agent
        )


class MPEClimbEnv(aec_to_parallel_wrapper):
    """MPE climb game as a PettingZoo ParallelEnv; `max_steps` steps per episode, ended by truncation."""

    def __init__(
        self, task: MPEClimbTask, n: int = 2, U: int = 5, k: int = 2, delta: float = 0.5,
        landmark_size: float = 0.1, max_steps: int = 100, continuous_actions: bool = False, render_mode=None,
    ):
        check_mpe_settings(n, U, k, delta, landmark_size, max_steps)
        check_mpe_task(task, U, n, landmark_size)
        if task.k != k:
            raise ValueError(f"task k = {task.k} differs from setting k = {k}; draw tasks with the same k")
        scenario = ClimbScenario(task, landmark_size, delta)
        raw = _RawMPEClimbEnv(scenario, n, max_steps, continuous_actions, render_mode)
        # the same wrappers mpe2 puts around its own scenarios
        bounds = wrappers.ClipOutOfBoundsWrapper if continuous_actions else wrappers.AssertOutOfBoundsWrapper
        aec = bounds(raw)
        super().__init__(wrappers.OrderEnforcingWrapper(aec))
        self.task = task
        self.max_steps = max_steps

    def step(self, actions):
        obs, rewards, terminations, truncations, infos = super().step(actions)
        return obs, dict(rewards), terminations, truncations, infos  # the wrapper returns a defaultdict
