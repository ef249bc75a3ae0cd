"""Collaborative Exploration with RND novelty: RND+CE, RND+Replica and the RND baseline.

"Collaborative Exploration" (CE), section 5.4, Appendix D.8 (Figure 14) and Table 2; the RND
column of Table 1 too. The N SAC agents of ce_sac.py (each in its own environment, one shared
replay buffer, every sampled batch relabeled for every agent i with r + lambda * R_i), with the
KNN novelty of Eq. 2 replaced by random network distillation (RND, Burda et al. 2019): a
predictor MLP learns to match a fixed, randomly initialised target MLP on normalised afterstates
s', so its squared error is large where its training data held few states like s'. Whose data an
RND module learns from is the whole difference between the paper's rows (`--rnd-mode`):
  shared     RND+CE (the paper's, default): one module trained on the shared buffer, so its novelty
             is w.r.t. what the whole agent set has visited; every agent gets the same R for a transition
  own        RND+Replica: module i learns only from agent i's transitions (Figure 14, left) and
             agent i's R is module i's error
  per-agent  our extension (5.4 proposes it, "a separate RND module for each agent on the shared
             buffer to increase diversity", and reports no result): module i on the shared buffer,
             module j's error as novelty_j, agent i's R mixed by Eq. 3 (w = 0.5, mean)
With `--num-agents 1` all three are the single RND agent (per-agent: halved, Eq. 3's w * novelty).

Run (one seed; Table 2 uses 5, 1e6 env steps of all agents together):
  RND           python ce_rnd.py --env-id hopper-hop --num-agents 1
  RND+Replica   python ce_rnd.py --env-id hopper-hop --rnd-mode own
  RND+CE        python ce_rnd.py --env-id hopper-hop
Expect (Table 2, RND / RND+Replica / RND+CE, mean of 5 seeds): acrobot-swingup 11.3 / 24.7 / 34.5,
         cheetah-run 857.4 / 882.5 / 884.6, hopper-hop 164.7 / 227.5 / 267.9, hopper-stand 809.7 /
         925.4 / 935.3, humanoid-stand 744.8 / 625.4 / 809.9, humanoid-walk 463.2 / 522.8 / 558.6,
         reacher-hard 954.8 / 953.1 / 962.1; the last printed line is `eval_return=<mean of the last 10
         evaluations>` (Appendix D.1). Table 1's RND column holds the other DMC15 tasks' RND scores.
Quick check (about a CPU minute): python ce_rnd.py --env-id Pendulum-v1 --num-agents 2 --total-timesteps 7000
         --learning-starts 1000 --eval-every 1000 --eval-episodes 5 --batch-size 64: agent 0's evaluations
         rise from about -1350 to above -400 by step 5000 (best -95 to -126, seeds 1-3).

The backbone is ce_sac.py's: the blocks marked `# --- shared: NAME ---` are text-identical to
ce_sac.py's and baselines/sac.py's (the SAC networks, update, buffer, Eqs. 3 and 5, the command
line), lines this file adds carry `# CE:`, `--col-unroll` (Eq. 5) and `--eval-mode` (first /
softmax) work as in ce_sac.py, and `--intrinsic-coef 0` trains exactly what ce_sac.py's Replica
(`--no-col-training`) trains on CPU with the same seed (the RND modules draw their initialisation
from a stream of their own and change only the reward).

Decisions where the paper is silent (5.4 and D.8 describe the modes, Table 5 the width 256-256):
- Predictor and target are both MLPs 256-256 with ReLU and a 64-wide output (`--rnd-dim`), the
  SAC layers' orthogonal initialisation (Burda et al.'s too); Burda's predictor is deeper than its
  target, Table 5 gives one shape for "RND network", so both have it. No gradient clip.
- Observation normalisation (Burda et al.): a running mean and variance of the afterstates the
  agents collect, each once, from the first random step on (Burda initialise theirs from random
  steps too); each module keeps its own, from the rows it learns from (own: its agent's
  afterstates; shared and per-agent: everyone's). Normalised afterstates are clipped to [-5, 5].
- Error: the mean over the 64 outputs of the squared difference (Burda et al.). Intrinsic reward
  (our choice): the error divided by a running standard deviation of the module's
  errors on every sampled batch so far (all history, population variance, no mean subtracted).
  Burda divide by the std of the discounted intrinsic return, an on-policy construct.
- Every SAC update trains the RND predictors with one Adam step (lr = --learning-rate), and the
  reward of a batch is the error of the predictors before that step. `shared` and `per-agent`
  modules learn from the sampled batch itself. In `own` mode module i learns from B / N of agent
  i's rows (agent i's rows of the rounds of B / N sampled rows; row index mod N is the agent):
  agent i's share of a batch, so with N updates per round each module gets one batch of its
  own agent's rows per own env step, the data rate of the single RND agent. Its reward is still
  computed on every row of the batch (agent i learns from the whole shared batch, with its own
  module's novelty).
- lambda = 0.2, CE's value (Table 4); the paper gives none for RND.

Seeding: `--seed` seeds python, numpy, torch, the environments' resets (seed + agent index) and
action spaces; the RND modules are initialised from torch's CPU generator seeded with seed + 2**31
(a stream no valid seed gives the SAC part), inside `torch.random.fork_rng`. On CPU two runs with the same seed
are identical. What stays nondeterministic: CUDA kernels that use atomics (e.g. some backward
passes), even with `--torch-deterministic`.
"""

import glob
import json
import math
import os
import random
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Literal, NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from envs.dmc import make_env

SCRIPT = "ce_rnd.py"  # in checkpoints: a checkpoint resumes only in the script that wrote it


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run directory's name)"""
    seed: int = 1
    """seed of python, numpy, torch and the environments"""
    torch_deterministic: bool = True
    """sets `torch.backends.cudnn.deterministic`"""
    cuda: bool = True
    """train on the GPU when there is one"""
    torch_threads: int = 1
    """CPU threads of torch; 1 is fastest for these small networks (measured 2-cores: more threads spin-wait) and keeps runs identical across machines"""
    save_model: bool = False
    """save all agents, the RND modules and their normalisers to `runs/{run_name}/{exp_name}.pt` at the end"""
    checkpoint_every: int = 0
    """env steps between checkpoints of the whole training state, `runs/{run_name}/checkpoint.pt` (0: none)"""
    resume: Optional[str] = None
    """continue an interrupted run bit for bit: `--resume` alone the newest one of this command under runs/, or a run folder or checkpoint"""

    env_id: str = "cheetah-run"
    """DMC task as `domain-task` (Table 2: acrobot-swingup, cheetah-run, hopper-hop, ...) or a gymnasium id with continuous actions"""
    total_timesteps: int = 1_000_000
    """environment steps of all agents together (section 5.1: 1e6, i.e. 2.5e5 per agent for N = 4)"""
    buffer_size: int = 1_000_000
    """replay buffer capacity in transitions, shared by all agents (Table 5)"""
    gamma: float = 0.99
    """discount factor (Table 5)"""
    tau: float = 0.005
    """target critic smoothing coefficient (jaxrl2)"""
    batch_size: int = 256
    """transitions per gradient update, the same batch for every agent and every RND module (Table 4)"""
    learning_rate: float = 3e-4
    """Adam learning rate of actors, critics, temperatures and RND predictors (Table 5)"""
    init_temperature: float = 1.0
    """initial entropy temperature alpha; log(alpha) is learned (jaxrl2)"""
    target_entropy_scale: float = 0.5
    """target entropy = -scale * |A| (Table 5: -0.5 * |A|)"""
    max_grad_norm: float = 20.0
    """gradient-norm clip of actor and critics, per agent (Table 5); the RND predictors are not clipped"""
    learning_starts: int = 10_000
    """environment steps (all agents) with uniform random actions before learning (jaxrl2's start_training)"""
    utd: int = 1
    """vectorized updates of all agents per environment step (all agents): N updates per own step (5.1)"""
    eval_every: int = 5000
    """environment steps (all agents) between evaluations (Appendix D.1)"""
    eval_episodes: int = 10
    """episodes per evaluation, run in lockstep with the deterministic (mean) action"""
    log_every: int = 1000
    """environment steps between loss logs (each log is a host-device sync)"""

    # CE: the method (5.4, D.8; Tables 2, 4, 5)
    num_agents: int = 4
    """N, agents in the set, each with its own environment (section 5.1); 1 is the RND baseline (Tables 1 and 2)"""
    rnd_mode: Literal["shared", "own", "per-agent"] = "shared"
    """whose data each RND module learns from (D.8, Fig. 14): shared = RND+CE (one module on the shared buffer); own = RND+Replica (module i on agent i's transitions); per-agent = our extension, not in the paper's results (module i on the shared buffer, mixed by Eq. 3)"""
    rnd_dim: int = 64
    """output width of the RND predictor and target, both MLPs 256-256 (Table 5; the output width: paper silent)"""
    obs_clip: float = 5.0
    """normalised afterstates are clipped to [-clip, clip] before the RND networks (Burda et al.)"""
    intrinsic_coef: float = 0.2
    """lambda, agent i trains on r + lambda * R_i (Table 4's CE value; paper silent for RND)"""
    ego_weight: float = 0.5
    """w in Eq. 3, weight of agent i's own module's novelty against the others' (`--rnd-mode per-agent` only)"""
    aggregate: Literal["mean", "max", "min"] = "mean"
    """g in Eq. 3, how the other modules' novelties are combined (`--rnd-mode per-agent` only)"""
    col_unroll: bool = False
    """Col-Unroll (Table 6): epsilon-collaborative actions of Eq. 5 while collecting (off in Table 2)"""
    unroll_eps: float = 0.2
    """probability of the collaborative action of Eq. 5 per agent step (Table 4)"""
    unroll_samples: int = 10
    """M, actions every policy samples for Eq. 5 (Table 4)"""
    eval_mode: Literal["first", "softmax"] = "first"
    """who acts in evaluation (4.2): agent 0 (Tables 1 and 2) or softmax over Q^i(s, pi^i(s)) (Col-Eval, Table 6)"""
    softmax_temperature: float = 1.0
    """T in softmax_i(Q^i(s, pi^i(s)) / T) (paper: no temperature, i.e. 1)"""


# --- shared: sac-networks ---
class VectorizedLinear(nn.Module):
    """`members` independent linear layers in one batched matmul: x [members, B, in] -> [members, B, out].

    Members are agent-major: member m belongs to agent m // ensemble (twin critics: ensemble 2).
    A layer built with agents=1 is shared by all agents (CE's multihead torso, section 5.8): it
    takes x [N * ensemble, B, in] and applies its `ensemble` members to every agent's slice.
    Initialisation as jaxrl2: orthogonal with gain sqrt(2), zero bias.
    """

    def __init__(self, in_features: int, out_features: int, agents: int, ensemble: int = 1):
        super().__init__()
        self.agents = agents
        # Easy to miss on CPU: MKL's batched GEMM is 3-10x slower when the product has only a few
        # columns (a critic's 1, an actor's 2|A|), unless the weight is stored as [out, in] (nn.Linear's
        # layout). Wide layers are a little faster as [in, out], so a layer stores the faster of the two.
        self.narrow = out_features < 32
        shape = (out_features, in_features) if self.narrow else (in_features, out_features)
        self.weight = nn.Parameter(torch.empty(agents * ensemble, *shape))
        self.bias = nn.Parameter(torch.zeros(agents * ensemble, 1, out_features))
        for w in self.weight:  # one orthogonal matrix per member
            nn.init.orthogonal_(w, gain=math.sqrt(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.mT if self.narrow else self.weight  # [members, in, out], a view
        members = weight.shape[0]
        if x.shape[0] == members:
            return torch.baddbmm(self.bias, x, weight)
        groups = x.view(-1, members, *x.shape[1:])  # [N, members, B, in]: a shared layer
        return (groups @ weight + self.bias).flatten(0, 1)  # [N * members, B, out]


LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # jaxrl2's NormalTanhPolicy clips (not squashes) log std


class Actor(nn.Module):
    """N tanh-Gaussian policies (jaxrl2's NormalTanhPolicy), MLP 256-256, stacked along agents.

    Actions lie in [-1, 1]^A: envs/dmc.py rescales every env's action box to it (as jaxrl2 does), so
    the target entropy -0.5 |A| of Table 5 means the same on every task (quadruped's box is not [-1, 1]).
    """

    def __init__(self, env, num_agents: int, shared_torso: bool = False):
        super().__init__()
        obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
        torso = 1 if shared_torso else num_agents
        self.num_agents = num_agents
        self.fc1 = VectorizedLinear(obs_dim, 256, torso)
        self.fc2 = VectorizedLinear(256, 256, torso)
        self.fc_out = VectorizedLinear(256, 2 * act_dim, num_agents)  # mean and log std
        self.log_prob_offset = -act_dim * (0.5 * math.log(2 * math.pi) + 2 * math.log(2))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs [N, B, O] (agent i sees obs[i]) or [B, O] (all agents see the same) -> mean, log_std [N, B, A]."""
        if obs.dim() == 2:
            obs = obs.expand(self.num_agents, *obs.shape)  # [N, B, O], no copy
        h = F.relu_(self.fc2(F.relu_(self.fc1(obs))))  # in place: a layer's output is not needed for its backward
        mean, log_std = self.fc_out(h).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def get_action(self, obs: torch.Tensor, with_log_prob: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A reparameterised sample [N, B, A] and its log-density [N, B] (None if not `with_log_prob`)."""
        mean, log_std = self(obs)
        noise = torch.randn_like(mean)
        x = mean + log_std.exp() * noise  # pre-tanh sample
        action = torch.tanh(x)
        if not with_log_prob:
            return action, None
        # log N(x; mean, std) - log|da/dx|, with the stable log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x));
        # the constants (log 2pi, log 2) are summed once, in __init__
        log_prob = (2 * (x + F.softplus(-2 * x)) - log_std).sum(-1) - 0.5 * noise.square().sum(-1)
        return action, log_prob + self.log_prob_offset

    def mean_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic (mean) action [N, B, A] of evaluation. It draws no random numbers, so
        evaluating (how often, with which agent) leaves the training run's random stream alone."""
        return torch.tanh(self(obs)[0])


class SoftQNetwork(nn.Module):
    """N agents' twin critics (jaxrl2's StateActionEnsemble, 2 Qs), MLP 256-256, as one ensemble of 2N members."""

    def __init__(self, env, num_agents: int, shared_torso: bool = False):
        super().__init__()
        in_dim = env.observation_space.shape[0] + env.action_space.shape[0]
        torso = 1 if shared_torso else num_agents
        self.num_agents = num_agents
        self.fc1 = VectorizedLinear(in_dim, 256, torso, ensemble=2)
        self.fc2 = VectorizedLinear(256, 256, torso, ensemble=2)
        self.fc_out = VectorizedLinear(256, 1, num_agents, ensemble=2)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """obs [N, B, O] or [B, O], actions [N, B, A] or [B, A] -> Q [N, 2, B]."""
        shape = (self.num_agents, 2, actions.shape[-2])
        x = torch.cat([obs.unsqueeze(-3).expand(*shape, -1), actions.unsqueeze(-3).expand(*shape, -1)], -1)  # [N, 2, B, O + A]
        h = F.relu_(self.fc2(F.relu_(self.fc1(x.flatten(0, 1)))))  # [2N, B, 256]
        return self.fc_out(h).view(shape)


@torch.no_grad()
def clip_grad_norm_per_agent_(net: nn.Module, max_norm: float) -> torch.Tensor:
    """Table 5's gradient-norm clip, for each agent on its own: agent i's norm runs over its slices
    of every stacked parameter, and only its slices are scaled. One batched reduction per
    parameter, no loop over agents. Layers shared by all agents (multihead) count in every
    agent's norm and take the smallest agent's scale. Returns the norms [N] before clipping."""
    layers = [m for m in net.modules() if isinstance(m, VectorizedLinear)]
    num_agents = max(layer.agents for layer in layers)
    grads = [(layer.agents, g.view(layer.agents, -1)) for layer in layers for g in (layer.weight.grad, layer.bias.grad)]
    per_param = torch.stack([torch.linalg.vector_norm(g, dim=1).expand(num_agents) for _, g in grads])  # [P, N]
    norms = torch.linalg.vector_norm(per_param, dim=0)  # [N]; a shared layer's norm counts for every agent
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)[:, None]  # [N, 1]
    shared_scale = scale.min(0, keepdim=True).values  # [1, 1]
    torch._foreach_mul_([g for _, g in grads], [scale if a == num_agents else shared_scale for a, _ in grads])
    return norms
# --- end shared ---


class RNDNetwork(nn.Module):  # CE
    """P RND MLPs 256-256 (Table 5) with `out_dim` outputs, stacked along modules like the SAC networks:
    x [P, B, O] -> [P, B, out_dim]. Used for both the predictors and the fixed random targets (5.4).
    P, the number of RND modules, is 1 with `--rnd-mode shared` and N otherwise."""

    def __init__(self, obs_dim: int, out_dim: int, modules: int):
        super().__init__()
        self.fc1 = VectorizedLinear(obs_dim, 256, modules)
        self.fc2 = VectorizedLinear(256, 256, modules)
        self.fc_out = VectorizedLinear(256, out_dim, modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.relu_(self.fc2(F.relu_(self.fc1(x)))))


# --- shared: replay-buffer ---
class Batch(NamedTuple):
    obs: torch.Tensor  # [B, O]
    actions: torch.Tensor  # [B, A]
    rewards: torch.Tensor  # [B]
    next_obs: torch.Tensor  # [B, O]
    terminations: torch.Tensor  # [B]


class ReplayBuffer:
    """All agents' transitions on the training device, written in rounds of N (one step of every agent).

    Row f = round * N + agent (a ring over rounds): agent i's next step sits N rows further on.
    """

    def __init__(self, capacity_rounds: int, num_agents: int, obs_dim: int, act_dim: int, device: torch.device):
        size = capacity_rounds * num_agents
        self.capacity_rounds, self.num_agents, self.device = capacity_rounds, num_agents, device
        self.obs = torch.zeros(size, obs_dim, device=device)
        self.next_obs = torch.zeros(size, obs_dim, device=device)
        self.actions = torch.zeros(size, act_dim, device=device)
        self.rewards = torch.zeros(size, device=device)
        self.terminations = torch.zeros(size, device=device)
        self.rounds_added = 0

    def add(self, obs, actions, rewards, next_obs, terminations):
        """One round: each argument [N, ...] (numpy), row i from agent i."""
        start = (self.rounds_added % self.capacity_rounds) * self.num_agents
        for field, value in zip(
            (self.obs, self.actions, self.rewards, self.next_obs, self.terminations),
            (obs, actions, rewards, next_obs, terminations),
        ):
            field[start : start + self.num_agents] = torch.as_tensor(value, dtype=field.dtype, device=self.device)
        self.rounds_added += 1

    def sample(self, batch_size: int) -> tuple[torch.Tensor, Batch]:
        """Uniform over all stored transitions; indices drawn on the buffer's device (no host sync)."""
        filled = min(self.rounds_added, self.capacity_rounds) * self.num_agents
        idx = torch.randint(filled, (batch_size,), device=self.device)  # [B]
        return idx, Batch(self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.terminations[idx])

    def state_dict(self) -> dict:
        """The filled rows of every field (cloned: a slice would save the whole storage) and the write counter."""
        filled = min(self.rounds_added, self.capacity_rounds) * self.num_agents
        fields = {name: value[:filled].clone() for name, value in vars(self).items() if isinstance(value, torch.Tensor)}
        return {"rounds_added": self.rounds_added, **fields}

    def load_state_dict(self, state: dict) -> None:
        self.rounds_added = state["rounds_added"]
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                value[: len(state[name])] = state[name]
# --- end shared ---


class RunningMoments(NamedTuple):  # CE
    """Per-module running statistics of a stream of D-vectors: count [P, 1], mean [P, D], population
    variance var [P, D]. In float64: a run merges about 2.6e8 errors (1e6 updates of 256), and both
    that count and a batch's share 256 / 2.6e8 are past float32's 24-bit precision."""

    count: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor

    @classmethod
    def empty(cls, modules: int, dim: int, device: torch.device) -> "RunningMoments":
        """No sample yet; the first batch's moments replace these (the variance 1 has weight 0)."""
        zeros = torch.zeros(modules, dim, dtype=torch.float64, device=device)
        return cls(torch.zeros(modules, 1, dtype=torch.float64, device=device), zeros, torch.ones_like(zeros))


def update_running_moments(moments: RunningMoments, x: torch.Tensor) -> RunningMoments:
    """The running mean and variance of RND's normalisers (5.4, D.8; Burda et al. 2019), module p
    merged with the batch x[p] of K samples, x [P, K, D] (K >= 1). Chan et al.'s parallel update
    (Welford's, a batch at a time), with the batch's share w = K / (count + K):
        mean' = mean + w * delta,   var' = (1 - w) * var + w * var_batch + w * (1 - w) * delta^2,
    delta = mean_batch - mean; var is the population variance, the first batch's replaces the empty
    moments (w = 1)."""
    x = x.double()
    batch_var, batch_mean = torch.var_mean(x, dim=1, correction=0)  # [P, D] each
    count = moments.count + x.shape[1]  # [P, 1]
    w = x.shape[1] / count  # [P, 1]
    delta = batch_mean - moments.mean  # [P, D]
    return RunningMoments(count, moments.mean + w * delta, (1 - w) * moments.var + w * batch_var + w * (1 - w) * delta.square())


def normalise_observation(obs: torch.Tensor, moments: RunningMoments, clip: float) -> torch.Tensor:
    """RND's input (5.4; Burda et al.): each module's running mean and std of afterstates applied to
    obs [B, O] (all modules see the same) or [P, B, O] -> [P, B, O], clipped to [-clip, clip]. The 1e-8 under the root keeps a dimension that
    never varies at 0 instead of turning float noise into +-clip."""
    mean = moments.mean.float()[:, None]  # [P, 1, O]
    std = (moments.var + 1e-8).sqrt().float()[:, None]  # [P, 1, O]
    return ((obs - mean) / std).clamp(-clip, clip)  # [P, B, O]


def rnd_error(predictor: nn.Module, target: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """RND's novelty (5.4, D.8; Burda et al.): the predictor's squared error against the fixed random
    target, averaged over the output features, on normalised afterstates x [P, B, O] -> [P, B].
    Differentiable in the predictor only: the same tensor is the reward (detached) and the loss."""
    with torch.no_grad():
        target_features = target(x)  # [P, B, D]
    return (predictor(x) - target_features).square().mean(-1)  # [P, B]


def intrinsic_reward(error: torch.Tensor, moments: RunningMoments) -> torch.Tensor:
    """The RND novelty as a reward (5.4): error [P, B] divided by the running std of the
    module's errors (moments of D = 1) -> [P, B]. No mean is subtracted: the reward stays >= 0."""
    return error / moments.var.sqrt().clamp(min=1e-8).float()  # [P, B] / [P, 1]


def rnd_training_rows(idx: torch.Tensor, num_agents: int, mode: str) -> torch.Tensor | None:
    """Which buffer rows each RND module learns from (5.4, D.8, Figure 14), given the sampled rows idx [B].

    shared, per-agent: None, every module learns from the batch itself (the shared buffer).
    own: rows [N, T], module i's are agent i's only: row index mod N is the agent (ReplayBuffer), so
    agent i's row of the round of sampled row b is b - b mod N + i. Taken for the rounds of the first
    T = max(B // N, 1) sampled rows: a uniform sample of agent i's transitions as large as its share
    of the batch, of a fixed shape (so no masked rows to pay for in the backward pass) and without a
    random draw of its own. Called with idx = arange(N), a round, it gives each module its agent's row.
    """
    if mode in ("shared", "per-agent"):
        return None
    if mode != "own":
        raise ValueError(f"rnd mode must be shared, own or per-agent, got {mode!r}")
    T = max(len(idx) // num_agents, 1)
    round_start = idx[:T] - idx[:T] % num_agents  # [T]: row of agent 0 in the same round
    return round_start + torch.arange(num_agents, device=idx.device)[:, None]  # [N, T]


def rnd_collaborative_reward(novelty: torch.Tensor, num_agents: int, mode: str, w: float, aggregate: str) -> torch.Tensor:
    """R_i of each agent from the modules' normalised novelty [P, B] -> [N, B] (5.4, D.8).
    shared: the one module's novelty for every agent (the same R for a transition); own: agent i's
    own module; per-agent: Eq. 3 over the N modules' novelties (our extension)."""
    if mode == "per-agent":
        return collaborative_reward(novelty.T, w, aggregate).T  # Eq. 3: [B, N] -> [N, B]
    return novelty.expand(num_agents, -1)  # shared: [1, B] -> [N, B], a view; own: [N, B] as it is


# --- shared: collaborative-reward ---
def collaborative_reward(novelty: torch.Tensor, w: float, aggregate: str = "mean") -> torch.Tensor:
    """Eq. 3: R_i = w * novelty_i (ego) + (1 - w) * g({novelty_j : j != i}) (mutual); [B, N] -> [B, N].

    g is mean, max or min over the other agents. With N = 1 there is no other agent and R = w * novelty.
    """
    B, N = novelty.shape
    ego = w * novelty
    if N == 1:
        return ego
    if aggregate == "mean":
        mutual = (novelty.sum(1, keepdim=True) - novelty) / (N - 1)  # [B, N]
    elif aggregate in ("max", "min"):
        self_mask = torch.eye(N, dtype=torch.bool, device=novelty.device)  # [i, j]: j == i
        fill = -math.inf if aggregate == "max" else math.inf
        others = novelty[:, None, :].expand(B, N, N).masked_fill(self_mask, fill)  # [B, i, j]
        mutual = others.amax(-1) if aggregate == "max" else others.amin(-1)  # [B, N]
    else:
        raise ValueError(f"aggregate must be mean, max or min, got {aggregate!r}")
    return ego + (1 - w) * mutual

# --- end shared ---


# --- shared: collaborative-action ---
def collaborative_action(candidates: torch.Tensor) -> torch.Tensor:
    """Eq. 5: candidates [N, N, M, A] -> actions [N, A].

    candidates[i, j, m] is the m-th action policy j samples at agent i's observation. Agent i takes
    its own sample a^i_k* with k* = argmax_k sum_{j != i} sum_h ||a^i_k - a^j_h||^2, the one
    farthest from what the other policies would do. Ties: the first k (torch.argmax); with N = 1
    every score is 0 and agent 0 takes its first sample.
    """
    N, M = candidates.shape[0], candidates.shape[2]
    agents = torch.arange(N, device=candidates.device)
    own = candidates[agents, agents]  # [N, M, A]: a^i_k
    sq_dist = (own[:, None, :, None, :] - candidates[:, :, None, :, :]).square().sum(-1)  # [N_i, N_j, M_k, M_h]
    is_other = ~torch.eye(N, dtype=torch.bool, device=candidates.device)  # [N_i, N_j]
    score = (sq_dist * is_other[:, :, None, None]).sum((1, 3))  # [N, M]
    return own[agents, score.argmax(1)]  # [N, A]

# --- end shared ---


# --- shared: candidate-actions ---
def candidate_actions(actor: "Actor", obs: torch.Tensor, samples: int) -> torch.Tensor:
    """The input of Eq. 5: obs [N, O] (agent i's observation) -> candidates [N_i, N_j, M, A], M samples of
    every policy j at every agent i's observation, drawn in one batched actor pass."""
    N = obs.shape[0]
    actions, _ = actor.get_action(obs.repeat_interleave(samples, 0), with_log_prob=False)  # [N_j, N_i * M, A]
    return actions.view(N, N, samples, -1).transpose(0, 1)  # [N_i, N_j, M, A]

# --- end shared ---


# --- shared: cli ---
# What every script promises on the command line (README, "Exit codes"): bad input is one line on
# stderr and exit 2 (as tyro's own parse errors), a NaN or infinity in training one line and exit 3,
# Ctrl-C one line and exit 130; a traceback means a bug.
EXIT_BAD_INPUT, EXIT_NON_FINITE, EXIT_INTERRUPTED = 2, 3, 130


class BadInput(ValueError):
    """An impossible setting or an unusable file, as one line: `--flag VALUE: what is valid`."""


class NonFinite(RuntimeError):
    """A NaN or an infinity in training (a loss, a Q-value, an action), named with its step."""


class Interrupted(RuntimeError):
    """Ctrl-C: the run stopped between two steps."""


def check_range(args, names, low=-math.inf, high=math.inf, *, low_open=False, high_open=False, kind="number"):
    """BadInput unless every field of `args` in `names` is a finite number in the interval (ends
    included unless open); `kind="integer"` also refuses a non-integer."""
    for name in names:
        value = getattr(args, name)
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (math.isfinite(value) and above and below and (kind != "integer" or float(value).is_integer())):
            bounds = [f"{op} {int(end) if float(end).is_integer() else end}" for op, end, used in (
                (">" if low_open else ">=", low, low > -math.inf), ("<" if high_open else "<=", high, high < math.inf)) if used]
            valid = f"must be {'an integer' if kind == 'integer' else 'a finite number'} {' and '.join(bounds)}".rstrip()
            raise BadInput(f"--{name.replace('_', '-')} {value}: {valid}")


def save_file(obj, path: str) -> None:
    """torch.save, atomically: a file interrupted while being written never replaces a good one."""
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_file(path: str, flag: str, what: str):
    """torch.load of a file a user names, with weights_only=True (tensors and plain containers,
    never code); BadInput if it is missing, empty, truncated, corrupt or not a torch file."""
    if not os.path.isfile(path):
        raise BadInput(f"{flag} {path}: no such file; expected {what}")
    try:
        with warnings.catch_warnings():  # torch warns about a raw pickle's protocol before refusing it: one line is ours
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, EOFError, RuntimeError (zip), ...: all the same to the user
        raise BadInput(f"{flag} {path}: not a readable torch file ({type(error).__name__}); expected {what}") from None


class Progress:
    """Phase, steps, steps per second, time left and the last evaluation: a tqdm bar when stdout is
    a terminal, a plain line every `every` seconds otherwise (log files, pipes, clusters)."""

    def __init__(self, every: float = 30.0):
        self.every, self.bar, self.last_eval = every, None, "-"
        self.interactive = sys.stdout.isatty()

    def phase(self, name: str, total: int, start: int = 0) -> None:
        """Begin a phase counting steps from `start` to `total` (the rate is measured within it)."""
        self.close()
        self.name, self.total, self.step, self.last_eval = name, total, start, "-"
        self.last_step, self.last_time, self.sps = start, time.time(), 0.0
        if self.interactive:
            self.bar = tqdm(total=total, initial=start, desc=name, unit="step", dynamic_ncols=True, file=sys.stdout)

    def update(self, step: int, eval_return: float | None = None) -> None:
        if eval_return is not None:
            self.last_eval = f"{eval_return:.4g}"
        if self.bar is not None:
            self.bar.update(step - self.step)
            self.bar.set_postfix_str(f"eval_return={self.last_eval}", refresh=False)
        elif time.time() - self.last_time >= self.every or eval_return is not None:
            now = time.time()
            if now - self.last_time >= 1.0:  # the rate over the last line's interval (not over an instant)
                self.sps = (step - self.last_step) / (now - self.last_time)
                self.last_step, self.last_time = step, now
            left = (self.total - step) / self.sps if self.sps > 0 else math.inf
            eta = time.strftime("%H:%M:%S", time.gmtime(left)) if left < 86400 * 365 else "?"
            print(f"{self.name}: step {step}/{self.total} ({100 * step / self.total:.0f}%), {self.sps:.1f} steps/s, "
                  f"{eta} left, eval_return {self.last_eval}", flush=True)
        self.step = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


STOP_REQUESTED = [False]  # set by the first Ctrl-C under `cli`; the training loop stops at its next step


def cli(main, args_type) -> None:
    """`main(tyro.cli(args_type))` with the exit codes above: bad input, a non-finite value and
    Ctrl-C end in one line on stderr, never a traceback. The first Ctrl-C asks the loop to stop
    at its next step (it checkpoints when checkpointing is on); a second stops at once."""

    def request_stop(signum, frame):
        STOP_REQUESTED[0] = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: KeyboardInterrupt at once

    argv = sys.argv[1:]
    if "--resume" in argv[-1:] or any(a == "--resume" and b.startswith("--") for a, b in zip(argv, argv[1:])):
        argv.insert(argv.index("--resume") + 1, "latest")  # `--resume` alone: the newest interrupted run of this command
    args = tyro.cli(args_type, args=argv)
    signal.signal(signal.SIGINT, request_stop)
    try:
        main(args)
        return
    except BadInput as error:
        message, code = f"error: {error}", EXIT_BAD_INPUT
    except NonFinite as error:
        message, code = f"error: {error}", EXIT_NON_FINITE
    except (Interrupted, KeyboardInterrupt) as error:
        message, code = f"interrupted: {error or 'stopped at once (second Ctrl-C)'}", EXIT_INTERRUPTED
    print(message, file=sys.stderr)
    sys.exit(code)
# --- end shared ---


# --- shared: checkpoint ---
# Exact resume (--checkpoint-every, --resume): a checkpoint holds every tensor, counter and random generator that
# decides what happens next. Environments are not pickled (loading a file must never run code): each one is
# rebuilt from the state of its generator just before its last reset, and the actions of its episode so far.
NOT_COMPARED_ON_RESUME = ("resume", "checkpoint_every", "torch_threads", "cuda", "save_model")  # may change between tries


def rng_state(rng) -> dict:
    """The state of a numpy RandomState (dm_control's) or Generator (gymnasium's) as plain values and tensors."""
    if isinstance(rng, np.random.RandomState):
        state = rng.get_state(legacy=False)
        return {**state, "state": {"key": torch.from_numpy(state["state"]["key"].astype(np.int64)), "pos": state["state"]["pos"]}}
    return rng.bit_generator.state


def set_rng_state(rng, state: dict) -> None:
    if isinstance(rng, np.random.RandomState):
        rng.set_state({**state, "state": {"key": state["state"]["key"].numpy().astype(np.uint32), "pos": state["state"]["pos"]}})
    else:
        rng.bit_generator.state = state


def global_rng_states() -> dict:
    """Python's, numpy's and torch's global generators (CPU and every GPU)."""
    return {"python": random.getstate(), "numpy": rng_state(np.random.mtrand._rand), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_global_rng_states(state: dict) -> None:
    random.setstate(state["python"])
    set_rng_state(np.random.mtrand._rand, state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def replay_episode(env, reset: dict, actions: list) -> np.ndarray:
    """Rebuild an environment mid-episode: reset it as its episode began (`reset` holds the reset's seed, or the
    state of its generator just before an unseeded reset), take the episode's actions again, return the observation.
    MuJoCo and gymnasium's classic-control tasks are deterministic given these."""
    if "seed" in reset:
        obs, _ = env.reset(seed=reset["seed"])
    else:
        set_rng_state(env.unwrapped.np_random, reset["rng"])
        obs, _ = env.reset()
    for action in actions:
        obs = env.step(action)[0]
    return obs


def settings_of(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in NOT_COMPARED_ON_RESUME}


def find_checkpoint(args, script: str) -> str:
    """The checkpoint that `--resume` names: a file, a run folder, or (`--resume` alone) the newest unfinished
    run of this command (same script, env, seed and settings) under runs/. BadInput if there is none."""
    if args.resume != "latest":
        path = os.path.join(args.resume, "checkpoint.pt") if os.path.isdir(args.resume) else args.resume
        if not os.path.isfile(path):
            raise BadInput(f"--resume {args.resume}: no checkpoint there; expected a run folder or its checkpoint.pt")
        return path
    candidates = []
    for folder in glob.glob(f"runs/{args.env_id}__{args.exp_name}__{args.seed}__*"):
        try:
            with open(os.path.join(folder, "settings.json")) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            continue
        if (saved.get("script") == script and saved.get("settings") == settings_of(args)
                and os.path.isfile(os.path.join(folder, "checkpoint.pt"))
                and not os.path.exists(os.path.join(folder, "result.json"))):
            candidates.append(os.path.join(folder, "checkpoint.pt"))
    if not candidates:
        raise BadInput(f"--resume: no interrupted run of this command under runs/{args.env_id}__{args.exp_name}__"
                       f"{args.seed}__*/ (same settings, a checkpoint.pt, no result.json); start it without --resume")
    return max(candidates, key=os.path.getmtime)


def load_checkpoint(args, script: str) -> dict:
    """The checkpoint `--resume` names, checked to be this script's, resumable, and of the same settings."""
    path = find_checkpoint(args, script)
    state = load_file(path, "--resume", f"a checkpoint.pt written by {script}")
    if not isinstance(state, dict) or state.get("script") != script or "settings" not in state:
        raise BadInput(f"--resume {path}: not a checkpoint of {script}")
    if not state.get("resumable", False):
        raise BadInput(f"--resume {path}: written when a non-finite value stopped the run; it is for inspection only")
    changed = sorted(k for k in state["settings"].keys() | settings_of(args).keys()
                     if state["settings"].get(k) != settings_of(args).get(k))
    if changed:
        was = " ".join(f"--{k.replace('_', '-')} {state['settings'].get(k)}" for k in changed)
        raise BadInput(f"--resume {path}: the run was started with {was}; resume it with the same settings")
    return state


def write_json(obj: dict, path: str) -> None:
    """json.dump, atomically."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)
# --- end shared ---


def validate(args: Args) -> None:
    """BadInput (one line) for the first impossible setting, or one that would make the run meaningless."""
    check_range(args, ("seed",), 0, 2**31 - 1, kind="integer")
    check_range(args, ("torch_threads", "total_timesteps", "buffer_size", "batch_size", "utd", "eval_every",
                       "eval_episodes", "log_every", "num_agents", "rnd_dim", "unroll_samples"), 1, kind="integer")  # fmt: skip
    check_range(args, ("learning_starts", "checkpoint_every"), 0, kind="integer")
    if args.learning_starts >= args.total_timesteps:  # the run would end untrained and report that as its score
        raise BadInput(f"--learning-starts {args.learning_starts}: no learning step before the end; must be < --total-timesteps {args.total_timesteps}")
    check_range(args, ("gamma", "ego_weight", "unroll_eps"), 0, 1)
    check_range(args, ("tau",), 0, 1, low_open=True)
    check_range(args, ("learning_rate", "init_temperature", "max_grad_norm", "softmax_temperature", "obs_clip"), 0, low_open=True)
    check_range(args, ("intrinsic_coef",), 0)
    check_range(args, ("target_entropy_scale",))
    if args.buffer_size < args.num_agents:  # CE
        raise BadInput(f"--buffer-size {args.buffer_size}: must hold one round of all agents, >= --num-agents {args.num_agents}")
    for name, valid in (("rnd_mode", ("shared", "own", "per-agent")), ("eval_mode", ("first", "softmax")),
                        ("aggregate", ("mean", "max", "min"))):  # fmt: skip
        if getattr(args, name) not in valid:  # CE: tyro checks these on the command line, main(Args(...)) does not
            raise BadInput(f"--{name.replace('_', '-')} {getattr(args, name)}: must be one of {', '.join(valid)}")
    try:
        make_env(args.env_id, args.seed).close()
    except ValueError as error:  # the valid ids are in the message
        raise BadInput(f"--env-id {args.env_id}: {error}") from None


def main(args: Args) -> dict:
    validate(args)
    torch.set_num_threads(args.torch_threads)  # before any torch work (see --torch-threads)
    N = args.num_agents  # CE
    P = 1 if args.rnd_mode == "shared" else N  # CE: RND modules
    resume = load_checkpoint(args, SCRIPT) if args.resume else None  # BadInput for a missing or mismatched one
    run_name = resume["run_name"] if resume else f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    # a resumed run drops what the interrupted one logged after its checkpoint, and logs it again
    writer = SummaryWriter(f"runs/{run_name}", purge_step=resume["loop"]["global_step"] + 1 if resume else None)
    write_json({"script": SCRIPT, "settings": settings_of(args)}, f"runs/{run_name}/settings.json")
    writer.add_text(
        "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
    )

    # SEEDING
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    eval_generator = torch.Generator(device).manual_seed(args.seed)  # CE: softmax evaluation's draws, apart from training's

    # ENVIRONMENTS: agent i's env is seeded with seed + i (reset and action space, in make_env)
    envs = [make_env(args.env_id, args.seed + i) for i in range(N)]
    eval_envs = [make_env(args.env_id, args.seed + 10_000 + j) for j in range(args.eval_episodes)]
    obs_dim, act_dim = envs[0].observation_space.shape[0], envs[0].action_space.shape[0]

    actor = Actor(envs[0], N).to(device)
    qf = SoftQNetwork(envs[0], N).to(device)
    qf_target = SoftQNetwork(envs[0], N).to(device)
    qf_target.load_state_dict(qf.state_dict())
    qf_target.requires_grad_(False)  # moved only by the soft update
    qf_params, qf_target_params = list(qf.parameters()), list(qf_target.parameters())
    q_optimizer = torch.optim.Adam(qf_params, lr=args.learning_rate, fused=True)
    log_alpha = torch.full((N,), math.log(args.init_temperature), device=device, requires_grad=True)
    alpha = log_alpha.detach().exp()  # [N]
    # one Adam for the actor and the temperature: their losses share no parameter, so one backward and one step
    # serve both (the same update as two optimizers, with one pass of optimizer overhead instead of two)
    actor_optimizer = torch.optim.Adam([*actor.parameters(), log_alpha], lr=args.learning_rate, fused=True)
    target_entropy = -args.target_entropy_scale * act_dim
    # CE: RND (5.4, D.8), from a stream of its own: the SAC part draws exactly what ce_sac.py's Replica draws
    with torch.random.fork_rng(devices=[]):  # the CPU generator only: the modules are built on the CPU, then moved
        torch.default_generator.manual_seed(args.seed + 2**31)  # (torch.manual_seed would reseed CUDA's, unrestored)
        rnd_predictor = RNDNetwork(obs_dim, args.rnd_dim, P)
        rnd_target = RNDNetwork(obs_dim, args.rnd_dim, P)
    rnd_predictor, rnd_target = rnd_predictor.to(device), rnd_target.requires_grad_(False).to(device)  # the target stays random
    rnd_optimizer = torch.optim.Adam(rnd_predictor.parameters(), lr=args.learning_rate, fused=True)
    obs_moments = RunningMoments.empty(P, obs_dim, device)  # afterstates, for the input normalisation
    error_moments = RunningMoments.empty(P, 1, device)  # RND errors, for the reward's scale
    round_rows = rnd_training_rows(torch.arange(N, device=device), N, args.rnd_mode)  # own: [N, 1], a round's row i is agent i's

    rb = ReplayBuffer(args.buffer_size // N, N, obs_dim, act_dim, device)

    episode_resets = [{"seed": args.seed + i} for i in range(N)]  # how each env's episode began, and its actions
    obs = np.stack([env.reset(seed=args.seed + i)[0] for i, env in enumerate(envs)])  # [N, O]
    episode_actions: list[list[np.ndarray]] = [[] for _ in range(N)]  # since: what a resumed run replays
    episode_returns = np.zeros(N)
    eval_returns: list[float] = []
    global_step, next_eval, next_log, next_checkpoint = 0, args.eval_every, args.log_every, args.checkpoint_every
    stateful = {"actor": actor, "qf": qf, "qf_target": qf_target, "q_optimizer": q_optimizer, "actor_optimizer": actor_optimizer,
                "rnd_predictor": rnd_predictor, "rnd_target": rnd_target, "rnd_optimizer": rnd_optimizer}  # CE
    checkpoint_path = f"runs/{run_name}/checkpoint.pt"

    def model_state() -> dict:
        """Every network, optimizer, temperature and normaliser: `--save-model`."""
        return {"global_step": global_step, "log_alpha": log_alpha.detach(),
                **{name: m.state_dict() for name, m in stateful.items()},
                "obs_moments": obs_moments._asdict(), "error_moments": error_moments._asdict()}  # CE

    def training_state(resumable: bool = True) -> dict:
        """Everything that decides the rest of the run: a checkpoint for --resume (or, at a non-finite stop, for inspection)."""
        return {"script": SCRIPT, "settings": settings_of(args), "run_name": run_name, "resumable": resumable,
                **model_state(), "buffer": rb.state_dict(), "rng": global_rng_states(),
                "action_spaces": [rng_state(env.action_space.np_random) for env in envs],
                "eval_envs": [rng_state(env.unwrapped.np_random) for env in eval_envs],
                "eval_generator": eval_generator.get_state(),  # CE
                "loop": {"global_step": global_step, "next_eval": next_eval, "next_log": next_log,
                         "next_checkpoint": next_checkpoint, "eval_returns": eval_returns,
                         "episode_returns": torch.from_numpy(episode_returns), "obs": torch.from_numpy(obs),
                         "episode_resets": episode_resets,
                         "episode_actions": [torch.from_numpy(np.asarray(a, np.float32).reshape(-1, act_dim)) for a in episode_actions]}}

    def stop(error: Exception):
        """End the run between two steps (Ctrl-C, or a non-finite value): a checkpoint, the logs closed."""
        save_file(training_state(resumable=isinstance(error, Interrupted)), checkpoint_path)
        progress.close()
        writer.close()
        raise type(error)(f"{error}; checkpoint in {checkpoint_path}")

    if resume:  # RESUME: everything built above is overwritten with the checkpoint's state
        for name, module in stateful.items():
            module.load_state_dict(resume[name])
        with torch.no_grad():
            log_alpha.copy_(resume["log_alpha"])
        alpha = log_alpha.detach().exp()
        obs_moments = RunningMoments(**{k: v.to(device) for k, v in resume["obs_moments"].items()})  # CE
        error_moments = RunningMoments(**{k: v.to(device) for k, v in resume["error_moments"].items()})  # CE
        rb.load_state_dict(resume["buffer"])
        set_global_rng_states(resume["rng"])
        for env, saved in zip(envs, resume["action_spaces"]):
            set_rng_state(env.action_space.np_random, saved)
        for env, saved in zip(eval_envs, resume["eval_envs"]):
            set_rng_state(env.unwrapped.np_random, saved)
        eval_generator.set_state(resume["eval_generator"])  # CE
        loop = resume["loop"]
        global_step, next_eval, next_log, next_checkpoint = (loop[k] for k in ("global_step", "next_eval", "next_log", "next_checkpoint"))
        eval_returns, episode_returns, episode_resets = loop["eval_returns"], loop["episode_returns"].numpy(), loop["episode_resets"]
        episode_actions = [list(a.numpy()) for a in loop["episode_actions"]]
        obs = np.stack([replay_episode(env, reset, a) for env, reset, a in zip(envs, episode_resets, episode_actions)])
        if not np.array_equal(obs, loop["obs"].numpy()):
            raise BadInput(f"--resume {args.resume}: the environments did not replay to their saved state (nondeterministic env?)")
    learning_start_time, sps = None, 0.0
    progress = Progress()
    progress.phase("warm-up", args.learning_starts, global_step)

    while global_step < args.total_timesteps:
        if STOP_REQUESTED[0]:
            stop(Interrupted(f"at step {global_step}"))
        # COLLECT: one step of every agent in its own environment
        if global_step < args.learning_starts:
            actions = np.stack([env.action_space.sample() for env in envs]).astype(np.float32)  # [N, A]
        else:
            with torch.no_grad():
                obs_t = torch.as_tensor(obs, device=device)  # [N, O]
                actions, _ = actor.get_action(obs_t[:, None], with_log_prob=False)  # [N, 1, A]
                actions = actions[:, 0]  # [N, A]
                if args.col_unroll:  # CE: Eq. 5 with probability eps per agent step (4.2)
                    candidates = candidate_actions(actor, obs_t, args.unroll_samples)  # [N_i, N_j, M, A]
                    collaborate = torch.rand(N, device=device) < args.unroll_eps  # [N]
                    actions = torch.where(collaborate[:, None], collaborative_action(candidates), actions)
            actions = actions.cpu().numpy()  # host-device sync: the environments live on the host
            if not np.isfinite(actions).all():  # a NaN reaching the physics engine would crash it, far from the cause
                stop(NonFinite(f"actions of agents {np.flatnonzero(~np.isfinite(actions).all(1)).tolist()} not finite at step {global_step}"))
        next_obs, rewards = np.empty_like(obs), np.empty(N, np.float32)
        terminations, dones = np.zeros(N, np.float32), np.zeros(N, bool)
        for i, env in enumerate(envs):
            next_obs[i], rewards[i], terminated, truncated, _ = env.step(actions[i])
            terminations[i], dones[i] = terminated, terminated or truncated
            episode_actions[i].append(actions[i])
        # easy to overlook: only terminations stop the bootstrap; a time-limit truncation (all of DMC) still bootstraps
        rb.add(obs, actions, rewards, next_obs, terminations)
        # CE: every collected afterstate enters the normaliser of each module that learns from its row, once
        next_obs_t = torch.as_tensor(next_obs, device=device)  # [N, O]
        round_obs = next_obs_t.expand(P, N, obs_dim) if round_rows is None else next_obs_t[round_rows]  # [P, N or 1, O]
        obs_moments = update_running_moments(obs_moments, round_obs)
        episode_returns += rewards
        global_step += N
        obs = next_obs.copy()
        for i in np.flatnonzero(dones):
            writer.add_scalar(f"charts/episodic_return/agent{i}", episode_returns[i], global_step)
            episode_resets[i], episode_actions[i] = {"rng": rng_state(envs[i].unwrapped.np_random)}, []
            obs[i], _ = envs[i].reset()
            episode_returns[i] = 0.0

        if global_step >= args.learning_starts:
            if learning_start_time is None:
                learning_start_time, learning_start_step = time.time(), global_step
                progress.phase("learning", args.total_timesteps, global_step)
            for _ in range(args.utd * N):
                idx, data = rb.sample(args.batch_size)
                # CE: RND NOVELTY (5.4, D.8): the current predictors' error on the normalised afterstates s'
                x = normalise_observation(data.next_obs, obs_moments, args.obs_clip)  # [P, B, O]
                train_rows = rnd_training_rows(idx, N, args.rnd_mode)  # own: [N, T]; else None, the batch
                if train_rows is None:  # every module learns from the batch: the reward's pass serves the update
                    error = train_error = rnd_error(rnd_predictor, rnd_target, x)  # [P, B], with the predictors' graph
                else:  # own: the reward on every row, the update on agent i's rows only, a 1/N-size pass
                    with torch.no_grad():
                        error = rnd_error(rnd_predictor, rnd_target, x)  # [P, B]
                    x_train = normalise_observation(rb.next_obs[train_rows], obs_moments, args.obs_clip)  # [N, T, O]
                    train_error = rnd_error(rnd_predictor, rnd_target, x_train)  # [N, T]
                error_moments = update_running_moments(error_moments, error.detach()[..., None])
                novelty = intrinsic_reward(error.detach(), error_moments)  # [P, B]
                # CE: RND UPDATE: after the reward, so a batch's reward is the error of predictors not yet updated on it;
                # summing over modules keeps each module's gradient its own
                rnd_losses = train_error.mean(1)  # [P]
                rnd_optimizer.zero_grad(set_to_none=False)
                rnd_losses.sum().backward()
                rnd_optimizer.step()
                # CE: COLLABORATIVE REWARD (5.4): agent i's R_i from the modules' novelty, the same relabeling as ce_sac.py
                intrinsic = rnd_collaborative_reward(novelty, N, args.rnd_mode, args.ego_weight, args.aggregate)  # [N, B]
                rewards = data.rewards + args.intrinsic_coef * intrinsic  # [N, B]: agent i's relabeled reward

                # --- shared: sac-update ---
                # CRITIC: one soft Bellman target per agent, from the min of its twin target critics
                with torch.no_grad():
                    next_actions, next_log_pi = actor.get_action(data.next_obs)  # [N, B, A], [N, B]
                    min_qf_next_target = qf_target(data.next_obs, next_actions).min(1).values  # [N, B]
                    soft_next_value = min_qf_next_target - alpha[:, None] * next_log_pi  # [N, B]
                    next_q_value = rewards + args.gamma * (1 - data.terminations) * soft_next_value  # [N, B]
                qf_values = qf(data.obs, data.actions)  # [N, 2, B]
                # jaxrl2: mean over twins and batch; summing over agents keeps each agent's gradient its own
                qf_losses = (qf_values - next_q_value[:, None]).square().mean((1, 2))  # [N]
                q_optimizer.zero_grad(set_to_none=False)  # zeroes the kept buffers: no fresh 0.5 MB gradients each step
                qf_losses.sum().backward()
                clip_grad_norm_per_agent_(qf, args.max_grad_norm)
                q_optimizer.step()
                torch._foreach_lerp_(qf_target_params, qf_params, args.tau)

                # ACTOR: jaxrl2 uses the updated critics and the mean (not min) of the twins here
                qf.requires_grad_(False)  # only dQ/da is needed: skip the critics' weight gradients
                pi_actions, log_pi = actor.get_action(data.obs)  # [N, B, A], [N, B]
                qf_pi = qf(data.obs, pi_actions).mean(1)  # [N, B]
                actor_losses = (alpha[:, None] * log_pi - qf_pi).mean(1)  # [N]
                # TEMPERATURE: jaxrl2's alpha * (entropy - target), on the actor step's log-probs (no second actor pass)
                entropy = -log_pi.detach().mean(1)  # [N]
                alpha_losses = log_alpha.exp() * (entropy - target_entropy)  # [N]
                actor_optimizer.zero_grad(set_to_none=False)
                (actor_losses.sum() + alpha_losses.sum()).backward()
                clip_grad_norm_per_agent_(actor, args.max_grad_norm)  # the actor's gradients; the temperature's is a scalar
                actor_optimizer.step()  # actor and temperature
                qf.requires_grad_(True)
                alpha = log_alpha.detach().exp()
                # --- end shared ---

        # EVAL: fresh episodes on separate envs, deterministic (mean) action, all episodes in lockstep
        if global_step >= next_eval or global_step >= args.total_timesteps:
            next_eval += args.eval_every
            eval_obs = np.stack([env.reset()[0] for env in eval_envs])  # [E, O]
            returns, running = np.zeros(len(eval_envs)), np.ones(len(eval_envs), bool)
            eval_agent = torch.zeros(len(eval_envs), dtype=torch.long, device=device)  # CE: [E], who acts in each episode
            while running.any():
                with torch.no_grad():
                    eval_obs_t = torch.as_tensor(eval_obs, device=device)  # CE: [E, O]
                    mean_actions = actor.mean_action(eval_obs_t)  # [N, E, A]
                    if args.eval_mode == "softmax":  # CE: a mixture policy as PEX, the agent drawn anew every step
                        q_pi = qf(eval_obs_t, mean_actions).min(1).values  # [N, E]: Q^i(s, pi^i(s))
                        probs = torch.softmax(q_pi.T / args.softmax_temperature, 1)  # [E, N]
                        eval_agent = torch.multinomial(probs, 1, generator=eval_generator)[:, 0]  # [E]
                    eval_actions = mean_actions[eval_agent, torch.arange(len(eval_envs))].cpu().numpy()  # CE: [E, A]
                for j in np.flatnonzero(running):
                    eval_obs[j], r, terminated, truncated, _ = eval_envs[j].step(eval_actions[j])
                    returns[j] += r
                    running[j] = not (terminated or truncated)
            eval_returns.append(float(returns.mean()))
            writer.add_scalar("eval/return", eval_returns[-1], global_step)
            progress.update(global_step, eval_returns[-1])

        # LOG: losses of the last update (the .item() calls sync with the device, hence only every log_every steps)
        if learning_start_time is not None:
            sps = (global_step - learning_start_step) / max(time.time() - learning_start_time, 1e-9)
        if learning_start_time is not None and global_step >= next_log:
            next_log += args.log_every
            writer.add_scalar("charts/SPS", sps, global_step)
            logged = {"losses/qf_loss": qf_losses.mean(), "losses/qf_values": qf_values.mean(),
                      "losses/actor_loss": actor_losses.mean(), "losses/alpha": alpha.mean(),
                      "losses/alpha_loss": alpha_losses.mean(), "losses/entropy": entropy.mean()}
            logged.update({"losses/rnd_loss": rnd_losses.mean(), "charts/rnd_error_mean": error.detach().mean(),  # CE
                           "charts/intrinsic_reward_mean": intrinsic.mean(), "charts/intrinsic_reward_std": intrinsic.std()})
            logged = {tag: value.item() for tag, value in logged.items()}  # host-device syncs, once per log
            if not all(map(math.isfinite, logged.values())):
                stop(NonFinite(f"{', '.join(t for t, v in logged.items() if not math.isfinite(v))} not finite at step {global_step}"))
            for tag, value in logged.items():
                writer.add_scalar(tag, value, global_step)
        progress.update(global_step)

        # CHECKPOINT: atomically (a kill -9 while writing leaves the previous checkpoint whole)
        if args.checkpoint_every and global_step >= next_checkpoint:
            next_checkpoint += args.checkpoint_every * ((global_step - next_checkpoint) // args.checkpoint_every + 1)
            save_file(training_state(), checkpoint_path)

    progress.close()
    if args.save_model:
        path = f"runs/{run_name}/{args.exp_name}.pt"
        save_file(model_state(), path)
        print(f"model saved to {path}")
    for env in envs + eval_envs:
        env.close()
    writer.close()

    eval_return = float(np.mean(eval_returns[-10:]))  # Appendix D.1: mean of the last 10 evaluations
    result = {"eval_return": eval_return, "eval_returns": eval_returns, "global_step": global_step, "run_name": run_name}
    write_json(result, f"runs/{run_name}/result.json")  # the run is finished: --resume no longer picks it
    print(f"eval_return={eval_return}")
    return {**result, "sps": sps}


if __name__ == "__main__":
    cli(main, Args)
