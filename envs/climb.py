"""Climb games of MESA (Zhang et al., AAMAS 2023, section 6.2 and Appendix B.1.1).

One-step climb game G(n, k, u, U): n players each pick one of U actions; with #u the number
of players that pick action u, the team reward is 1 if #u = k, 1 - delta if #u = 0, else 0
(Eq. in B.1.1; delta = 1/2, section 6.2). Task space T^one_U = {G(2, k, u, U) : 1 <= k <= 2,
0 <= u < U}; the experiments use U = 10 (20 tasks).

Multi-stage climb game: S stages, stage t is the one-step game G(2, k_t, u_t, U); at stage t
agents observe [t, joint actions of the earlier stages] (B.1.1) and receive that stage's
reward. Task space T^multi_{S,U}: all S-tuples of (k_t, u_t); experiments use S = 5, U = 10.

Both are PettingZoo ParallelEnvs with agents agent_0 .. agent_{n-1}, Discrete(U) actions and
one team reward given to every agent.

Decisions where the paper is silent (ours):
- One-step observation is the constant vector [1.0]: it carries nothing about k or u; 1.0
  rather than 0.0 so a network's first layer sees a non-zero input.
- Multi-stage observation (a fixed-size float32 vector, identical for all agents, and also
  the global state): [stage one-hot (S), joint actions of stages 0..S-1 as one-hots
  (S * n * U), zero rows for stages not yet played]. After the last stage the stage one-hot
  is all zeros (that observation is never acted on).
- Episodes end by *termination* (not truncation) after the last stage: the game itself is
  over, so a critic must not bootstrap past it. Agents are then removed from env.agents.
- The game is deterministic; reset(seed=...) is accepted for the API and seeds nothing.
- Task draws: the whole space is shuffled with task_rng(task_seed) (numpy's default_rng
  on the seed sequence [TASK_STREAM, task_seed]) when small,
  otherwise distinct tasks are drawn by rejection; the first num_train are the training
  tasks and the next num_test the test tasks, so the two are disjoint by construction
  (the paper only says the test tasks "are different from the training tasks", B.1.1).
- n and k are kept general (1 <= k <= n), the paper's task spaces fix n = 2.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

# easy to overlook: default_rng(s) is the same PCG64 stream that an env's reset(seed=s) uses
# (gymnasium's seeding), so with task_seed == env seed the MPE agents would start exactly on
# the landmarks; task draws therefore use the seed sequence [TASK_STREAM, task_seed]
TASK_STREAM = 20230529

# rejection sampling is used when the task space holds more than this many tasks per task
# asked; below it we enumerate the space and shuffle it (exact, and never loops long)
_ENUMERATE_FACTOR = 4


@dataclass(frozen=True)
class ClimbTask:
    """One climb game G(n, k, u, U) of a fixed n and U: reward 1 iff exactly k players pick u."""

    k: int
    u: int


def climb_reward(actions, k: int, u: int, delta: float = 0.5) -> float:
    """Team reward of G(n, k, u, U) for one joint action (B.1.1): 1 if #u = k, 1 - delta if
    #u = 0, else 0. `actions` is any sequence of n action indices; k >= 1 so the cases never overlap."""
    num_u = sum(1 for a in actions if int(a) == u)
    if num_u == k:
        return 1.0
    if num_u == 0:
        return 1.0 - delta
    return 0.0


def check_climb_settings(n: int, U: int, delta: float) -> None:
    """ValueError with a one-line message when a climb-game setting is out of range."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (number of players) must be an integer >= 1, got {n!r}")
    if not isinstance(U, (int, np.integer)) or U < 2:
        raise ValueError(f"U (number of actions) must be an integer >= 2, got {U!r}")
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must lie in [0, 1] (paper: 0.5), got {delta!r}")


def check_climb_task(task, n: int, U: int) -> None:
    """ValueError unless task is a ClimbTask with 1 <= k <= n and 0 <= u < U."""
    if not isinstance(task, ClimbTask):
        raise ValueError(f"a climb task must be ClimbTask(k, u), got {task!r}")
    if not 1 <= task.k <= n:
        raise ValueError(f"task k must satisfy 1 <= k <= n = {n}, got k = {task.k}")
    if not 0 <= task.u < U:
        raise ValueError(f"task u must satisfy 0 <= u < U = {U}, got u = {task.u}")


class _ClimbGameEnv(ParallelEnv):
    """S repeated climb games played by the same n players; subclasses define the observation."""

    def __init__(self, stages: tuple[ClimbTask, ...], n: int, U: int, delta: float):
        check_climb_settings(n, U, delta)
        for task in stages:
            check_climb_task(task, n, U)
        self.stages, self.n, self.U, self.delta = tuple(stages), int(n), int(U), float(delta)
        self.max_steps = len(self.stages)
        self.possible_agents = [f"agent_{i}" for i in range(self.n)]
        self.agents = []
        obs_dim = self._observation_dim()
        # one space object per agent so that seeding one agent's action space seeds only it
        self.observation_spaces = {
            a: spaces.Box(0.0, 1.0, (obs_dim,), np.float32) for a in self.possible_agents
        }
        self.action_spaces = {a: spaces.Discrete(self.U) for a in self.possible_agents}
        self.state_space = spaces.Box(0.0, 1.0, (obs_dim,), np.float32)
        self._stage = 0
        self._history = np.zeros((self.max_steps, self.n, self.U), np.float32)  # [S, n, U]

    def _observation_dim(self) -> int:
        raise NotImplementedError

    def _observation(self) -> np.ndarray:
        raise NotImplementedError

    def observation_space(self, agent):
        return self.observation_spaces[agent]

    def action_space(self, agent):
        return self.action_spaces[agent]

    def state(self) -> np.ndarray:
        """Global state = the shared observation (every agent observes the same vector)."""
        return self._observation()

    def reset(self, seed=None, options=None):
        self.agents = list(self.possible_agents)
        self._stage = 0
        self._history[:] = 0.0
        obs = self._observation()
        return {a: obs.copy() for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions):
        if not self.agents:
            raise RuntimeError("episode is over: call reset() before step()")
        if set(actions) != set(self.agents):
            raise ValueError(f"step() needs one action for each of {self.agents}, got keys {sorted(actions)}")
        joint_action = [int(actions[a]) for a in self.agents]  # [n]
        for a, action in zip(self.agents, joint_action):
            if not 0 <= action < self.U:
                raise ValueError(f"action of {a} must be in 0..{self.U - 1}, got {action}")
        task = self.stages[self._stage]
        reward = climb_reward(joint_action, task.k, task.u, self.delta)
        self._history[self._stage, np.arange(self.n), joint_action] = 1.0
        self._stage += 1
        done = self._stage == self.max_steps
        obs = self._observation()
        agents = self.agents
        if done:
            self.agents = []
        return (
            {a: obs.copy() for a in agents},
            {a: reward for a in agents},
            {a: done for a in agents},
            {a: False for a in agents},
            {a: {} for a in agents},
        )


class OneStepClimbEnv(_ClimbGameEnv):
    """One-step climb game G(n, k, u, U) (section 6.2): one joint action, then termination.

    The observation is the constant [1.0]: nothing about k or u (paper: no information given).
    """

    metadata = {"name": "climb_one_step", "render_modes": [], "is_parallelizable": True}

    def __init__(self, task: ClimbTask, n: int = 2, U: int = 10, delta: float = 0.5):
        super().__init__((task,), n, U, delta)
        self.task = task

    def _observation_dim(self) -> int:
        return 1

    def _observation(self) -> np.ndarray:
        return np.ones(1, np.float32)


class MultiStageClimbEnv(_ClimbGameEnv):
    """Multi-stage climb game (section 6.2, B.1.1): stage t is G(n, k_t, u_t, U); S steps.

    Observation [S + S*n*U]: stage one-hot [S], then the joint actions played so far as
    one-hots [S, n, U] flattened, zeros for stages not yet played (paper: O_t = [t, h_{t-1}]).
    """

    metadata = {"name": "climb_multi_stage", "render_modes": [], "is_parallelizable": True}

    def __init__(self, task: tuple[ClimbTask, ...], n: int = 2, U: int = 10, S: int = 5, delta: float = 0.5):
        if not isinstance(S, (int, np.integer)) or S < 1:
            raise ValueError(f"S (number of stages) must be an integer >= 1, got {S!r}")
        if not isinstance(task, tuple) or len(task) != S:
            raise ValueError(f"a multi-stage task must be a tuple of S = {S} ClimbTask(k, u), got {task!r}")
        super().__init__(task, n, U, delta)
        self.task = task

    def _observation_dim(self) -> int:
        return self.max_steps + self.max_steps * self.n * self.U

    def _observation(self) -> np.ndarray:
        stage_one_hot = np.zeros(self.max_steps, np.float32)  # [S]; all zeros after the last stage
        if self._stage < self.max_steps:
            stage_one_hot[self._stage] = 1.0
        return np.concatenate([stage_one_hot, self._history.reshape(-1)])  # [S + S*n*U]


def task_rng(task_seed: int) -> np.random.Generator:
    """The generator every task draw uses: independent of env.reset(seed=task_seed)'s stream."""
    if not isinstance(task_seed, (int, np.integer)) or task_seed < 0:
        raise ValueError(f"task_seed must be an integer >= 0, got {task_seed!r}")
    return np.random.default_rng([TASK_STREAM, int(task_seed)])


def one_step_task_space(n: int = 2, U: int = 10) -> list[ClimbTask]:
    """T^one_U for n players: every ClimbTask(k, u), 1 <= k <= n, 0 <= u < U (B.1.1), k-major order."""
    check_climb_settings(n, U, 0.5)
    return [ClimbTask(k, u) for k in range(1, n + 1) for u in range(U)]


def check_task_counts(num_train: int, num_test: int, space_size: float = math.inf, space_name: str = "") -> int:
    """num_train + num_test; ValueError if either is not an integer >= 0 or the space is too small."""
    for name, value in (("num_train", num_train), ("num_test", num_test)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    total = int(num_train + num_test)
    if total > space_size:
        raise ValueError(
            f"asked for {num_train} + {num_test} = {total} distinct tasks "
            f"but {space_name} holds only {space_size}"
        )
    return total


def sample_one_step_tasks(num_train: int, num_test: int, task_seed: int, n: int = 2, U: int = 10):
    """Disjoint (train, test) lists of one-step tasks drawn uniformly without replacement from T^one_U."""
    space = one_step_task_space(n, U)
    total = check_task_counts(num_train, num_test, len(space), f"T^one with n={n}, U={U}")
    order = task_rng(task_seed).permutation(len(space))[:total]
    tasks = [space[i] for i in order]
    return tasks[:num_train], tasks[num_train:]


def sample_multi_stage_tasks(
    num_train: int, num_test: int, task_seed: int, S: int = 5, n: int = 2, U: int = 10
):
    """Disjoint (train, test) lists of multi-stage tasks (S-tuples of ClimbTask) drawn uniformly
    without replacement from T^multi_{S,U}; the space has (n*U)^S tasks, so it is sampled, not
    enumerated, unless it is small."""
    if not isinstance(S, (int, np.integer)) or S < 1:
        raise ValueError(f"S (number of stages) must be an integer >= 1, got {S!r}")
    stage_space = one_step_task_space(n, U)
    space_size = len(stage_space) ** S
    total = check_task_counts(num_train, num_test, space_size, f"T^multi with S={S}, n={n}, U={U}")
    rng = task_rng(task_seed)
    if space_size <= _ENUMERATE_FACTOR * max(total, 1):
        space = list(itertools.product(stage_space, repeat=S))
        tasks = [space[i] for i in rng.permutation(space_size)[:total]]
    else:
        tasks, seen = [], set()
        while len(tasks) < total:
            task = tuple(stage_space[i] for i in rng.integers(len(stage_space), size=S))
            if task not in seen:
                seen.add(task)
                tasks.append(task)
    return tasks[:num_train], tasks[num_train:]
