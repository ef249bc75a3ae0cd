"""ce_sac.py's agents are stacked along a leading dimension and updated in one batched pass: these
tests hold that the stacking changes nothing about what each agent learns.

- A loss on one agent gives zero gradient to every other agent (critics, actors, temperatures).
- The per-agent clip equals torch's clip_grad_norm_ on each agent's slice alone.
- N stacked agents take the same SAC steps (critic, actor, temperature; clip and Adam included)
  as N separate single-agent copies given the same batch and noise.
- Eq. 5 receives candidates[i, j] = policy j's samples at agent i's observation.
"""

import math
from types import SimpleNamespace

import gymnasium as gym
import pytest
import torch

import ce_sac
from ce_sac import Actor, SoftQNetwork, VectorizedLinear, candidate_actions, clip_grad_norm_per_agent_

N, B, O, A = 3, 16, 5, 2
ENV = SimpleNamespace(observation_space=gym.spaces.Box(-1, 1, (O,)), action_space=gym.spaces.Box(-1, 1, (A,)))


def agent_slices(net: torch.nn.Module, i: int) -> dict[str, torch.Tensor]:
    """Agent i's slice of every stacked parameter (twin critics: members 2i and 2i + 1)."""
    out = {}
    for name, p in net.named_parameters():
        members = p.shape[0] // N
        out[name] = p[i * members : (i + 1) * members]
    return out


def grads_of(net: torch.nn.Module, i: int) -> dict[str, torch.Tensor]:
    return {name: p.grad[i * (p.shape[0] // N) : (i + 1) * (p.shape[0] // N)] for name, p in net.named_parameters()}


@pytest.fixture
def nets():
    torch.manual_seed(0)
    return Actor(ENV, N), SoftQNetwork(ENV, N)


def test_a_loss_on_one_agent_moves_only_that_agent(nets):
    actor, qf = nets
    log_alpha = torch.zeros(N, requires_grad=True)
    obs, actions = torch.randn(B, O), torch.rand(B, A) * 2 - 1
    agent = 1
    # critic: agent 1's TD-style loss only
    qf(obs, actions)[agent].square().mean().backward()
    # actor and temperature: agent 1's SAC actor and temperature losses only
    pi, log_pi = actor.get_action(obs)
    q_pi = qf(obs, pi).mean(1)  # [N, B]
    actor_losses = (log_alpha.detach().exp()[:, None] * log_pi - q_pi).mean(1)  # [N], as in the sac-update block
    alpha_losses = log_alpha.exp() * (-log_pi.detach().mean(1) + 1.0)  # [N]: entropy - target, target -1
    (actor_losses[agent] + alpha_losses[agent]).backward()
    for net in (actor, qf):
        for i in range(N):
            grads = grads_of(net, i)
            if i == agent:
                assert any(g.abs().sum() > 0 for g in grads.values())
            else:
                assert all(torch.count_nonzero(g) == 0 for g in grads.values()), f"agent {i} of {type(net).__name__} moved"
    assert torch.count_nonzero(log_alpha.grad) == 1 and log_alpha.grad[agent] != 0


def test_per_agent_clip_equals_clip_grad_norm_on_each_slice(nets):
    actor, _ = nets
    torch.manual_seed(1)
    for p in actor.parameters():
        p.grad = torch.randn_like(p) * torch.tensor([0.001, 1.0, 100.0]).repeat_interleave(p.shape[0] // N).view(-1, *[1] * (p.dim() - 1))
    expected = []
    for i in range(N):  # the reference: torch's own clip on a copy of agent i's gradients alone
        copies = [g.clone().requires_grad_(False) for g in grads_of(actor, i).values()]
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in copies]
        for p, g in zip(params, copies):
            p.grad = g
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
        expected.append(([p.grad for p in params], norm))
    norms = clip_grad_norm_per_agent_(actor, max_norm=1.0)
    for i, (grads, norm) in enumerate(expected):
        torch.testing.assert_close(norms[i], norm, rtol=1e-5, atol=0)
        for got, want in zip(grads_of(actor, i).values(), grads):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert norms[0] < 1 < norms[2]  # the small agent untouched, the large one clipped: both cases covered


def sac_step(actor, qf, qf_target, log_alpha, optimizers, batch, noise, gamma=0.99, max_norm=1.0, target_entropy=-1.0):
    """One update as ce_sac.py's shared `sac-update` block writes it (critic, actor, temperature), with the
    policy noise given: `noise` holds one [n, B, A] tensor per get_action call, in call order."""
    q_optimizer, actor_optimizer = optimizers
    draws = iter(noise)
    original = torch.randn_like
    torch.randn_like = lambda t: next(draws)
    try:
        obs, actions, rewards, next_obs = batch
        alpha = log_alpha.detach().exp()
        with torch.no_grad():
            next_actions, next_log_pi = actor.get_action(next_obs)
            min_qf_next_target = qf_target(next_obs, next_actions).min(1).values
            next_q_value = rewards + gamma * (min_qf_next_target - alpha[:, None] * next_log_pi)
        qf_losses = (qf(obs, actions) - next_q_value[:, None]).square().mean((1, 2))
        q_optimizer.zero_grad(set_to_none=False)
        qf_losses.sum().backward()
        clip_grad_norm_per_agent_(qf, max_norm)
        q_optimizer.step()
        qf.requires_grad_(False)
        pi_actions, log_pi = actor.get_action(obs)
        actor_losses = (alpha[:, None] * log_pi - qf(obs, pi_actions).mean(1)).mean(1)
        alpha_losses = log_alpha.exp() * (-log_pi.detach().mean(1) - target_entropy)
        actor_optimizer.zero_grad(set_to_none=False)
        (actor_losses.sum() + alpha_losses.sum()).backward()
        clip_grad_norm_per_agent_(actor, max_norm)
        actor_optimizer.step()
        qf.requires_grad_(True)
    finally:
        torch.randn_like = original


def test_stacked_agents_take_the_same_steps_as_separate_ones():
    torch.manual_seed(2)
    stacked = [Actor(ENV, N), SoftQNetwork(ENV, N), SoftQNetwork(ENV, N), torch.zeros(N, requires_grad=True)]
    stacked[2].load_state_dict(stacked[1].state_dict())
    separate = []
    for i in range(N):  # agent i alone: a one-agent copy of its slices
        actor, qf, qf_target = Actor(ENV, 1), SoftQNetwork(ENV, 1), SoftQNetwork(ENV, 1)
        for one, many in ((actor, stacked[0]), (qf, stacked[1]), (qf_target, stacked[2])):
            with torch.no_grad():
                for p, slice_ in zip(one.parameters(), agent_slices(many, i).values()):
                    p.copy_(slice_)
        separate.append([actor, qf, qf_target, torch.zeros(1, requires_grad=True)])

    def optimizers(actor, qf, log_alpha):
        return (torch.optim.Adam(qf.parameters(), lr=1e-3, fused=True),
                torch.optim.Adam([*actor.parameters(), log_alpha], lr=1e-3, fused=True))

    stacked_opt = optimizers(stacked[0], stacked[1], stacked[3])
    separate_opt = [optimizers(a, q, la) for a, q, _, la in separate]
    for step in range(3):
        batch = (torch.randn(B, O), torch.rand(B, A) * 2 - 1, torch.randn(B), torch.randn(B, O))
        noise = [torch.randn(N, B, A) * 0.5 for _ in range(2)]
        sac_step(*stacked, stacked_opt, batch, noise)
        for i, (actor, qf, qf_target, log_alpha) in enumerate(separate):
            sac_step(actor, qf, qf_target, log_alpha, separate_opt[i], batch, [n[i : i + 1] for n in noise])
    for i, (actor, qf, _, log_alpha) in enumerate(separate):
        for one, many in ((actor, stacked[0]), (qf, stacked[1])):
            for (name, p), slice_ in zip(one.named_parameters(), agent_slices(many, i).values()):
                torch.testing.assert_close(slice_, p, rtol=1e-4, atol=1e-6, msg=f"agent {i} {name}")
        torch.testing.assert_close(stacked[3][i : i + 1], log_alpha, rtol=1e-4, atol=1e-7)
    assert not torch.equal(agent_slices(stacked[0], 0)["fc1.weight"], agent_slices(stacked[0], 1)["fc1.weight"])


def test_eq5_candidates_are_policy_j_at_agent_i_observation():
    """candidates[i, j, m] must be policy j's m-th sample at agent i's observation. Made checkable by an
    actor whose mean is (observation of agent i) * 0.1 + 0.01 * j with a tiny std: the sample tells (i, j)."""
    actor = Actor(SimpleNamespace(observation_space=gym.spaces.Box(-1, 1, (1,)), action_space=gym.spaces.Box(-1, 1, (1,))), N)
    with torch.no_grad():
        for layer in (actor.fc1, actor.fc2):  # ReLU torso passing the (positive) observation through unit 0
            layer.weight.zero_()
            layer.bias.zero_()
            layer.weight[:, 0, 0] = 1.0
        actor.fc_out.weight.zero_()
        actor.fc_out.weight[:, 0, 0] = 0.1  # narrow layer, stored [out, in]: mean = 0.1 * h_0
        actor.fc_out.bias.zero_()
        actor.fc_out.bias[:, 0, 0] = 0.01 * torch.arange(N, dtype=torch.float32)  # + 0.01 j
        actor.fc_out.bias[:, 0, 1] = ce_sac.LOG_STD_MIN  # std e^-20
    obs = torch.tensor([[1.0], [2.0], [3.0]])  # agent i observes i + 1
    candidates = candidate_actions(actor, obs, samples=4)  # [N_i, N_j, M, A]
    assert candidates.shape == (N, N, 4, 1)
    for i in range(N):
        for j in range(N):
            torch.testing.assert_close(candidates[i, j, :, 0], torch.full((4,), math.tanh(0.1 * (i + 1) + 0.01 * j)))
    assert isinstance(actor.fc_out, VectorizedLinear) and actor.fc_out.narrow
