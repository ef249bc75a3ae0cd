"""envs/dmc.py: the DMC15 tasks and gymnasium ids the CE scripts train on.

What the scripts rely on: float32 flat observations, a Box action space, DMC episodes that end
by truncation (never termination) after 1000 steps, a clear error for ids the scripts cannot
use, and reproducible seeding.
"""

import gymnasium as gym
import numpy as np
import pytest

from envs.dmc import DMC15, dmc_ids, make_env


def test_dmc15_is_the_papers_table_1():
    assert len(DMC15) == 15 and len(set(DMC15)) == 15
    assert set(DMC15) <= set(dmc_ids())


@pytest.mark.parametrize("env_id", DMC15)
def test_dmc15_builds_with_float32_flat_obs_and_box_actions(env_id):
    env = make_env(env_id, seed=0)
    try:
        assert isinstance(env.observation_space, gym.spaces.Box)
        assert env.observation_space.dtype == np.float32
        assert len(env.observation_space.shape) == 1
        assert isinstance(env.action_space, gym.spaces.Box)
        assert len(env.action_space.shape) == 1
        obs, _ = env.reset()
        assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape
        assert np.isfinite(obs).all() and np.isfinite(reward)
        assert not terminated and not truncated
    finally:
        env.close()


def test_cartpole_swingup_episode_ends_by_truncation_at_step_1000():
    env = make_env("cartpole-swingup", seed=0)
    env.reset()
    for t in range(1, 1001):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated, f"DMC never terminates, but did at step {t}"
        if truncated:
            break
    assert truncated and t == 1000, f"episode truncated at step {t}, expected 1000"
    env.close()


def test_hopper_v5_builds():
    env = make_env("Hopper-v5", seed=0)
    obs, _ = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (11,)
    assert isinstance(env.action_space, gym.spaces.Box) and env.action_space.shape == (3,)
    env.close()


def test_unknown_id_raises_value_error_listing_the_dmc15_ids():
    with pytest.raises(ValueError) as excinfo:
        make_env("cheetah-sprint", seed=0)
    message = str(excinfo.value)
    assert "cheetah-sprint" in message
    for env_id in DMC15:
        assert env_id in message


def test_discrete_action_id_raises_value_error():
    with pytest.raises(ValueError, match="Discrete"):
        make_env("CartPole-v1", seed=0)


def _rollout(env_id, seed, steps=30):
    env = make_env(env_id, seed=seed)
    observations = [env.reset()[0]]
    for _ in range(steps):
        observations.append(env.step(env.action_space.sample())[0])
    env.close()
    return np.stack(observations)


@pytest.mark.parametrize("env_id", ["cartpole-swingup", "Pendulum-v1"])
def test_seeding_is_reproducible(env_id):
    # Same seed: same initial state and the same action-space samples, hence the same rollout.
    np.testing.assert_array_equal(_rollout(env_id, seed=3), _rollout(env_id, seed=3))
    # A different seed must change it, or the first check would hold for an unseeded env too.
    assert not np.array_equal(_rollout(env_id, seed=3), _rollout(env_id, seed=4))


@pytest.mark.parametrize("env_id, scale", [("quadruped-run", None), ("Pendulum-v1", 2.0), ("cartpole-swingup", 1.0)])
def test_actions_are_rescaled_to_the_unit_box(env_id, scale):
    """The agent acts in [-1, 1]^A on every task (jaxrl2's RescaleAction); the env maps it to its own box."""
    env = make_env(env_id, seed=0)
    assert (env.action_space.low == -1).all() and (env.action_space.high == 1).all()
    inner = env.unwrapped.action_space  # the task's own bounds
    if scale is None:  # quadruped: a box other than [-1, 1], the case that motivated the rescale
        assert not ((inner.low == -1).all() and (inner.high == 1).all())
    else:
        assert np.allclose(inner.high, scale) and np.allclose(inner.low, -scale)
    if env_id == "Pendulum-v1":  # the torque the physics receives for the unit action 1: the box's top, 2
        env.reset(seed=0)
        theta, theta_dot = env.unwrapped.state
        env.step(np.ones(1, np.float32))
        g, m, l, dt = env.unwrapped.g, env.unwrapped.m, env.unwrapped.l, env.unwrapped.dt
        expected = theta_dot + (3 * g / (2 * l) * np.sin(theta) + 3.0 / (m * l**2) * 2.0) * dt
        assert np.isclose(env.unwrapped.state[1], np.clip(expected, -8, 8))
    env.close()
