"""Tests of mesa_maddpg.py and baselines/maddpg.py: MESA's equations on hand-worked values,
the shared blocks, smoke runs on every environment (main() and the command line), seeding,
saving/loading exploration policies, bad input, the MADDPG learner (its GRU against torch.nn.GRU,
values and gradients; the rMADDPG options --share-policy, epsilon-greedy, --greedy-target-actions),
and four learning checks: MADDPG's equilibria
on a k = 2 and a k = 1 climb stage, and the exploration policies' Eq. 6 returns and coverage of M*
with the paper's readings of Eq. 6 and Algorithm 1 line 19 (the defaults) and with the earlier ones.
Run: /work/venv/bin/pytest tests/test_mesa.py -q (about 4 minutes on 2 cores)."""

import copy
import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mesa = load("mesa_maddpg.py", "mesa_maddpg")
maddpg = load("baselines/maddpg.py", "baselines_maddpg")


# ----------------------------------------------------------------------------- Eq. 5
def test_relabel_rewards_hand_worked():
    g = 0.05
    # positive steps keep their reward; zero steps before one get gamma^(t'-t) r_t'
    r = torch.tensor([0.0, 0.0, 1.0])
    assert torch.allclose(mesa.relabel_rewards(r, g), torch.tensor([0.0025, 0.05, 1.0]))
    # the *first* later positive step counts, not the largest
    r = torch.tensor([0.0, 0.5, 0.0, 1.0])
    assert torch.allclose(mesa.relabel_rewards(r, g), torch.tensor([0.025, 0.5, 0.05, 1.0]))
    # zeros after the last positive step stay 0 (no t' exists)
    r = torch.tensor([1.0, 0.0, 0.0])
    assert torch.allclose(mesa.relabel_rewards(r, g), torch.tensor([1.0, 0.0, 0.0]))
    # all zeros, a single step, and a batch [B, T] relabeled row by row
    assert torch.equal(mesa.relabel_rewards(torch.zeros(4), g), torch.zeros(4))
    assert torch.equal(mesa.relabel_rewards(torch.tensor([0.7]), g), torch.tensor([0.7]))
    batch = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    assert torch.allclose(mesa.relabel_rewards(batch, g), torch.tensor([[0.1, 2.0], [0.0, 0.0]]))


def test_high_reward_pairs_keep_valuable_and_relabeled():
    features = torch.arange(10.0).reshape(5, 2)  # [T=5, D=2]
    # R* = 1: step 3 is valuable; steps 0 and 2 lead to it (the 0.5 at step 1 is not valuable,
    # so it is zeroed first and relabeled like a zero step); step 4 leads nowhere
    rewards = torch.tensor([0.0, 0.5, 0.0, 1.0, 0.0])
    pairs, r_hat = mesa.high_reward_pairs(features, rewards, threshold=1.0, gamma=0.05)
    assert torch.equal(pairs, features[:4])
    assert torch.allclose(r_hat, torch.tensor([0.05**3, 0.05**2, 0.05, 1.0]))
    pairs, r_hat = mesa.high_reward_pairs(features, torch.full((5,), 0.5), threshold=1.0, gamma=0.05)
    assert pairs.shape == (0, 2) and r_hat.shape == (0,)


# ----------------------------------------------------------------------------- counts and Eq. 6
def test_trajectory_pseudo_counts_start_at_global_and_include_current_visit():
    global_counts = torch.tensor([2.0, 0.0, 5.0])  # N_hat [C=3]
    clusters = torch.tensor([0, 1, 0, 0, 2])
    assert torch.equal(mesa.trajectory_pseudo_counts(clusters, global_counts), torch.tensor([3.0, 1.0, 4.0, 5.0, 6.0]))
    # N = 1 trajectory step, N_hat = 0: the first visit counts 1, so f_d = 1
    assert torch.equal(mesa.trajectory_pseudo_counts(torch.tensor([1]), torch.zeros(3)), torch.tensor([1.0]))


def test_count_decay_is_one_over_x_to_the_fifth():
    assert torch.allclose(mesa.count_decay(torch.tensor([1.0, 2.0, 3.0]), 5.0), torch.tensor([1.0, 1 / 32, 1 / 243]))


def test_densified_rewards_relabel_towards_valuable_steps_only():
    # Eq. 5 as 5.1.1 applies it (R* = 1): the climb games' 0.5 is not valuable, so it is relabeled
    # like a zero step; the same r_hat_t weights Eq. 6 (Algorithm 1 line 13)
    r = torch.tensor([0.5, 0.0, 1.0, 0.5, 0.0])
    assert torch.allclose(mesa.densified_rewards(r, 1.0, 0.05), torch.tensor([0.0025, 0.05, 1.0, 0.0, 0.0]))
    assert torch.equal(mesa.densified_rewards(torch.full((3,), 0.5), 1.0, 0.05), torch.zeros(3))
    # R* = 0.5: then 0.5 is valuable and is its own r_hat
    assert torch.allclose(mesa.densified_rewards(r, 0.5, 0.05), torch.tensor([0.5, 0.05, 1.0, 0.5, 0.0]))


def test_nearest_in_mstar_and_exploration_reward_on_hand_made_mstar():
    mstar = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]])  # M* [3, D=2]
    mstar_r_hat = torch.tensor([1.0, 0.05, 1.0])
    features = torch.tensor([[0.0, 0.1], [1.0, 0.2], [5.0, 5.0], [0.0, 2.6]])  # [T=4, 2]
    distance, nearest = mesa.nearest_in_mstar(features, mstar)
    assert torch.equal(nearest, torch.tensor([0, 1, 2, 2]))
    assert torch.allclose(distance, torch.tensor([0.1, 0.2, (25 + 4) ** 0.5, 0.4]))
    counts = torch.tensor([1.0, 2.0, 1.0, 3.0])
    # Eq. 6 weighted by the nearest element's r_hat (--eq6-r-hat nearest):
    # step 0: nearest d* = [0, 0] at 0.1 < eps, r_hat 1, f_d(1) = 1 -> 1
    # step 1: nearest [1, 0] at 0.2, r_hat 0.05, f_d(2) = 1/32 -> 0.0015625
    # step 2: nearest [0, 3] at ~5.39 >= eps -> 0
    # step 3: nearest [0, 3] at 0.4, r_hat 1, f_d(3) = 1/243
    reward = mesa.exploration_reward(mstar_r_hat[nearest], distance, counts, eps=0.5, power=5.0)
    assert torch.allclose(reward, torch.tensor([1.0, 0.05 / 32, 0.0, 1 / 243]))
    # Eq. 6 as written (the default): r_hat_t of the rollout's own steps; rewards 0, 1, 0, 0 give
    # r_hat_t = 0.05 (step 0 leads to the valuable step 1), 1, 0, 0 (nothing valuable follows)
    r_hat_t = mesa.densified_rewards(torch.tensor([0.0, 1.0, 0.0, 0.0]), 1.0, 0.05)
    assert torch.allclose(r_hat_t, torch.tensor([0.05, 1.0, 0.0, 0.0]))
    reward = mesa.exploration_reward(r_hat_t, distance, counts, eps=0.5, power=5.0)
    # step 0: 0.05 x f_d(1) = 0.05; step 1: 1 x 1/32; step 2: far from M* -> 0; step 3: near M* but r_hat_t 0 -> 0
    assert torch.allclose(reward, torch.tensor([0.05, 1 / 32, 0.0, 0.0]))
    # exactly eps away is outside (strict <, Eq. 6)
    assert mesa.exploration_reward(torch.ones(1), torch.tensor([0.5]), torch.ones(1), 0.5, 5.0) == 0


def test_updated_global_counts_add_the_visits_of_every_trajectory():
    # Algorithm 1 line 19: N_hat [C=3] plus the visits of the trajectories of D
    global_counts = torch.tensor([1.0, 0.0, 2.0])
    visited = [torch.tensor([0, 0, 2]), torch.tensor([1]), torch.tensor([2, 2])]
    assert torch.equal(mesa.updated_global_counts(global_counts, visited), torch.tensor([3.0, 1.0, 5.0]))
    assert torch.equal(global_counts, torch.tensor([1.0, 0.0, 2.0]))  # a new tensor, N_hat itself untouched
    assert torch.equal(mesa.updated_global_counts(global_counts, []), global_counts)  # no trajectory
    # the last batch only (--global-count-from last-batch) is the same sum over fewer trajectories
    assert torch.equal(mesa.updated_global_counts(global_counts, visited[-1:]), torch.tensor([1.0, 0.0, 4.0]))


def test_pseudo_count_and_eq6_together_decay_within_a_trajectory():
    # M* = two joint actions of a one-state game; the hash puts each in its own cluster
    mstar = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    centroids = mesa.kmeans(mstar, 2, 10, torch.Generator().manual_seed(0))
    trajectory = mstar[[0, 0, 1, 0]]  # [T=4, D]: visits cluster of pair 0 three times
    clusters = mesa.hash_pairs(trajectory, centroids)
    global_counts = torch.zeros(2)
    global_counts[clusters[2]] = 1.0  # an earlier policy covered pair 1 once
    counts = mesa.trajectory_pseudo_counts(clusters, global_counts)
    assert torch.equal(counts, torch.tensor([1.0, 2.0, 2.0, 3.0]))
    distance, _ = mesa.nearest_in_mstar(trajectory, mstar)
    reward = mesa.exploration_reward(torch.ones(4), distance, counts, eps=0.7, power=5.0)
    assert torch.allclose(reward, torch.tensor([1.0, 1 / 32, 1 / 32, 1 / 243]))


def test_kmeans_separates_blobs_and_clamps_clusters():
    gen = torch.Generator().manual_seed(0)
    blob = torch.randn(50, 2, generator=gen) * 0.05
    points = torch.cat([blob + torch.tensor([5.0, 5.0]), blob - torch.tensor([5.0, 5.0])])
    centroids = mesa.kmeans(points, 2, 20, torch.Generator().manual_seed(1))
    centroids = centroids[centroids[:, 0].argsort()]
    assert torch.allclose(centroids, torch.tensor([[-5.0, -5.0], [5.0, 5.0]]) + blob.mean(0), atol=1e-4)
    assert mesa.kmeans(points[:3], 8, 5, torch.Generator().manual_seed(0)).shape == (3, 2)  # C > M
    assert torch.equal(mesa.hash_pairs(points[:2], centroids), torch.tensor([1, 1]))


def test_collection_budget_is_table1s_per_training_task():
    # Table 1's 30k collection steps per training task (Algorithm 1 line 4 trains f on each; read as a
    # total, 3000 per task, every step was random warm-up), all tasks together in --collect-steps
    assert mesa.setup(mesa.Args(env_id="climb-one-step"))[0].collect_steps == 10 * 30_000
    assert mesa.setup(mesa.Args(env_id="climb-multi-stage", num_train_tasks=4))[0].collect_steps == 4 * 30_000
    args = mesa.setup(mesa.Args(env_id="climb-one-step", collect_steps=30_000))[0]
    assert args.collect_steps // args.num_train_tasks == args.learning_starts  # the earlier reading: no training step
    assert mesa.COLLECT_STEPS_PER_TASK == {"climb-one-step": 30_000, "climb-multi-stage": 30_000, "mpe-climb": 500_000,
                                           "swimmer-climb": 1_000_000}


def test_exploration_probability_anneals_linearly():
    p = lambda step: mesa.exploration_probability(step, 1000, 1.0, 0.0, 0.5)  # noqa: E731
    assert p(0) == 1.0 and p(250) == 0.5 and p(500) == 0.0 and p(900) == 0.0


# ----------------------------------------------------------------------------- the MADDPG learner
def test_stacked_gru_is_torch_gru_per_net_values_and_gradients():
    # the update's speed-ups (unbind over time, the hidden side computed once) must leave the maths of
    # torch.nn.GRU: outputs, hidden states and every weight's gradient, net by net
    torch.manual_seed(0)
    nets, B, T, D, H = 2, 3, 7, 4, 5
    net = mesa.StackedGRUNet(nets, D, H, 2)
    x = torch.randn(nets, B, T, D)
    out, hs = net(x)
    (out.square().sum() + hs.sum()).backward()
    for i in range(nets):
        gru = torch.nn.GRU(H, H, batch_first=True)
        with torch.no_grad():
            for name, value in (("weight_ih_l0", net.w_ih[i].T), ("weight_hh_l0", net.w_hh[i].T),
                                ("bias_ih_l0", net.b_ih[i, 0]), ("bias_hh_l0", net.b_hh[i, 0])):
                getattr(gru, name).copy_(value)
        w_in, b_in = net.w_in[i].detach().requires_grad_(), net.b_in[i].detach().requires_grad_()
        w_out, b_out = net.w_out[i].detach().requires_grad_(), net.b_out[i].detach().requires_grad_()
        ref_hs, _ = gru(torch.relu(x[i] @ w_in + b_in))  # [B, T, H]
        ref_out = ref_hs @ w_out + b_out
        (ref_out.square().sum() + ref_hs.sum()).backward()
        assert torch.allclose(hs[i], ref_hs, atol=1e-6) and torch.allclose(out[i], ref_out, atol=1e-6)
        for mine, ref in ((net.w_ih.grad[i], gru.weight_ih_l0.grad.T), (net.w_hh.grad[i], gru.weight_hh_l0.grad.T),
                          (net.b_hh.grad[i, 0], gru.bias_hh_l0.grad), (net.w_in.grad[i], w_in.grad),
                          (net.w_out.grad[i], w_out.grad)):
            assert torch.allclose(mine, ref, atol=1e-5)


def test_gru_tanh_is_tanh():
    # the GRU's tanh is 2 sigmoid(2x) - 1: hand values, odd symmetry, saturation, and torch.tanh's values to 2e-7
    x = torch.tensor([0.0, 0.5, -0.5, 20.0, -20.0])
    expected = torch.tensor([0.0, 0.46211715726, -0.46211715726, 1.0, -1.0])  # tanh(0.5) = (e - 1) / (e + 1)
    assert torch.allclose(mesa.tanh(x), expected, atol=2e-7)
    x = torch.linspace(-10, 10, 100_001)
    assert (mesa.tanh(x) - torch.tanh(x)).abs().max() < 2e-7


def learner_and_batch(**args):
    torch.manual_seed(0)
    args = mesa.resolve_args(replace(mesa.Args(env_id="climb-one-step"), **args))
    n, obs_dim, act_dim, B, T = 2, 3, 4, 6, 5
    learner = mesa.MADDPG(n, obs_dim, act_dim, True, args, torch.device("cpu"))
    batch = {"obs": torch.randn(B, n, T + 1, obs_dim), "rewards": torch.rand(B, T), "terminated": torch.zeros(B, T),
             "actions": torch.nn.functional.one_hot(torch.randint(act_dim, (B, n, T)), act_dim).float(),
             "mask": torch.ones(B, T)}
    return learner, batch


def test_shared_policy_is_one_net_whose_greedy_joint_action_is_diagonal():
    learner, batch = learner_and_batch(share_policy=True)
    assert learner.actor.w_in.shape[0] == 1 and learner.critic.w_in.shape[0] == 1
    # every agent runs the one net: the members fold into its batch
    obs = batch["obs"].transpose(0, 1)  # [n, B, T+1, obs]
    out, hs = learner.actor(obs)
    alone, _ = learner.actor(obs[1:2])
    assert out.shape == (2, 6, 6, 4) and hs.shape == (2, 6, 6, 64) and torch.allclose(out[1], alone[0])
    # identical observations (the climb games): the same greedy action for every agent
    actions, _ = learner.act(torch.ones(2, 3), None, "greedy")
    assert torch.equal(actions[0], actions[1])
    before = copy.deepcopy(learner.actor.state_dict())
    learner.update(batch)
    assert not torch.equal(before["w_in"], learner.actor.w_in)


def test_epsilon_greedy_schedule_and_off_by_default():
    args = replace(mesa.Args(), epsilon_start=1.0, epsilon_end=0.05, epsilon_anneal_steps=50_000)
    assert [mesa.greedy_epsilon(step, args) for step in (0, 25_000, 50_000, 90_000)] == pytest.approx([1.0, 0.525, 0.05, 0.05])
    assert mesa.greedy_epsilon(123, mesa.Args()) == 0.0
    learner, _ = learner_and_batch()
    obs = torch.zeros(2, 3)
    # epsilon 0 (the default) draws no extra random numbers: default runs are unchanged
    state = torch.get_rng_state()
    learner.act(obs, None, "explore")
    after_off = torch.get_rng_state()
    torch.set_rng_state(state)
    learner.epsilon = 1e-9
    learner.act(obs, None, "explore")
    assert not torch.equal(torch.get_rng_state(), after_off)
    # epsilon 1: uniformly random one-hot actions whatever the logits
    with torch.no_grad():
        learner.actor.b_out[:, :, 0] = 100.0  # the Gumbel sample is action 0 always
    learner.epsilon = 1.0
    picks = torch.stack([learner.act(obs, None, "explore")[0].argmax(-1) for _ in range(400)])  # [400, n]
    counts = torch.bincount(picks.flatten(), minlength=4)
    assert counts.sum() == 800 and counts.min() > 140  # about 200 each
    assert (learner.act(obs, None, "greedy")[0].argmax(-1) == 0).all()  # greedy (evaluation) acts never random


@pytest.mark.parametrize("greedy", [False, True])
def test_greedy_target_actions_make_the_critic_step_deterministic(greedy):
    # the critic's step depends on the global generator only through the target actions' Gumbel sample
    critics = []
    for seed in (1, 2):
        learner, batch = learner_and_batch(greedy_target_actions=greedy)
        torch.manual_seed(seed)
        learner.update(batch)
        critics.append(learner.critic.w_hh.detach().clone())
    assert torch.equal(critics[0], critics[1]) == greedy


# ----------------------------------------------------------------------------- smoke runs
TINY = {  # per env: budgets that run in seconds but go through every phase (learning starts early)
    "climb-one-step": dict(total_timesteps=200, learning_starts=50, batch_size=8),
    "climb-multi-stage": dict(total_timesteps=200, learning_starts=50, batch_size=8),
    "mpe-climb": dict(total_timesteps=60, learning_starts=20, batch_size=2, max_steps=10, train_frequency=10),
    "swimmer-climb": dict(total_timesteps=60, learning_starts=20, batch_size=2, max_steps=20, train_frequency=20),
}
TINY_MESA = dict(collect_steps=200, meta_train_steps=200, num_train_tasks=2, num_test_tasks=1, num_exploration_policies=2)


def tiny_args(module, env_id, tmp_path, **extra):
    kwargs = {**TINY[env_id], "eval_episodes": 1, "cuda": False}
    if module is mesa:
        kwargs.update(TINY_MESA)
        if env_id in ("mpe-climb", "swimmer-climb"):
            kwargs.update(collect_steps=60, meta_train_steps=80, reward_threshold=0.5)
    else:
        kwargs.update(num_train_tasks=2, num_test_tasks=1)
    kwargs.update(extra)
    return replace(module.Args(env_id=env_id), **kwargs)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ goes to the test's directory


@pytest.mark.parametrize("env_id", ["climb-one-step", "climb-multi-stage", "mpe-climb", "swimmer-climb"])
def test_smoke_main_every_env(env_id, tmp_path, capsys):
    for module in (maddpg, mesa):
        result = module.main(tiny_args(module, env_id, tmp_path))
        assert isinstance(result["test_return"], float)
        assert capsys.readouterr().out.strip().splitlines()[-1] == f"test_return={result['test_return']:.4f}"
    assert any(name.startswith(f"{env_id}__mesa_maddpg__1__") for name in os.listdir("runs"))


def test_returned_test_actors_are_the_evaluated_learners(tmp_path):
    # main() returns each test task's final actor (benchmarks/mesa_coverage.py replays them): the greedy
    # return of the returned actor on its task is the reported test return
    args = tiny_args(mesa, "climb-multi-stage", tmp_path, num_test_tasks=2)
    result = mesa.main(args)
    assert len(result["test_actors"]) == len(result["test_returns"]) == 2
    args, settings, _, test_tasks = mesa.setup(args)
    for task, actor_state, reported in zip(test_tasks, result["test_actors"], result["test_returns"]):
        env = mesa.make_env(args.env_id, task, **settings)
        spaces = mesa.env_spaces(env)
        learner = mesa.MADDPG(*spaces[:4], args, torch.device("cpu"))
        learner.actor.load_state_dict(actor_state)
        scale = mesa.report_scale(args.env_id, env.max_steps)
        assert mesa.evaluate(env, learner, 1, 0, spaces, torch.device("cpu")) * scale == pytest.approx(reported)


@pytest.mark.parametrize("script", ["baselines/maddpg.py", "mesa_maddpg.py"])
def test_command_line(script, tmp_path):
    cmd = [PYTHON, os.path.join(ROOT, script), "--env-id", "climb-multi-stage", "--total-timesteps", "100",
           "--learning-starts", "50", "--batch-size", "4", "--num-train-tasks", "2", "--num-test-tasks", "1",
           "--eval-episodes", "1", "--no-cuda"]
    if script == "mesa_maddpg.py":
        cmd += ["--collect-steps", "100", "--meta-train-steps", "200", "--num-exploration-policies", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"test_return=-?\d+\.\d+", out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("bad, message", [
    (["--env-id", "pong"], "--env-id pong: must be one of climb-one-step, climb-multi-stage, mpe-climb, swimmer-climb"),
    (["--env-id", "mpe-climb", "--k", "3"], "--k 3: k must be"),  # k > n = 2
    (["--env-id", "climb-one-step", "--num-actions", "1"], "--num-actions 1: U"),  # U < 2
    (["--env-id", "climb-one-step", "--num-train-tasks", "18", "--num-test-tasks", "5"], "distinct tasks"),
    (["--env-id", "climb-one-step", "--stages", "3"], "--stages 3: not a setting of climb-one-step"),  # S: multi-stage only
])
@pytest.mark.parametrize("script", ["baselines/maddpg.py", "mesa_maddpg.py"])
def test_bad_input_one_line_error(script, bad, message):
    out = subprocess.run([PYTHON, os.path.join(ROOT, script), *bad], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_missing_exploration_policies_file_one_line_error():
    out = subprocess.run([PYTHON, os.path.join(ROOT, "mesa_maddpg.py"), "--exploration-policies", "nope.pt"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip() == ("error: --exploration-policies nope.pt: no such file; expected exploration "
                                                          "policies saved by mesa_maddpg.py (exploration_policies.pt in a run folder)")


def test_test_task_that_is_a_training_task_is_refused(monkeypatch):
    tasks, _ = maddpg.sample_tasks("climb-one-step", 3, 0, 0)
    for module in (maddpg, mesa):
        monkeypatch.setattr(module, "sample_tasks", lambda *a, **k: (tasks, tasks[:1]))
        with pytest.raises(ValueError, match="test tasks must differ from the training tasks"):
            module.setup(module.Args(env_id="climb-one-step"))


def test_same_seed_same_results_and_saved_policies_reload(tmp_path):
    first = mesa.main(tiny_args(mesa, "climb-multi-stage", tmp_path))
    second = mesa.main(tiny_args(mesa, "climb-multi-stage", tmp_path))
    assert first["test_returns"] == second["test_returns"]
    a, b = torch.load(first["exploration_policies"]), torch.load(second["exploration_policies"])
    for actor_a, actor_b in zip(a["actors"], b["actors"]):
        assert all(torch.equal(actor_a[key], actor_b[key]) for key in actor_a)
    # meta-test only, from the saved policies: the same meta-testing as the full run
    reloaded = mesa.main(tiny_args(mesa, "climb-multi-stage", tmp_path, exploration_policies=first["exploration_policies"]))
    assert reloaded["test_returns"] == first["test_returns"]
    with pytest.raises(ValueError, match="holds policies of climb-multi-stage"):
        mesa.main(tiny_args(mesa, "climb-one-step", tmp_path, exploration_policies=first["exploration_policies"]))
    base_a = maddpg.main(tiny_args(maddpg, "climb-one-step", tmp_path))
    base_b = maddpg.main(tiny_args(maddpg, "climb-one-step", tmp_path))
    assert base_a["test_return"] == base_b["test_return"]


# ----------------------------------------------------------------------------- learning
def test_maddpg_settles_on_the_suboptimal_equilibrium_of_a_k2_climb_game(tmp_path):
    # one-step G(2, k=2, u=5, 10) (test task 2 of task seed 0): the paper's premise (section 4,
    # Table 2): uniform warm-up then MADDPG's own exploration leave it at the 1 - delta = 0.5 NE
    args = replace(maddpg.Args(env_id="climb-one-step"), task_seed=0, test_task_index=2, total_timesteps=5000,
                   learning_starts=1000, eval_episodes=1, cuda=False)
    result = maddpg.main(args)
    assert (result["task"].k, result["task"].u) == (2, 5)
    assert result["test_return"] == 0.5


def test_maddpg_solves_a_k1_stage_but_not_a_k2_stage_of_the_multi_stage_game(tmp_path):
    # why the paper's MADDPG row on the multi-stage game (0.50, every stage at "nobody plays u")
    # does not reproduce (README, MESA section): at a k = 1 stage "nobody plays u" is no equilibrium,
    # one agent moving to u raises the reward from 0.5 to 1, and MADDPG finds that move; at a k = 2
    # stage it is one, and MADDPG stays there. 2-stage G(2, 2, 8, 10) then G(2, 1, 0, 10) (test task 3
    # of task seed 1, S = 2); measured: the same on seeds 1-6
    args = replace(maddpg.Args(env_id="climb-multi-stage"), stages=2, task_seed=1, test_task_index=3,
                   total_timesteps=8000, learning_starts=1000, eval_episodes=1, cuda=False)
    result = maddpg.main(args)
    assert [(stage.k, stage.u) for stage in result["task"]] == [(2, 8), (1, 0)]
    env = maddpg.make_env(args.env_id, result["task"], S=2)
    spaces = maddpg.env_spaces(env)
    learner = maddpg.MADDPG(*spaces[:4], maddpg.resolve_args(args), torch.device("cpu"))
    learner.actor.load_state_dict(result["test_actor"])
    episode = maddpg.run_episode(env, maddpg.learner_policy(learner, "greedy", torch.device("cpu")), 0, spaces)
    joint_actions = episode["actions"].argmax(-1).T.tolist()  # [S, n]
    assert 8 not in joint_actions[0] and episode["rewards"][0] == 0.5  # k = 2: nobody plays u
    assert joint_actions[1].count(0) == 1 and episode["rewards"][1] == 1.0  # k = 1: exactly one agent plays u
    assert result["test_return"] == 0.75


ONE_STEP_META_TRAINING = dict(task_seed=0, num_test_tasks=1, collect_steps=3000, meta_train_steps=8000, total_timesteps=501,
                              learning_starts=500, eval_episodes=1, cuda=False)


def test_mesa_exploration_policies_cover_distinct_parts_of_mstar_with_the_earlier_readings(tmp_path):
    # Algorithm 1 on the one-step game with Eq. 6 weighted by the nearest element of M* and N_hat fed
    # by each policy's last batch only: every exploration policy learns to hit M* (Eq. 6 return 1 =
    # r_hat 1 at count 1 in its last batch) and, through N_hat, each one in a cluster no earlier
    # policy covered (4 policies -> 4 clusters)
    args = replace(mesa.Args(env_id="climb-one-step"), eq6_r_hat="nearest", global_count_from="last-batch",
                   **ONE_STEP_META_TRAINING)
    result = mesa.main(args)
    assert result["mstar_size"] > 10
    assert result["exploration_rewards"] == [1.0, 1.0, 1.0, 1.0]
    assert result["clusters_covered"] == 4


def test_mesa_as_written_pays_only_valuable_steps_and_n_hat_of_all_of_d_leaves_later_policies_nothing(tmp_path):
    # the paper's readings (the defaults), same game and budgets: Eq. 6 pays r_hat_t, the step's own
    # reward on the training task it plays, so the first policy's return is the fraction of its
    # episodes whose joint action is valuable on the task drawn (measured 0.25: no joint action is
    # optimal on more than a few of the 10 tasks); N_hat then adds every trajectory of its dataset D,
    # the uniformly random warm-up included, which visits every cluster of M*, and at f_d = 1/x^5 the
    # later policies are left an Eq. 6 return near 0 (measured 3e-7, 2e-8, 0)
    result = mesa.main(replace(mesa.Args(env_id="climb-one-step"), **ONE_STEP_META_TRAINING))
    first, *later = result["exploration_rewards"]
    assert 0.1 < first < 0.6
    assert all(reward < 1e-3 for reward in later)
    assert result["clusters_covered"] == min(result["mstar_size"], 64)  # every cluster of the hash (C = 64)
