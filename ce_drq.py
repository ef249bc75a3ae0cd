"""Collaborative Exploration (CE) from pixels, with DrQ as the backbone.

"Collaborative Exploration" (CE), section 5.3 and Fig. 4: the method of sections 3-4 (see ce_sac.py) on
pixel-based DeepMind Control, with DrQ (baselines/drq.py: jaxrl2's settings, Appendix C.1) as each agent's
learner and a set of N = 2 agents. Each agent has its own environment; all share one replay buffer (3.1),
and every sampled batch is relabeled for every agent i with r + lambda * R_i, where R_i mixes the novelty of
the afterstate w.r.t. agent i's own recent observations (ego) with its novelty w.r.t. the other agents'
(mutual) (Eqs. 2-3), in the embedding of a contrastive encoder (Eq. 4). Optional, section 4.2:
epsilon-collaborative actions during collection (Eq. 5) and collaborative evaluation (softmax over the agents'
Q-values, or a learned Q-classifier over agent indices).

Fig. 4's rows (one seed; the paper's budget is 1e6 env steps of both agents together, action repeats included):
  CE            python ce_drq.py --env-id cheetah-run
  Replica-DrQ   python ce_drq.py --env-id cheetah-run --no-col-training
  DrQ           python baselines/drq.py --env-id cheetah-run
  All (Table 6) python ce_drq.py --env-id cheetah-run --col-unroll --col-eval
As in ce_sac.py, the paper's CE is collaborative training with agent 0 evaluated (section 5.1).

The backbone is baselines/drq.py with a leading agent dimension of size N: blocks marked
`# --- shared: NAME ---` are text-identical in both files (and the SAC heads, equations and command line
with ce_sac.py's), lines CE adds carry `# CE:`, and `--num-agents 1 --no-col-training` reproduces
baselines/drq.py exactly on CPU (same seed).

Decisions where the paper is silent (beyond baselines/drq.py's):
- Budgets: `--total-timesteps` counts env steps of all agents, action repeats included; each agent makes N
  updates per own agent step (as the state version), so it gets as many updates as the single DrQ agent;
  the random warm-up is 1000 agent steps of each agent unless `--learning-starts` (env steps) says otherwise.
- The embedding e_phi of Eqs. 2 and 4 is its own small CNN, shared by all agents as in the state version,
  on the un-augmented stacks at half resolution (every second row and column, 64x64 -> 32x32): conv 32-32
  (3x3, stride 2) and Table 5's MLP 64-64. The alternative, a projection head on the critics' detached conv
  features, is not cheaper here: each agent has its own critic encoder, so one embedding space would need one
  agent's features (or all of theirs), and the positives s_{t+d} and the memory banks would need extra passes
  through the critics' conv layers: for the positives alone one pass of every agent's encoder over the batch
  per update (measured 179 ms at N = 2, B = 256), for the keys N x N x 300 images more, both growing with N.
  e_phi's whole cost is less (64 ms for the reward, 75 ms for its InfoNCE step), does not grow with N, and
  keeps one embedding for all agents; CE with Eq. 5 costs 9-15% more time than Replica-DrQ
  (benchmarks/drq_speed.py, two runs). Its positives are s_{t+d} of the same agent's same episode, 1 <= |d| <= 5, as in
  the state version.
- Memory banks keep the raw uint8 stacks of the afterstates (one every `--memory-skip` agent steps of each
  agent, 300 per agent: 11 MB each at 64x64), and the keys are re-encoded with the current encoder at every
  update, as in the state version: 600 small-CNN passes, within the 64 ms above.
- The Q-classifier (eval mode `qclassifier`) reads the stacks through the same small CNN with a 256-256 head.
- `--multihead` shares the conv layers, the latents and the MLP torsos of all agents, one head per agent.

Expect:  Fig. 4 shows CE above DrQ, Replica-DrQ, RND and SUNRISE on its four pixel tasks, without numbers;
         DrQ's own paper reports about 759 (+-92) on cartpole-swingup after 100k env steps; this file (N = 2,
         seeds 1 and 2, `--total-timesteps 100000`) 762 and 555 there, baselines/drq.py 846 and 593. The last printed
         line is `eval_return=<mean of the last 10 evaluations>` (agent 0's by default).
Speed:   each update trains all N agents, so N = 2 costs about twice DrQ's CPU time per env step: Replica-DrQ
         8.5 env steps per CPU second on cartpole (per agent 1.12x DrQ's update throughput), CE 7.4
         (benchmarks/drq_speed.py); see baselines/drq.py for DrQ's own figures.
Quick check (about 6 CPU minutes): python ce_drq.py --env-id cartpole-swingup --total-timesteps 10000
         --learning-starts 2000 --batch-size 64 --eval-every 2000 --eval-episodes 2 (checks that everything
         runs, not that it learns).

Seeding: `--seed` seeds python, numpy, torch, the environments' resets (seed + agent index) and action spaces;
on CPU two runs with the same seed are identical. What stays nondeterministic: CUDA kernels that use atomics
(e.g. the convolutions' backward passes), even with `--torch-deterministic`.
"""

import ctypes
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
from types import SimpleNamespace
from typing import Literal, NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from envs.dmc import make_pixel_env, pixel_action_repeat

SCRIPT = "ce_drq.py"  # in checkpoints: a checkpoint resumes only in the script that wrote it


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
    """CPU threads of torch; 1 keeps runs identical across machines (on a 2-core machine a second thread adds little to the convolutions)"""
    save_model: bool = False
    """save all agents and the encoder to `runs/{run_name}/{exp_name}.pt` at the end"""
    checkpoint_every: int = 0
    """env steps between checkpoints of the whole training state, `runs/{run_name}/checkpoint.pt` (0: none)"""
    resume: Optional[str] = None
    """continue an interrupted run bit for bit: `--resume` alone the newest one of this command under runs/, or a run folder or checkpoint"""

    env_id: str = "cartpole-swingup"
    """DMC task as `domain-task`, seen from a camera (section 5.3)"""
    image_size: int = 64
    """height and width of the rendered RGB frames (jaxrl2's train_online_pixels)"""
    frame_stack: int = 3
    """frames stacked into one observation (jaxrl2)"""
    action_repeat: Optional[int] = None
    """env steps per agent step; default PlaNet's: cartpole 8; reacher, cheetah, ball_in_cup 4; otherwise 2 (jaxrl2)"""
    total_timesteps: int = 1_000_000
    """environment steps of all agents together, action repeats included (section 5.1: 1e6)"""
    buffer_size: Optional[int] = None
    """replay buffer capacity in agent steps (transitions) of all agents; default: the whole run, total_timesteps / action_repeat (jaxrl2)"""
    gamma: float = 0.99
    """discount factor (Table 5)"""
    tau: float = 0.005
    """target critic smoothing coefficient, conv layers included (jaxrl2)"""
    batch_size: int = 256
    """transitions per gradient update, the same batch for every agent (jaxrl2; Table 4)"""
    learning_rate: float = 3e-4
    """Adam learning rate of actors, critics, temperatures, encoder and Q-classifier (jaxrl2's drq_default)"""
    init_temperature: float = 0.1
    """initial entropy temperature alpha; log(alpha) is learned (jaxrl2's drq_default)"""
    target_entropy_scale: float = 0.5
    """target entropy = -scale * |A| (jaxrl2; Table 5)"""
    critic_reduction: Literal["mean", "min"] = "mean"
    """how the target combines the twin target critics: jaxrl2's DrQ takes the mean (its SAC the min)"""
    max_grad_norm: float = 0.0
    """gradient-norm clip of actor and critic, per agent (0: off, as jaxrl2's DrQ; Table 5's 20 is for the state agents)"""
    latent_dim: int = 50
    """width of the Linear + LayerNorm + tanh on top of the conv features, one for the actor, one for the critic (jaxrl2)"""
    image_pad: int = 4
    """random shift: pad by this many pixels (edge values) and crop back at a random offset (DrQ; 0: no augmentation)"""
    learning_starts: Optional[int] = None
    """environment steps (all agents) with uniform random actions before learning; default: 1000 agent steps of each agent (jaxrl2's start_training), 1000 * N * action_repeat"""
    utd: int = 1
    """vectorized updates of all agents per agent step (all agents): N updates per own step (5.1)"""
    eval_every: int = 10_000
    """environment steps (all agents) between evaluations (paper silent for pixels)"""
    eval_episodes: int = 10
    """episodes per evaluation, run in lockstep with the deterministic (mean) action"""
    log_every: int = 1000
    """environment steps between loss logs (each log is a host-device sync)"""

    # CE: the method (Tables 4, 6-9)
    num_agents: int = 2
    """N, agents in the set, each with its own environment (section 5.3: 2 for pixels)"""
    multihead: bool = False
    """one torso (conv layers, latent, MLP) shared by all agents per network type, N heads (section 5.8)"""
    col_training: bool = True
    """Col-Training (Table 6): relabel rewards with the collaborative reward of Eq. 3; off = Replica"""
    col_unroll: bool = False
    """Col-Unroll (Table 6): epsilon-collaborative actions of Eq. 5 while collecting (off in Table 1's CE)"""
    col_eval: bool = False
    """Col-Eval (Table 6): the same as `--eval-mode softmax` (an error with `--eval-mode qclassifier`)"""
    eval_mode: Literal["first", "softmax", "qclassifier"] = "first"
    """who acts in evaluation (4.2): agent 0 (Table 1), softmax over Q^i(s, pi^i(s)), or the Q-classifier"""
    softmax_temperature: float = 1.0
    """T in softmax_i(Q^i(s, pi^i(s)) / T) (paper: no temperature, i.e. 1)"""
    qclassifier_horizon: int = 100
    """Monte-Carlo horizon of the Q-classifier's targets in agent steps, and eval steps between its choices (5.7)"""
    encoder: Literal["contrastive", "identity", "random"] = "contrastive"
    """embedding of the novelty: contrastive small CNN (Eq. 4), the half-resolution pixels, or a fixed random CNN (Table 8)"""
    encoder_dim: int = 64
    """width of the encoder's MLP 64-64 on its conv layers, the last layer being the embedding (Table 5)"""
    contrastive_temperature: float = 0.07
    """temperature tau of the InfoNCE loss, Eq. 4 (Table 4)"""
    positive_horizon: int = 5
    """L, positives are s_{t+d} of the same episode with 1 <= |d| <= L agent steps (C.1; Table 4's horizon 10 = 2L)"""
    memory_size: int = 300
    """observations in each agent's FIFO memory bank (Table 4)"""
    memory_skip: int = 5
    """one observation into the bank every this many of the agent's own agent steps (Table 4)"""
    knn_k: int = 20
    """K of the KNN cosine similarity, Eq. 2 (Table 4; Table 9 ablates 5-30)"""
    ego_weight: float = 0.5
    """w in Eq. 3, weight of the agent's own novelty against the others' (4.1)"""
    aggregate: Literal["mean", "max", "min"] = "mean"
    """g in Eq. 3, how the other agents' novelties are combined (4.1)"""
    intrinsic_coef: float = 0.2
    """lambda, agent i trains on r + lambda * R_i (Table 4)"""
    unroll_eps: float = 0.2
    """probability of the collaborative action of Eq. 5 per agent step (Table 4)"""
    unroll_samples: int = 10
    """M, actions every policy samples for Eq. 5 (Table 4)"""


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


# --- shared: drq-networks ---
class PixelEncoder(nn.Module):
    """N agents' conv layers 32-64-128-256 (3x3, stride 2, VALID, ReLU; jaxrl2's D4PGEncoder as DrQ sets it):
    pixels uint8 [N, B, C, H, W] (agent i encodes its own images) or [B, C, H, W] (every agent the same) -> [N, B, F].

    A 3x3 convolution is a linear map of each 3x3 patch, so a layer's kernels are a VectorizedLinear(9 C_in, C_out):
    the same orthogonal initialisation as jaxrl2's (which flattens the kernel the same way), the same per-agent clip,
    and agents=1 for CE's multihead torso. The agents' convolutions run one after another: measured on one CPU
    thread (benchmarks/drq_speed.py, N = 2, batch 256), per-agent convolutions on channels-last images take 0.22 s
    forward and 0.52 s forward + backward, one grouped convolution (groups = N) 0.22 s and 0.59 s, torch.func.vmap
    over the agents 0.27 s and 0.66 s: for an update's two forward passes and one backward, the loop is the fastest.
    """

    def __init__(self, obs_shape: tuple[int, int, int], num_agents: int, shared: bool = False,
                 channels: tuple[int, ...] = (32, 64, 128, 256)):  # fmt: skip
        super().__init__()
        self.num_agents = num_agents
        C, H, W = obs_shape
        self.layers = nn.ModuleList()
        for out_channels in channels:
            self.layers.append(VectorizedLinear(9 * C, out_channels, 1 if shared else num_agents))
            C, H, W = out_channels, (H - 3) // 2 + 1, (W - 3) // 2 + 1  # VALID, stride 2
        self.out_features = C * H * W  # 256 * 3 * 3 = 2304 at 64x64

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float().div_(255)  # keeps the (channels-last) strides of random_shift's output; one pass fewer than / 255
        own = x.dim() == 5  # [N, B, C, H, W]: agent i sees x[i]
        agents = self.layers[0].agents
        if agents == 1:  # one set of kernels (N = 1, or the multihead torso): one pass over every image
            inputs = [x.flatten(0, 1) if own else x]
        else:
            inputs = [x[i] if own else x for i in range(agents)]
        features = []
        for i, h in enumerate(inputs):
            for layer in self.layers:
                kernel = layer.weight[i].T.reshape(layer.weight.shape[-1], -1, 3, 3)  # [9 C_in, C_out] -> [C_out, C_in, 3, 3]
                h = F.relu(F.conv2d(h, kernel, layer.bias[i, 0], stride=2))
            features.append(h.flatten(1))  # [B, C * H * W]
        features = torch.stack(features)  # [agents, B', F]
        if agents == 1 and own:
            return features.view(self.num_agents, -1, self.out_features)  # [N, B, F]
        return features.expand(self.num_agents, -1, -1)  # [N, B, F] (a view when the kernels are shared)


class Latent(nn.Module):
    """N agents' Linear + LayerNorm + tanh on conv features (jaxrl2's PixelMultiplexer): [N, B, F] -> [N, B, latent_dim]."""

    def __init__(self, in_features: int, latent_dim: int, agents: int):
        super().__init__()
        self.fc = VectorizedLinear(in_features, latent_dim, agents)
        self.ln_scale = nn.Parameter(torch.ones(agents, 1, latent_dim))
        self.ln_shift = nn.Parameter(torch.zeros(agents, 1, latent_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = F.layer_norm(self.fc(features), self.ln_scale.shape[-1:], eps=1e-6)  # flax's epsilon
        return torch.tanh(h * self.ln_scale + self.ln_shift)


def latent_spaces(env, latent_dim: int) -> SimpleNamespace:
    """What SAC's Actor and SoftQNetwork read from an env, for heads whose observation is the latent."""
    return SimpleNamespace(observation_space=SimpleNamespace(shape=(latent_dim,)), action_space=env.action_space)


class DrQCritic(SoftQNetwork):
    """N agents' DrQ critics: conv encoder and latent shared by an agent's twin critics, SAC's twin MLP heads on top.

    forward(x, actions): x pixels uint8 ([N, B, C, H, W] or [B, C, H, W]), or conv features [N, B, F] that the
    update already computed with `self.encoder` (float); actions [N, B, A] or [B, A] -> Q [N, 2, B].
    """

    def __init__(self, env, num_agents: int, latent_dim: int, shared_torso: bool = False):
        super().__init__(latent_spaces(env, latent_dim), num_agents, shared_torso)
        self.encoder = PixelEncoder(env.observation_space.shape, num_agents, shared_torso)
        self.latent = Latent(self.encoder.out_features, latent_dim, 1 if shared_torso else num_agents)

    def forward(self, x: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x) if x.dtype == torch.uint8 else x  # [N, B, F]
        return super().forward(self.latent(features), actions)


class DrQActor(Actor):
    """N agents' DrQ policies: SAC's tanh-Gaussian MLP 256-256 on the actor's own latent of the critic's conv
    features, detached (DrQ: only critic gradients train the conv layers).

    forward(x): x pixels uint8 (encoded here by the critic's conv layers) or those conv features [N, B, F] (float)
    -> mean, log_std [N, B, A]; `get_action` and `mean_action` are SAC's.
    """

    def __init__(self, env, critic_encoder: PixelEncoder, num_agents: int, latent_dim: int, shared_torso: bool = False):
        super().__init__(latent_spaces(env, latent_dim), num_agents, shared_torso)
        self.latent = Latent(critic_encoder.out_features, latent_dim, 1 if shared_torso else num_agents)
        # the critic's module, not a submodule: its parameters are not the actor's (optimizer, state_dict, .to())
        self.__dict__["critic_encoder"] = critic_encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.critic_encoder(x) if x.dtype == torch.uint8 else x  # [N, B, F]
        return super().forward(self.latent(features.detach()))


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """DrQ's augmentation: images [B, C, H, W] -> [B, C, H, W], each padded by `pad` pixels that repeat its edge
    values and cropped back to H x W at its own offset (dy, dx), uniform in {0, ..., 2 pad}^2.

    Padding with edge values and cropping at (dy, dx) reads pixel (i + dy - pad, j + dx - pad) clamped to the
    image: one gather, no padded copy. Draws B x 2 integers from torch's generator. The result is channels-last
    in memory (the layout the CPU convolutions prefer).
    """
    B, C, H, W = images.shape
    offsets = torch.randint(0, 2 * pad + 1, (B, 2), device=images.device)  # [B, 2]: (dy, dx)
    rows = (torch.arange(H, device=images.device) + offsets[:, :1] - pad).clamp(0, H - 1)  # [B, H]
    cols = (torch.arange(W, device=images.device) + offsets[:, 1:] - pad).clamp(0, W - 1)  # [B, W]
    batch = torch.arange(B, device=images.device)[:, None, None]  # [B, 1, 1]
    shifted = images[batch, :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]: advanced indices first
    return shifted.permute(0, 3, 1, 2)  # [B, C, H, W]
# --- end shared ---


class PixelEmbedding(nn.Module):  # CE
    """e_phi on pixel stacks: uint8 [B, C, H, W] -> [B, D] (paper silent for pixels; see the docstring's decisions).

    The stack at half resolution (every second row and column: 64x64 -> 32x32), conv 32-32 (3x3, stride 2, ReLU),
    then the MLP 64-64 of Table 5 with no activation after its last layer. Subsampling, not 2x2 averaging: it
    converts a quarter of the pixels to float, and the conversion, not the convolutions, is most of this
    network's cost (measured: 2x2 averaging made its passes twice as dear). `identity` (Table 8's raw
    observation): the half-resolution pixels themselves, flattened.
    """

    def __init__(self, obs_shape: tuple[int, int, int], width: int, identity: bool = False):
        super().__init__()
        C, H, W = obs_shape
        if identity:
            self.net = nn.Flatten()
            return
        size = lambda s: (((s + 1) // 2 - 3) // 2 + 1 - 3) // 2 + 1  # halved, then two VALID stride-2 convolutions
        self.net = nn.Sequential(
            nn.Conv2d(C, 32, 3, stride=2), nn.ReLU(), nn.Conv2d(32, 32, 3, stride=2), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * size(H) * size(W), width), nn.ReLU(), nn.Linear(width, width),
        )  # fmt: skip

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels[..., ::2, ::2].float().div_(255))


class Batch(NamedTuple):
    obs: torch.Tensor  # [B, C, H, W] uint8, C = 3 * frame_stack
    actions: torch.Tensor  # [B, A]
    rewards: torch.Tensor  # [B]
    next_obs: torch.Tensor  # [B, C, H, W] uint8
    terminations: torch.Tensor  # [B]


class PixelReplayBuffer:
    """All agents' transitions on the training device, each rendered frame stored once (uint8).

    Transitions are rows in rounds of N (one agent step of every agent), as in ce_sac.py's buffer: row
    f = round * N + agent, a ring over rounds. Frames live apart, one ring per agent, [N, F, 3, H, W]:
    an agent's ring receives the first frame f_0 of each of its episodes, then the newest frame of every
    next observation, so it runs f_0, f_1, ..., f_T of an episode, then f_0 of the next. A row keeps the
    index (counted from the start, never wrapped) of the frame f_{t+1} its step t produced, and t; a sample
    rebuilds obs = frames max(t - k, 0) and next obs = frames max(t + 1 - k, 0), k = stack - 1 .. 0: the
    first frame repeated at an episode's start, exactly as the environment stacks them
    (envs/dmc.py: PixelObservation). A stack never reaches across an episode start or an agent.

    Size: an agent's C rows span at most C // episode_length + 1 episode starts, so a ring of
    F = C + C // episode_length + 1 + stack frames still holds every frame a stored row reads.
    Memory: N * F * 3 * H * W bytes; at 64x64, 12 KiB per agent step (a float32 obs/next-obs layout: 288 KiB).
    CE: each row also records when it was written (`rounds`) and whether the episode ended there (`dones`),
    which is what the contrastive positives and the Q-classifier's Monte-Carlo targets need.
    """

    def __init__(self, capacity_rounds: int, num_agents: int, obs_shape: tuple[int, int, int], act_dim: int,
                 episode_length: float, device: torch.device):  # fmt: skip
        size = capacity_rounds * num_agents
        channels, height, width = obs_shape
        self.capacity_rounds, self.num_agents, self.device = capacity_rounds, num_agents, device
        self.stack, self.episode_length = channels // 3, episode_length
        starts = capacity_rounds // episode_length if math.isfinite(episode_length) else 0
        frames = capacity_rounds + int(starts) + 1 + self.stack
        # zeros, not empty: a slot read before it is written (CE's contrastive positive of a step without one,
        # masked out of the loss but a negative for the others) reads the same bytes in every run
        self.frames = torch.zeros(num_agents, frames, 3, height, width, dtype=torch.uint8, device=device)
        self.frames_added = [0] * num_agents  # per agent, since the start
        self.episode_start = [-math.inf] * num_agents  # round of each agent's last episode start
        self.frame = torch.zeros(size, dtype=torch.long, device=device)  # f_{t+1}'s index, since the start
        self.episode_steps = torch.zeros(size, dtype=torch.long, device=device)  # t within the episode
        self.actions = torch.zeros(size, act_dim, device=device)
        self.rewards = torch.zeros(size, device=device)
        self.terminations = torch.zeros(size, device=device)
        self.dones = torch.zeros(size, dtype=torch.bool, device=device)  # CE: termination or truncation
        self.rounds = torch.full((size,), -1, dtype=torch.long, device=device)  # CE: round of writing
        self.rounds_added = 0

    def add(self, obs, actions, rewards, next_obs, terminations, dones, episode_steps):
        """One round: each argument [N, ...] (numpy), row i from agent i; obs and next_obs uint8 [N, 3 * stack, H, W]."""
        start = (self.rounds_added % self.capacity_rounds) * self.num_agents
        frame = []
        for agent in range(self.num_agents):
            if episode_steps[agent] == 0:  # the episode's first transition: its reset frame f_0 first
                if self.rounds_added - self.episode_start[agent] < self.episode_length:  # the ring's size assumes it
                    raise ValueError(f"agent {agent}'s episode ended after {self.rounds_added - self.episode_start[agent]} "
                                     f"steps; this buffer was sized for episodes of {self.episode_length}")  # fmt: skip
                self.episode_start[agent] = self.rounds_added
                self._add_frame(agent, obs[agent, -3:])
            frame.append(self._add_frame(agent, next_obs[agent, -3:]))
        for field, value in zip(
            (self.frame, self.episode_steps, self.actions, self.rewards, self.terminations, self.dones),
            (frame, episode_steps, actions, rewards, terminations, dones),
        ):
            field[start : start + self.num_agents] = torch.as_tensor(np.asarray(value), dtype=field.dtype, device=self.device)
        self.rounds[start : start + self.num_agents] = self.rounds_added  # CE
        self.rounds_added += 1

    def _add_frame(self, agent: int, frame: np.ndarray) -> int:
        index = self.frames_added[agent]
        self.frames[agent, index % self.frames.shape[1]] = torch.as_tensor(frame, device=self.device)
        self.frames_added[agent] += 1
        return index

    def stacks(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The obs and next-obs stacks of rows [B] -> two uint8 [B, 3 * stack, H, W], from one gather of stack + 1 frames."""
        back = torch.arange(self.stack, -1, -1, device=self.device)  # [S + 1]: frames back from f_{t+1}, S .. 0
        back = torch.minimum(back, self.episode_steps[rows, None] + 1)  # [B, S + 1]: never before the episode's f_0
        slots = (self.frame[rows, None] - back) % self.frames.shape[1]  # [B, S + 1]
        window = self.frames[(rows % self.num_agents)[:, None], slots]  # [B, S + 1, 3, H, W]: f_{t-S+1} .. f_{t+1}
        return window[:, :-1].flatten(1, 2), window[:, 1:].flatten(1, 2)  # obs f_{t-S+1} .. f_t, next f_{t-S+2} .. f_{t+1}

    def sample(self, batch_size: int) -> tuple[torch.Tensor, Batch]:
        """Uniform over all stored transitions; indices drawn on the buffer's device (no host sync)."""
        filled = min(self.rounds_added, self.capacity_rounds) * self.num_agents
        idx = torch.randint(filled, (batch_size,), device=self.device)  # [B]
        obs, next_obs = self.stacks(idx)
        return idx, Batch(obs, self.actions[idx], self.rewards[idx], next_obs, self.terminations[idx])

    def state_dict(self) -> dict:
        """The filled rows and frames (cloned: a slice would save the whole storage) and the counters."""
        filled = min(self.rounds_added, self.capacity_rounds) * self.num_agents
        rows = {name: value[:filled].clone() for name, value in vars(self).items()
                if isinstance(value, torch.Tensor) and name != "frames"}  # fmt: skip
        return {"rounds_added": self.rounds_added, "frames_added": list(self.frames_added),
                "episode_start": list(self.episode_start), "frames": self.frames[:, : max(self.frames_added)].clone(), **rows}

    def load_state_dict(self, state: dict) -> None:
        self.rounds_added, self.frames_added, self.episode_start = (
            state["rounds_added"], list(state["frames_added"]), list(state["episode_start"]))
        for name, value in vars(self).items():
            if name == "frames":
                value[:, : state[name].shape[1]] = state[name]
            elif isinstance(value, torch.Tensor):
                value[: len(state[name])] = state[name]

    # --- shared: same-episode ---
    def same_episode(self, idx: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # CE
        """Rows [B, K] of the same agent `offsets` [K] of its own steps away from rows idx [B], and
        whether each holds the same episode: written exactly d rounds later (so not overwritten
        since) and at episode step t + d (so no reset in between)."""
        rows = (idx[:, None] + offsets * self.num_agents) % self.rounds.shape[0]  # [B, K]
        step = self.episode_steps[idx, None] + offsets  # [B, K]
        valid = (self.rounds[rows] == self.rounds[idx, None] + offsets) & (self.episode_steps[rows] == step) & (step >= 0)
        return rows, valid
    # --- end shared ---


# --- shared: knn-novelty ---
def knn_cosine_similarity(query: torch.Tensor, keys: torch.Tensor, k: int) -> torch.Tensor:
    """f^KNN of Eq. 2: query [B, D], keys [N, M, D] -> [B, N], the mean of the k largest cosine
    similarities between each query and agent n's keys.

    Pass only the filled keys: all agents step in lockstep, so every bank holds the same count M.
    A bank with fewer than k keys gives the mean over all of them; an empty bank (M = 0, only if
    learning starts before the first memory write) gives similarity 0, i.e. novelty 0.
    """
    B, (N, M, _) = query.shape[0], keys.shape
    if M == 0:
        return query.new_zeros(B, N)
    k = min(k, M)
    sim = (F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).flatten(0, 1).T).view(B, N, M)  # [B, N, M]
    if sim.is_cuda or sim.requires_grad:
        return sim.topk(k, dim=-1, sorted=False).values.mean(-1)  # [B, N]
    # The same k largest, found by numpy's introselect: torch's CPU top-k costs about 3 ms per
    # batch here ([256, 4, 300], k = 20), numpy's partition under 1 ms (a third of CE's overhead).
    top = np.partition(sim.numpy(), M - k, axis=-1)[..., M - k :]  # [B, N, k], in no order
    return torch.from_numpy(top).mean(-1)  # [B, N]


def novelty_of(query: torch.Tensor, keys: torch.Tensor, k: int) -> torch.Tensor:
    """Eq. 2: r(s', A^n) = -f^KNN(e(s'), Z^n); query [B, D], keys [N, M, D] -> [B, N]."""
    return -knn_cosine_similarity(query, keys, k)

# --- end shared ---


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


# --- shared: info-nce-loss ---
def info_nce_loss(
    anchors: torch.Tensor, positives: torch.Tensor, temperature: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 4: InfoNCE on anchors [B, D] and their positives [B, D] -> scalar.

    logits[b, c] = f(anchor_b, positive_c) / temperature with f the cosine similarity; the label of
    row b is c = b, the other positives of the batch are its negatives (4.1). `valid` [B] (bool,
    optional) leaves anchors without a positive out of the mean; their rows still serve as negatives.
    """
    logits = F.normalize(anchors, dim=-1) @ F.normalize(positives, dim=-1).T / temperature  # [B, B]
    losses = F.cross_entropy(logits, torch.arange(len(anchors), device=anchors.device), reduction="none")  # [B]
    if valid is None:
        return losses.mean()
    return (losses * valid).sum() / valid.sum().clamp(min=1)

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


# --- shared: cpu-memory ---
def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the system at once.

    An update allocates and frees dozens of 1-40 MB tensors (DrQ: the batch as float, conv activations and their
    gradients; MADDPG: GRU activations of whole trajectories); by default glibc unmaps such blocks when freed, and
    the next update faults fresh zeroed pages in again. Measured on one CPU thread: DrQ at batch 256, 94 ms of
    system time per update (a sixth of it), 5 ms with this; MADDPG on mpe-climb, 6% less CPU time per step.
    Linux with glibc only; elsewhere it does nothing. Numbers computed are unchanged.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks up to 32 MiB (glibc's largest setting) come from the heap
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of freed heap before returning any
# --- end shared ---


def validate(args: Args) -> None:
    """BadInput (one line) for the first impossible setting, or one that would make the run meaningless."""
    check_range(args, ("seed",), 0, 2**31 - 1, kind="integer")
    check_range(args, ("torch_threads", "total_timesteps", "batch_size", "utd", "eval_every", "eval_episodes",
                       "log_every", "frame_stack", "latent_dim", "num_agents", "knn_k", "memory_size", "memory_skip",
                       "positive_horizon", "unroll_samples", "qclassifier_horizon", "encoder_dim"), 1, kind="integer")  # fmt: skip
    check_range(args, [name for name in ("action_repeat", "buffer_size") if getattr(args, name) is not None], 1, kind="integer")
    check_range(args, ("image_size",), 1, kind="integer")
    if args.image_size < 31:
        raise BadInput(f"--image-size {args.image_size}: too small for the encoder's four 3x3 stride-2 convolutions; "
                       "must be an integer >= 31 (DrQ: 64 or 84)")  # fmt: skip
    check_range(args, [name for name in ("learning_starts",) if getattr(args, name) is not None], 0, kind="integer")
    check_range(args, ("checkpoint_every", "image_pad"), 0, kind="integer")
    check_range(args, ("gamma", "ego_weight", "unroll_eps"), 0, 1)
    check_range(args, ("tau",), 0, 1, low_open=True)
    check_range(args, ("learning_rate", "init_temperature", "contrastive_temperature", "softmax_temperature"), 0, low_open=True)
    check_range(args, ("max_grad_norm", "intrinsic_coef"), 0)
    check_range(args, ("target_entropy_scale",))
    if args.critic_reduction not in ("mean", "min"):  # tyro checks it on the command line, main(Args(...)) does not
        raise BadInput(f"--critic-reduction {args.critic_reduction}: must be one of mean, min")
    if args.buffer_size is not None and args.buffer_size < args.num_agents:  # CE
        raise BadInput(f"--buffer-size {args.buffer_size}: must hold one round of all agents, >= --num-agents {args.num_agents}")
    for name, valid in (("eval_mode", ("first", "softmax", "qclassifier")), ("encoder", ("contrastive", "identity", "random")),
                        ("aggregate", ("mean", "max", "min"))):  # fmt: skip
        if getattr(args, name) not in valid:  # CE: tyro checks these on the command line, main(Args(...)) does not
            raise BadInput(f"--{name.replace('_', '-')} {getattr(args, name)}: must be one of {', '.join(valid)}")
    if args.col_eval and args.eval_mode == "qclassifier":  # CE
        raise BadInput("--col-eval: means --eval-mode softmax; pass one of --col-eval or --eval-mode qclassifier")
    try:
        make_pixel_env(args.env_id, args.seed, args.image_size, args.frame_stack, args.action_repeat).close()
    except ValueError as error:  # the valid ids are in the message
        raise BadInput(f"--env-id {args.env_id}: {error}") from None
    default = 1000 * args.num_agents * (args.action_repeat or pixel_action_repeat(args.env_id))  # CE: 1000 agent steps of each
    if (args.learning_starts if args.learning_starts is not None else default) >= args.total_timesteps:  # an untrained score
        value = args.learning_starts if args.learning_starts is not None else f"not given: {default} (1000 agent steps)"
        raise BadInput(f"--learning-starts {value}: no learning step before the end; must be < --total-timesteps {args.total_timesteps}")


def main(args: Args) -> dict:
    validate(args)
    torch.set_num_threads(args.torch_threads)  # before any torch work (see --torch-threads)
    keep_freed_memory()  # a sixth less CPU time per update on Linux
    N = args.num_agents  # CE
    eval_mode = "softmax" if args.col_eval else args.eval_mode  # CE: Col-Eval of Table 6 is the softmax mode
    action_repeat = args.action_repeat or pixel_action_repeat(args.env_id)
    round_steps = N * action_repeat  # env steps of one agent step of every agent
    learning_starts = args.learning_starts if args.learning_starts is not None else 1000 * round_steps  # env steps
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

    # ENVIRONMENTS: agent i's env is seeded with seed + i (reset and action space, in make_pixel_env)
    def make(seed: int):
        return make_pixel_env(args.env_id, seed, args.image_size, args.frame_stack, action_repeat)

    envs = [make(args.seed + i) for i in range(N)]
    eval_envs = [make(args.seed + 10_000 + j) for j in range(args.eval_episodes)]
    obs_shape, act_dim = envs[0].observation_space.shape, envs[0].action_space.shape[0]

    qf = DrQCritic(envs[0], N, args.latent_dim, shared_torso=args.multihead).to(device)
    actor = DrQActor(envs[0], qf.encoder, N, args.latent_dim, shared_torso=args.multihead).to(device)
    qf_target = DrQCritic(envs[0], N, args.latent_dim, shared_torso=args.multihead).to(device)
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
    # CE: built only when used, so that Replica draws the same random numbers as baselines/drq.py
    encoder = encoder_optimizer = None
    if args.col_training:
        encoder = PixelEmbedding(obs_shape, args.encoder_dim, identity=args.encoder == "identity").to(device)
        if args.encoder == "contrastive":
            encoder_optimizer = torch.optim.Adam(encoder.parameters(), lr=args.learning_rate, fused=True)
            L = args.positive_horizon
            positive_offsets = torch.cat([torch.arange(-L, 0), torch.arange(1, L + 1)]).to(device)  # [2L]: d
        else:
            encoder.requires_grad_(False)  # identity or random: fixed, never trained (Table 8)
        # raw afterstates, FIFO per agent (11 MB per agent at 64x64); their keys are re-encoded at every update
        memory_bank = torch.zeros(N, args.memory_size, *obs_shape, dtype=torch.uint8, device=device)
        memory_filled = 0  # lockstep: every bank holds the same count
    if eval_mode == "qclassifier":  # CE: Q^e(s) -> R^N, e_phi's small CNN with a 256-256 head (paper silent on its shape)
        q_classifier = nn.Sequential(PixelEmbedding(obs_shape, 256), nn.ReLU(), nn.Linear(256, N)).to(device)
        q_classifier_optimizer = torch.optim.Adam(q_classifier.parameters(), lr=args.learning_rate, fused=True)
        horizon = torch.arange(args.qclassifier_horizon, device=device)  # [H]

    capacity = args.buffer_size // N if args.buffer_size else math.ceil(args.total_timesteps / round_steps)  # rounds
    rb = PixelReplayBuffer(capacity, N, obs_shape, act_dim, envs[0].episode_length, device)

    episode_resets = [{"seed": args.seed + i} for i in range(N)]  # how each env's episode began, and its actions
    obs = np.stack([env.reset(seed=args.seed + i)[0] for i, env in enumerate(envs)])  # [N, C, H, W] uint8
    episode_actions: list[list[np.ndarray]] = [[] for _ in range(N)]  # since: what a resumed run replays
    episode_returns = np.zeros(N)
    episode_steps = np.zeros(N, np.int64)  # position of each agent in its episode: where the buffer's stacks begin
    eval_returns: list[float] = []
    global_step, next_eval, next_log, next_checkpoint = 0, args.eval_every, args.log_every, args.checkpoint_every
    stateful = {"actor": actor, "qf": qf, "qf_target": qf_target, "q_optimizer": q_optimizer, "actor_optimizer": actor_optimizer,
                "encoder": encoder, "encoder_optimizer": encoder_optimizer,  # CE
                "q_classifier": q_classifier if eval_mode == "qclassifier" else None,  # CE
                "q_classifier_optimizer": q_classifier_optimizer if eval_mode == "qclassifier" else None}  # CE
    checkpoint_path = f"runs/{run_name}/checkpoint.pt"

    def model_state() -> dict:
        """Every network, optimizer and temperature: `--save-model`."""
        return {"global_step": global_step, "log_alpha": log_alpha.detach(),
                **{name: m.state_dict() if m is not None else None for name, m in stateful.items()}}

    def training_state(resumable: bool = True) -> dict:
        """Everything that decides the rest of the run: a checkpoint for --resume (or, at a non-finite stop, for inspection)."""
        return {"script": SCRIPT, "settings": settings_of(args), "run_name": run_name, "resumable": resumable,
                **model_state(), "buffer": rb.state_dict(), "rng": global_rng_states(),
                "action_spaces": [rng_state(env.action_space.np_random) for env in envs],
                "eval_envs": [rng_state(env.unwrapped.np_random) for env in eval_envs],
                "eval_generator": eval_generator.get_state(),  # CE
                "memory": (memory_bank, memory_filled) if encoder is not None else None,  # CE
                "loop": {"global_step": global_step, "next_eval": next_eval, "next_log": next_log,
                         "next_checkpoint": next_checkpoint, "eval_returns": eval_returns,
                         "episode_returns": torch.from_numpy(episode_returns), "obs": torch.from_numpy(obs),
                         "episode_steps": torch.from_numpy(episode_steps),
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
            if module is not None:
                module.load_state_dict(resume[name])
        with torch.no_grad():
            log_alpha.copy_(resume["log_alpha"])
        alpha = log_alpha.detach().exp()
        rb.load_state_dict(resume["buffer"])
        set_global_rng_states(resume["rng"])
        for env, saved in zip(envs, resume["action_spaces"]):
            set_rng_state(env.action_space.np_random, saved)
        for env, saved in zip(eval_envs, resume["eval_envs"]):
            set_rng_state(env.unwrapped.np_random, saved)
        eval_generator.set_state(resume["eval_generator"])  # CE
        if encoder is not None:  # CE
            memory_bank.copy_(resume["memory"][0])
            memory_filled = resume["memory"][1]
        loop = resume["loop"]
        global_step, next_eval, next_log, next_checkpoint = (loop[k] for k in ("global_step", "next_eval", "next_log", "next_checkpoint"))
        eval_returns, episode_returns, episode_resets = loop["eval_returns"], loop["episode_returns"].numpy(), loop["episode_resets"]
        episode_steps = loop["episode_steps"].numpy()
        episode_actions = [list(a.numpy()) for a in loop["episode_actions"]]
        # replaying the episode's actions renders its frames again, so the frame stack is rebuilt too
        obs = np.stack([replay_episode(env, reset, a) for env, reset, a in zip(envs, episode_resets, episode_actions)])
        if not np.array_equal(obs, loop["obs"].numpy()):
            raise BadInput(f"--resume {args.resume}: the environments did not replay to their saved state (nondeterministic env?)")
    learning_start_time, sps = None, 0.0
    progress = Progress()
    progress.phase("warm-up", learning_starts, global_step)

    while global_step < args.total_timesteps:
        if STOP_REQUESTED[0]:
            stop(Interrupted(f"at step {global_step}"))
        # COLLECT: one agent step (action_repeat env steps) of every agent in its own environment
        if global_step < learning_starts:
            actions = np.stack([env.action_space.sample() for env in envs]).astype(np.float32)  # [N, A]
        else:
            with torch.no_grad():
                obs_t = torch.as_tensor(obs, device=device)  # [N, C, H, W]
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
        rb.add(obs, actions, rewards, next_obs, terminations, dones, episode_steps)  # CE: + dones
        episode_returns += rewards
        episode_steps += 1
        global_step += round_steps
        if encoder is not None and (global_step // round_steps) % args.memory_skip == 0:  # CE: every memory_skip own steps
            memory_bank[:, memory_filled % args.memory_size] = torch.as_tensor(next_obs, device=device)  # afterstates s'
            memory_filled += 1
        obs = next_obs.copy()
        for i in np.flatnonzero(dones):
            writer.add_scalar(f"charts/episodic_return/agent{i}", episode_returns[i], global_step)
            episode_resets[i], episode_actions[i] = {"rng": rng_state(envs[i].unwrapped.np_random)}, []
            obs[i], _ = envs[i].reset()
            episode_returns[i] = 0.0
            episode_steps[i] = 0

        if global_step >= learning_starts:
            if learning_start_time is None:
                learning_start_time, learning_start_step = time.time(), global_step
                progress.phase("learning", args.total_timesteps, global_step)
            for _ in range(args.utd * N):
                idx, data = rb.sample(args.batch_size)
                rewards = data.rewards  # [B]
                if encoder is not None:
                    # CE: COLLABORATIVE REWARD (4.1): one encoder pass for the queries e(s') and every bank's keys
                    bank = memory_bank[:, : min(memory_filled, args.memory_size)]  # [N, M, C, H, W]: filled slots
                    with torch.no_grad():  # a label: the DrQ losses do not back-propagate into the encoder
                        z = encoder(torch.cat([data.next_obs, bank.flatten(0, 1)]))  # [B + N * M, D], un-augmented
                        query, keys = z[: len(idx)], z[len(idx) :].view(N, bank.shape[1], -1)  # [B, D], [N, M, D]
                        novelty = novelty_of(query, keys, args.knn_k)  # [B, N], Eq. 2
                        intrinsic = collaborative_reward(novelty, args.ego_weight, args.aggregate)  # [B, N], Eq. 3
                    rewards = data.rewards + args.intrinsic_coef * intrinsic.T  # [N, B]: agent i's relabeled reward

                # --- shared: drq-update ---
                # AUGMENT: DrQ's random shift, drawn per sample, apart for obs and next obs
                obs_aug, next_obs_aug = random_shift(data.obs, args.image_pad), random_shift(data.next_obs, args.image_pad)

                # CRITIC: one soft Bellman target per agent, from its twin target critics (jaxrl2's DrQ: their mean)
                with torch.no_grad():
                    next_features = qf.encoder(next_obs_aug)  # [N, B, F]: the actor reads the critic's conv layers
                    next_actions, next_log_pi = actor.get_action(next_features)  # [N, B, A], [N, B]
                    qf_next_target = qf_target(next_obs_aug, next_actions)  # [N, 2, B]
                    if args.critic_reduction == "mean":
                        qf_next_target = qf_next_target.mean(1)  # [N, B]
                    else:
                        qf_next_target = qf_next_target.min(1).values  # [N, B]
                    soft_next_value = qf_next_target - alpha[:, None] * next_log_pi  # [N, B]
                    next_q_value = rewards + args.gamma * (1 - data.terminations) * soft_next_value  # [N, B]
                features = qf.encoder(obs_aug)  # [N, B, F]
                qf_values = qf(features, data.actions)  # [N, 2, B]
                # jaxrl2: mean over twins and batch; summing over agents keeps each agent's gradient its own
                qf_losses = (qf_values - next_q_value[:, None]).square().mean((1, 2))  # [N]
                q_optimizer.zero_grad(set_to_none=False)  # zeroes the kept buffers: no fresh gradients each step
                qf_losses.sum().backward()

                # ACTOR: jaxrl2's DrQ uses the critic as it was before this step's update, so the conv features of
                # the critic step serve again (detached: policy gradients never reach the conv layers)
                qf.requires_grad_(False)  # only dQ/da is needed: skip the critics' weight gradients
                pi_actions, log_pi = actor.get_action(features.detach())  # [N, B, A], [N, B]
                qf_pi = qf(features.detach(), pi_actions).mean(1)  # [N, B]
                actor_losses = (alpha[:, None] * log_pi - qf_pi).mean(1)  # [N]
                # TEMPERATURE: jaxrl2's alpha * (entropy - target), on the actor step's log-probs (no second actor pass)
                entropy = -log_pi.detach().mean(1)  # [N]
                alpha_losses = log_alpha.exp() * (entropy - target_entropy)  # [N]
                actor_optimizer.zero_grad(set_to_none=False)
                (actor_losses.sum() + alpha_losses.sum()).backward()
                qf.requires_grad_(True)
                if args.max_grad_norm > 0:  # off in jaxrl2's DrQ
                    clip_grad_norm_per_agent_(qf, args.max_grad_norm)
                    clip_grad_norm_per_agent_(actor, args.max_grad_norm)
                q_optimizer.step()
                actor_optimizer.step()  # actor and temperature
                torch._foreach_lerp_(qf_target_params, qf_params, args.tau)  # conv layers included
                alpha = log_alpha.detach().exp()
                # --- end shared ---

                if encoder_optimizer is not None:
                    # CE: ENCODER (Eq. 4): anchor s_t, positive s_{t+d} of the same agent's same episode, 1 <= |d| <= L
                    rows, valid = rb.same_episode(idx, positive_offsets)  # [B, 2L]
                    pick = (torch.rand(valid.shape, device=device) * valid).argmax(1, keepdim=True)  # [B, 1]: uniform over valid d
                    has_positive = valid.gather(1, pick)[:, 0]  # [B]; False only for a step alone in its episode so far
                    positive_obs, _ = rb.stacks(rows.gather(1, pick)[:, 0])  # [B, C, H, W]
                    anchors, positives = encoder(torch.cat([data.obs, positive_obs])).chunk(2)
                    encoder_loss = info_nce_loss(anchors, positives, args.contrastive_temperature, has_positive)
                    encoder_optimizer.zero_grad(set_to_none=True)
                    encoder_loss.backward()
                    encoder_optimizer.step()

                if eval_mode == "qclassifier":
                    # CE: Q-CLASSIFIER (5.7): Q^e(s)_i regressed on the sum of the next H task rewards of agent i,
                    # the agent that collected s; shorter at episode ends, left out while the episode still runs
                    rows, valid = rb.same_episode(idx, horizon)  # [B, H]
                    mc_return = (rb.rewards[rows] * valid).sum(1)  # [B]
                    known = valid[:, -1] | (valid & rb.dones[rows]).any(1)  # [B]: window full or episode ended inside
                    predicted = q_classifier(data.obs).gather(1, (idx % N)[:, None])[:, 0]  # [B]
                    qclassifier_loss = ((predicted - mc_return).square() * known).sum() / known.sum().clamp(min=1)
                    q_classifier_optimizer.zero_grad(set_to_none=True)
                    qclassifier_loss.backward()
                    q_classifier_optimizer.step()

        # EVAL: fresh episodes on separate envs, deterministic (mean) action, all episodes in lockstep
        if global_step >= next_eval or global_step >= args.total_timesteps:
            next_eval += args.eval_every
            eval_obs = np.stack([env.reset()[0] for env in eval_envs])  # [E, C, H, W]
            returns, running = np.zeros(len(eval_envs)), np.ones(len(eval_envs), bool)
            eval_agent = torch.zeros(len(eval_envs), dtype=torch.long, device=device)  # CE: [E], who acts in each episode
            eval_t = 0  # CE
            while running.any():
                with torch.no_grad():
                    eval_obs_t = torch.as_tensor(eval_obs, device=device)  # CE: [E, C, H, W]
                    mean_actions = actor.mean_action(eval_obs_t)  # [N, E, A]
                    if eval_mode == "softmax":  # CE: a mixture policy as PEX, the agent drawn anew every step
                        q_pi = qf(eval_obs_t, mean_actions).min(1).values  # [N, E]: Q^i(s, pi^i(s))
                        probs = torch.softmax(q_pi.T / args.softmax_temperature, 1)  # [E, N]
                        eval_agent = torch.multinomial(probs, 1, generator=eval_generator)[:, 0]  # [E]
                    elif eval_mode == "qclassifier" and eval_t % args.qclassifier_horizon == 0:  # CE
                        eval_agent = q_classifier(eval_obs_t).argmax(1)  # [E]: argmax_i Q^e(s)_i, kept for H steps
                    eval_actions = mean_actions[eval_agent, torch.arange(len(eval_envs))].cpu().numpy()  # CE: [E, A]
                for j in np.flatnonzero(running):
                    eval_obs[j], r, terminated, truncated, _ = eval_envs[j].step(eval_actions[j])
                    returns[j] += r
                    running[j] = not (terminated or truncated)
                eval_t += 1  # CE
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
            if encoder is not None:  # CE
                logged.update({"charts/intrinsic_reward_mean": intrinsic.mean(), "charts/intrinsic_reward_std": intrinsic.std(),
                               "charts/novelty_mean": novelty.mean()})
            if encoder_optimizer is not None:  # CE
                logged["losses/encoder_loss"] = encoder_loss
            if eval_mode == "qclassifier":  # CE
                logged["losses/qclassifier_loss"] = qclassifier_loss
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
