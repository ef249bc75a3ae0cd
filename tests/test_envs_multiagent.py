"""Tests of MESA's environments (envs/climb.py, mpe_climb.py, swimmer_climb.py, multiagent.py).

Rewards are checked against values worked out by hand; every environment runs PettingZoo's
own parallel_api_test. Runs in a few seconds on CPU.
"""

import math

import numpy as np
import pytest
from gymnasium import spaces
from pettingzoo.test import parallel_api_test

from envs.climb import ClimbTask, climb_reward
from envs.multiagent import DEFAULT_SETTINGS, ENV_IDS, check_disjoint, make_env, sample_tasks

# ---------------------------------------------------------------------------------------------
# climb_reward: every joint action of G(2, k, u, 3), by hand. Row = action of player 0, column =
# action of player 1. #u = 2 on the u-th diagonal entry, #u = 1 on the rest of row u and column u,
# #u = 0 elsewhere; reward 1 where #u = k, 0.5 where #u = 0, 0 otherwise.
# ---------------------------------------------------------------------------------------------
HAND_TABLES = {
    (1, 0): [[0.0, 1.0, 1.0], [1.0, 0.5, 0.5], [1.0, 0.5, 0.5]],
    (2, 0): [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.5, 0.5]],
    (1, 1): [[0.5, 1.0, 0.5], [1.0, 0.0, 1.0], [0.5, 1.0, 0.5]],
    (2, 1): [[0.5, 0.0, 0.5], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]],
    (1, 2): [[0.5, 0.5, 1.0], [0.5, 0.5, 1.0], [1.0, 1.0, 0.0]],
    (2, 2): [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]],
}


@pytest.mark.parametrize("k,u", sorted(HAND_TABLES))
def test_climb_reward_every_joint_action(k, u):
    table = HAND_TABLES[(k, u)]
    for a0 in range(3):
        for a1 in range(3):
            assert climb_reward([a0, a1], k, u) == table[a0][a1], (k, u, a0, a1)


def test_climb_reward_three_players_and_delta():
    assert climb_reward([4, 4, 0], k=2, u=4) == 1.0  # #u = 2 = k
    assert climb_reward([4, 4, 4], k=2, u=4) == 0.0  # #u = 3: neither k nor 0
    assert climb_reward([4, 1, 0], k=2, u=4) == 0.0  # #u = 1
    assert climb_reward([1, 2, 3], k=2, u=4) == 0.5  # #u = 0
    assert climb_reward([1, 2, 3], k=2, u=4, delta=0.2) == pytest.approx(0.8)
    assert climb_reward(np.array([3, 3]), k=2, u=3, delta=1.0) == 1.0  # numpy actions work
    assert climb_reward(np.array([0, 1]), k=2, u=3, delta=1.0) == 0.0


def test_one_step_env_rewards_match_climb_reward_and_observation_is_constant():
    obs_seen = []
    for task in (ClimbTask(1, 7), ClimbTask(2, 3)):
        env = make_env("climb-one-step", task)
        for a0, a1 in [(7, 7), (7, 0), (3, 3), (0, 1)]:
            obs, _ = env.reset(seed=0)
            obs_seen.append(obs["agent_0"])
            _, rew, term, trunc, _ = env.step({"agent_0": a0, "agent_1": a1})
            assert rew == {a: climb_reward([a0, a1], task.k, task.u) for a in env.possible_agents}
            assert all(term.values()) and not any(trunc.values()) and env.agents == []
    assert all(np.array_equal(o, obs_seen[0]) for o in obs_seen)  # nothing about k or u


def test_multi_stage_observation_encodes_stage_and_earlier_joint_actions():
    S, n, U = 3, 2, 4
    task = (ClimbTask(2, 1), ClimbTask(1, 0), ClimbTask(2, 3))
    env = make_env("climb-multi-stage", task, S=S, n=n, U=U)
    obs, _ = env.reset(seed=0)
    assert obs["agent_0"].shape == (S + S * n * U,) == env.observation_space("agent_0").shape
    expected = np.zeros(S + S * n * U, np.float32)
    expected[0] = 1.0  # stage 0, no history
    np.testing.assert_array_equal(obs["agent_0"], expected)
    played = [(1, 1), (0, 2), (3, 0)]
    rewards = []
    for t, (a0, a1) in enumerate(played):
        obs, rew, term, trunc, _ = env.step({"agent_0": a0, "agent_1": a1})
        rewards.append(rew["agent_1"])
        history = np.zeros((S, n, U), np.float32)  # [S, n, U]
        for s, (b0, b1) in enumerate(played[: t + 1]):
            history[s, 0, b0] = history[s, 1, b1] = 1.0
        stage = np.zeros(S, np.float32)
        if t + 1 < S:
            stage[t + 1] = 1.0
        np.testing.assert_array_equal(obs["agent_0"], np.concatenate([stage, history.ravel()]))
        np.testing.assert_array_equal(obs["agent_1"], obs["agent_0"])
        np.testing.assert_array_equal(env.state(), obs["agent_0"])
        assert all(term.values()) == (t == S - 1) and not any(trunc.values())
    # stage 0: both play u=1, k=2 -> 1; stage 1: #0 = 1 = k -> 1; stage 2: #3 = 1, k = 2 -> 0
    assert rewards == [1.0, 1.0, 0.0]
    assert env.agents == []


# ---------------------------------------------------------------------------------------------
# every environment: PettingZoo's API test and our interface contract
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_parallel_api_and_interface_contract(env_id):
    train, _ = sample_tasks(env_id, 2, 1, task_seed=0)
    env = make_env(env_id, train[0])
    parallel_api_test(env, num_cycles=env.max_steps + 5)

    n = len(env.possible_agents)
    assert env.possible_agents == [f"agent_{i}" for i in range(n)]
    for agent in env.possible_agents:
        assert isinstance(env.observation_space(agent), spaces.Box)
        assert env.observation_space(agent).dtype == np.float32
        expected_action = spaces.Box if env_id == "swimmer-climb" else spaces.Discrete
        assert isinstance(env.action_space(agent), expected_action)
    assert isinstance(env.state_space, spaces.Box)

    obs, infos = env.reset(seed=3)
    obs_again, _ = env.reset(seed=3)
    for agent in env.possible_agents:
        assert obs[agent].dtype == np.float32 and env.observation_space(agent).contains(obs[agent])
        np.testing.assert_array_equal(obs[agent], obs_again[agent])  # seeded resets reproduce
    for agent in env.possible_agents:
        env.action_space(agent).seed(0)
    steps = 0
    while env.agents:
        state = env.state()
        assert state.dtype == np.float32 and state.shape == env.state_space.shape
        _, rew, term, trunc, _ = env.step({a: env.action_space(a).sample() for a in env.agents})
        steps += 1
        assert len(set(rew.values())) == 1  # one team reward
        assert isinstance(rew["agent_0"], float)
    assert steps == env.max_steps
    if env_id.startswith("climb"):  # the game is over: termination; continuing tasks: truncation
        assert all(term.values()) and not any(trunc.values())
    else:
        assert all(trunc.values()) and not any(term.values())


# ---------------------------------------------------------------------------------------------
# task draws
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_task_draws_are_seeded_disjoint_and_reproducible(env_id):
    train, test = sample_tasks(env_id, 10, 3, task_seed=7)
    assert (len(train), len(test)) == (10, 3)
    assert len(set(train)) == 10 and len(set(test)) == 3
    assert not set(train) & set(test)
    check_disjoint(train, test)
    assert (train, test) == sample_tasks(env_id, 10, 3, task_seed=7)
    assert (train, test) != sample_tasks(env_id, 10, 3, task_seed=8)
    for task in train + test:
        hash(task), repr(task)
        make_env(env_id, task)  # every drawn task builds


def test_task_spaces():
    train, test = sample_tasks("climb-one-step", 12, 8, task_seed=0)  # T^one_10 holds exactly 20
    assert set(train + test) == {ClimbTask(k, u) for k in (1, 2) for u in range(10)}
    train, _ = sample_tasks("climb-multi-stage", 5, 0, task_seed=0)
    assert all(len(t) == 5 and all(1 <= s.k <= 2 and 0 <= s.u < 10 for s in t) for t in train)
    train, _ = sample_tasks("climb-multi-stage", 4, 0, task_seed=0, S=1, U=2)  # tiny space: all 4
    assert len(set(train)) == 4
    train, _ = sample_tasks("mpe-climb", 20, 0, task_seed=0, n=3, U=6)
    for task in train:
        pos = np.array(task.landmarks)  # [U, 2]
        dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)[np.triu_indices(6, 1)]
        assert dist.min() > 2 * DEFAULT_SETTINGS["mpe-climb"]["landmark_size"] and task.k == 2 and 0 <= task.u < 6
        assert np.abs(pos).max() <= 1.0
    assert len({t.landmarks for t in train}) == 20
    train, _ = sample_tasks("swimmer-climb", 50, 0, task_seed=0)
    assert all(-math.radians(30) < a < math.radians(30) for a in train)


# ---------------------------------------------------------------------------------------------
# bad input: ValueError naming what is valid
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: make_env("climb", ClimbTask(1, 0)), "valid ids: climb-one-step, climb-multi-stage, mpe-climb, swimmer-climb"),
        (lambda: sample_tasks("mpe", 1, 1, 0), "valid ids"),
        (lambda: make_env("climb-one-step", ClimbTask(1, 0), N=2), r"valid settings: n, U, delta"),
        (lambda: sample_tasks("climb-one-step", 15, 6, 0), "21 distinct tasks but T\\^one with n=2, U=10 holds only 20"),
        (lambda: sample_tasks("climb-one-step", 1, 1, 0, U=1), "U .* must be an integer >= 2"),
        (lambda: sample_tasks("climb-multi-stage", 1, 1, 0, S=0), "S .* must be an integer >= 1"),
        (lambda: sample_tasks("climb-one-step", -1, 1, 0), "num_train must be an integer >= 0"),
        (lambda: sample_tasks("climb-one-step", 1, 1, -5), "task_seed must be an integer >= 0"),
        (lambda: make_env("climb-one-step", ClimbTask(3, 0)), "1 <= k <= n = 2"),
        (lambda: make_env("climb-one-step", ClimbTask(1, 10)), "0 <= u < U = 10"),
        (lambda: make_env("climb-one-step", (1, 0)), r"ClimbTask\(k, u\)"),
        (lambda: make_env("climb-multi-stage", (ClimbTask(1, 0),) * 4), "tuple of S = 5"),
        (lambda: sample_tasks("mpe-climb", 1, 1, 0, n=2, k=3), "1 <= k <= n = 2"),
        (lambda: sample_tasks("mpe-climb", 1, 1, 0, U=1), "U .* must be an integer >= 2"),
        (lambda: sample_tasks("mpe-climb", 1, 1, 0, U=60, landmark_size=0.3), "could not place U = 60"),
        (lambda: make_env("mpe-climb", sample_tasks("mpe-climb", 1, 0, 0)[0][0], U=6), "U = 6"),
        (lambda: make_env("swimmer-climb", 2.0), "target angle alpha in radians"),
        (lambda: make_env("swimmer-climb", 0.1, eps=0.0), "eps must be an angle"),
        (lambda: make_env("mpe-climb", sample_tasks("mpe-climb", 1, 0, 0)[0][0], max_steps=0), "max_steps must be"),
        (lambda: check_disjoint([ClimbTask(1, 0), ClimbTask(2, 0)], [ClimbTask(2, 0)]), r"also in training: \[ClimbTask\(k=2, u=0\)\]"),
    ],
)
def test_bad_input_raises_value_error_naming_what_is_valid(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_step_rejects_bad_actions():
    env = make_env("climb-one-step", ClimbTask(1, 0))
    env.reset()
    with pytest.raises(ValueError, match="0..9"):
        env.step({"agent_0": 10, "agent_1": 0})
    with pytest.raises(ValueError, match="one action for each of"):
        env.step({"agent_0": 1})


# ---------------------------------------------------------------------------------------------
# MPE: agents placed by hand
# ---------------------------------------------------------------------------------------------
def _place_and_step(env, positions):
    """Put the agents at `positions` [n, 2] at rest, take the no-op action, return the team reward."""
    for agent, pos in zip(env.unwrapped.world.agents, positions):
        agent.state.p_pos = np.asarray(pos, dtype=np.float64)
        agent.state.p_vel = np.zeros(2)
    _, rew, _, _, _ = env.step({a: 0 for a in env.agents})  # action 0 = no-op: nobody moves
    assert len(set(rew.values())) == 1
    return rew["agent_0"]


def test_mpe_reward_with_agents_placed_by_hand():
    from envs.mpe_climb import MPEClimbTask

    L = ((-0.5, -0.5), (0.5, 0.5), (0.5, -0.5), (-0.5, 0.5), (0.0, 0.0))
    task = MPEClimbTask(L, u=1, k=2)
    env = make_env("mpe-climb", task, n=3, U=5)
    env.reset(seed=0)
    on = lambda j, dx=0.0: (L[j][0] + dx, L[j][1])  # noqa: E731
    off = (0.9, 0.9)
    cases = [
        ([on(1), on(1, 0.05), on(0)], 1.0),  # f_u = 2 = k, everyone on a landmark
        ([on(1), on(1), on(1)], 0.0),  # f_u = 3
        ([on(1), on(0), on(2)], 0.0),  # f_u = 1
        ([on(0), on(2), on(2)], 0.5),  # f_u = 0, everyone on a landmark
        ([on(0), on(2), off], 0.0),  # f_u = 0 but one agent on no landmark
        ([on(1), on(1), off], 0.0),  # f_u = k but one agent on no landmark
        ([on(1, 0.09), on(1, -0.09), on(4)], 1.0),  # inside the radius 0.1
        ([on(1, 0.11), on(1), on(4)], 0.0),  # just outside: not on any landmark
    ]
    for positions, expected in cases:
        assert _place_and_step(env, positions) == expected, positions

    two = make_env("mpe-climb", task, n=2, U=5)  # the paper's 2-agent setting, k = 2
    two.reset(seed=0)
    assert _place_and_step(two, [on(1), on(1)]) == 1.0
    assert _place_and_step(two, [on(3), on(4)]) == 0.5
    assert _place_and_step(two, [on(1), on(4)]) == 0.0


def test_mpe_observation_layout_and_target_not_observed():
    from envs.mpe_climb import MPEClimbTask

    L = ((-0.5, -0.5), (0.5, 0.5), (0.5, -0.5), (-0.5, 0.5), (0.0, 0.0))
    envs = [make_env("mpe-climb", MPEClimbTask(L, u=u, k=2), n=3, U=5) for u in (0, 3)]
    obs = [e.reset(seed=11)[0] for e in envs]
    np.testing.assert_array_equal(obs[0]["agent_1"], obs[1]["agent_1"])  # u changes nothing observed
    world = envs[0].unwrapped.world
    me, others = world.agents[1], [world.agents[0], world.agents[2]]
    expected = np.concatenate(
        [me.state.p_vel, *[np.asarray(p) - me.state.p_pos for p in L], *[a.state.p_pos - me.state.p_pos for a in others]]
    )  # [2 + 2U + 2(n-1)] = [16]
    np.testing.assert_allclose(obs[0]["agent_1"], expected.astype(np.float32), rtol=1e-6)


def test_mpe_continuous_actions():
    train, _ = sample_tasks("mpe-climb", 1, 0, task_seed=0)
    env = make_env("mpe-climb", train[0], continuous_actions=True)
    assert env.action_space("agent_0") == spaces.Box(0.0, 1.0, (5,), np.float32)
    env.reset(seed=0)
    env.step({a: env.action_space(a).sample() for a in env.agents})


# ---------------------------------------------------------------------------------------------
# Swimmer: joint angles set by hand
# ---------------------------------------------------------------------------------------------
def test_swimmer_reward_function_by_hand():
    from envs.swimmer_climb import swimmer_climb_reward

    alpha, eps = math.radians(20), math.radians(5)
    d = math.radians
    assert swimmer_climb_reward([d(20), d(20)], alpha, eps) == 1.0
    assert swimmer_climb_reward([d(24), d(16.5)], alpha, eps) == 1.0  # both within 5 deg
    assert swimmer_climb_reward([d(26), d(14)], alpha, eps) == 0.5  # both farther
    assert swimmer_climb_reward([d(-20), d(0)], alpha, eps) == 0.5
    assert swimmer_climb_reward([d(20), d(0)], alpha, eps) == 0.0  # only one close
    assert swimmer_climb_reward([d(0), d(21)], alpha, eps) == 0.0
    assert swimmer_climb_reward([alpha + eps, alpha], alpha, eps) == 0.0  # exactly eps counts as far


def test_swimmer_reward_with_joint_angles_set_by_hand():
    alpha = math.radians(20)
    env = make_env("swimmer-climb", alpha)
    env.reset(seed=0)
    data = env.unwrapped.single_agent_env.unwrapped.data
    zero = {a: np.zeros(1, np.float32) for a in env.possible_agents}
    d = math.radians
    for angles, expected in [((20, 20), 1.0), ((21, 19), 1.0), ((20, -10), 0.0), ((-10, 20), 0.0), ((-10, 50), 0.5)]:
        data.qpos[3:5] = [d(angles[0]), d(angles[1])]  # motor1_rot (agent_0), motor2_rot (agent_1)
        data.qvel[:] = 0.0
        np.testing.assert_allclose(env.joint_angles(), [d(angles[0]), d(angles[1])])
        _, rew, _, _, _ = env.step(zero)  # zero torque: the hinges barely move in one step
        assert rew == {"agent_0": expected, "agent_1": expected}, angles
    obs = [make_env("swimmer-climb", a).reset(seed=5)[0]["agent_0"] for a in (0.1, -0.3)]
    np.testing.assert_array_equal(obs[0], obs[1])  # alpha is not observed
