"""MADDPG with GRU actors and a centralized GRU critic: the backbone of MESA and its "MADDPG" row.

Paper: Zhang, Liang, Wu, Fang, "MESA: Cooperative Meta-Exploration in Multi-Agent Learning
through Exploiting State-Action Space Structure", AAMAS 2024; section 5.3 (MADDPG is MESA's
off-policy learner f), Appendix B.2 Table 1 (hyperparameters), Appendix B.4 Table 2 ("MADDPG").
MADDPG itself: Lowe et al., NeurIPS 2017. `mesa_maddpg.py` carries a marked copy of this file's
learner (`# --- shared: ... ---` blocks), so `diff baselines/maddpg.py mesa_maddpg.py` is MESA.

One task of any environment of `envs.multiagent` is learned from scratch: decentralized actors
pi_i(a_i | o_i^{<=t}) (one GRU each, stacked into one batched pass), one centralized critic
Q(o_1..o_n^{<=t}, a_1..a_n^{<=t}) (one GRU over the joint history), trained on batches of whole
trajectories. Discrete actions use the straight-through Gumbel-softmax, continuous actions a
tanh policy with Gaussian exploration noise. The task is test task `--test-task-index` of
`sample_tasks(env_id, num_train_tasks, num_test_tasks, task_seed)`, i.e. one of the tasks MESA
meta-tests on, so the two scripts are compared on the same tasks.

Run:
    python baselines/maddpg.py --env-id climb-multi-stage --seed 1
Expected: on a climb game, 0.5 (the sub-optimal equilibrium, "nobody plays u") wherever
k = 2, and usually the optimal 1.0 where k = 1 (one agent plays u: a unilateral move from the
0.5 equilibrium, which this MADDPG finds). So the one-step game gives 1.0 or 0.5 by task, and
the multi-stage game (return averaged over its 5 steps) 0.5 + 0.1 per k = 1 stage: 0.72 and
0.78 over the 25 test tasks of our README table (the paper's Table 2 has 0.74 and 0.50).
The last line printed is `test_return=<float>`.
Long runs: `--checkpoint-every N` saves the whole training state every N env steps to
runs/{run}/checkpoint.pt (and Ctrl-C saves it on the way out); the same command with `--resume`
continues the newest interrupted run in its own folder, bit for bit on CPU.

Nondeterminism: on CPU the same seed gives identical runs (`--torch-deterministic`); on GPU,
cuBLAS reductions may differ in the last bits between runs.

Decisions where the paper is silent (ours), each next to its code:
- one gradient step on `batch_size` whole trajectories every `train_frequency` env steps;
- gamma 0.99, soft target updates tau = 0.01, gradient-norm clip 10, replay of the last
  `buffer_size` trajectories; the actor's logits carry the original MADDPG code's 1e-3 L2 penalty;
- climb-game returns are reported averaged over timesteps (the paper's convention, section 6.2),
  MPE and Swimmer returns summed.

rMADDPG (marlbenchmark/off-policy's recurrent MADDPG, a common implementation; the paper does not say which one
it ran) selects actions differently; each difference is a flag, off by default: `--share-policy` (one actor for
all agents, rMADDPG's default; with identical observations, as in the climb games, every agent then has the same
greedy action, so the greedy joint action is always diagonal (x, x)), `--epsilon-start 1 --epsilon-end 0.05
--epsilon-anneal-steps 50000` (each agent's explore action replaced by a uniformly random one with probability
epsilon, on top of the Gumbel sample), `--greedy-target-actions` (argmax target actions); and, with flags we
already had, `--logit-penalty 0`, `--tau 0.005`, `--train-frequency` = the episode length (one update per episode).
"""

import copy
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
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, for envs/
from envs.multiagent import DEFAULT_SETTINGS, ENV_IDS, check_disjoint, make_env, sample_tasks  # noqa: E402

SCRIPT = "baselines/maddpg.py"  # in checkpoints: a checkpoint resumes only in the script that wrote it


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """name of this experiment (the run directory's second field)"""
    seed: int = 1
    """seed of random, numpy, torch and the environments' resets"""
    torch_deterministic: bool = True
    """torch.backends.cudnn.deterministic and deterministic algorithms where torch has them"""
    cuda: bool = True
    """use CUDA when it is available"""
    torch_threads: int = 1
    """CPU threads of torch: these networks are tiny, one thread is fastest (more threads spin and wait)"""
    checkpoint_every: int = 0
    """env steps between checkpoints of the whole training state, `runs/{run_name}/checkpoint.pt` (0: none)"""
    resume: Optional[str] = None
    """continue an interrupted run bit for bit: `--resume` alone the newest one of this command under runs/, or a run folder or checkpoint"""

    # environment and tasks
    env_id: str = "climb-multi-stage"
    """one of climb-one-step, climb-multi-stage, mpe-climb, swimmer-climb"""
    task_seed: int = 0
    """seed of the task draw: which tasks are the training and which the test tasks"""
    num_train_tasks: Optional[int] = None
    """training tasks drawn (None: the paper's, Table 1: 10 climb, 30 MPE and Swimmer); they only fix the draw here"""
    num_test_tasks: Optional[int] = None
    """test tasks drawn (None: the paper's, Table 1: 5 climb, 15 MPE, 6 Swimmer)"""
    test_task_index: int = 0
    """which test task this run learns"""
    n_agents: Optional[int] = None
    """env setting n, climb and MPE games (None: the env's default, 2)"""
    num_actions: Optional[int] = None
    """env setting U: actions (climb) or landmarks (MPE) (None: the env's default, 10 climb, 5 MPE)"""
    k: Optional[int] = None
    """env setting k of the MPE climb game: agents needed on the target landmark (None: 2)"""
    stages: Optional[int] = None
    """env setting S of the multi-stage climb game (None: 5)"""
    max_steps: Optional[int] = None
    """env setting episode length of MPE and Swimmer (None: 100 MPE, 1000 Swimmer)"""

    # MADDPG (Appendix B.2, Table 1)
    total_timesteps: Optional[int] = None
    """env steps of learning on the task (None: Table 1's meta-testing steps, 50k one-step, 100k multi-stage, 3M MPE, 2.5M Swimmer)"""
    learning_rate: Optional[float] = None
    """Adam learning rate of actors and critic (None: Table 1, 5e-3 climb, 1e-4 MPE and Swimmer)"""
    batch_size: Optional[int] = None
    """trajectories per gradient step (None: Table 1, 32 climb, 300 MPE, 8 Swimmer)"""
    learning_starts: Optional[int] = None
    """env steps of uniformly random actions before learning (None: Table 1, 3000 climb, 50k MPE and Swimmer)"""
    hidden_dim: int = 64
    """units of the GRU layer (and of the layer before it) in actors and critic (Table 1: one GRU layer, 64 units)"""
    train_frequency: Optional[int] = None
    """env steps between gradient steps (None: 8 one-step, 20 multi-stage, 100 MPE, 1000 Swimmer; paper silent)"""
    buffer_size: Optional[int] = None
    """replay capacity in trajectories (None: 5000 climb, 2000 MPE, 200 Swimmer; paper silent)"""
    gamma: float = 0.99
    """discount factor (paper silent)"""
    tau: float = 0.01
    """soft target-update rate (paper silent; the original MADDPG's 0.01)"""
    max_grad_norm: float = 10.0
    """gradient-norm clip of actors and critic (paper silent)"""
    gumbel_temperature: float = 1.0
    """temperature of the straight-through Gumbel-softmax, discrete actions (paper silent)"""
    logit_penalty: float = 1e-3
    """L2 penalty on the actors' logits/pre-tanh outputs (original MADDPG code; paper silent)"""
    exploration_noise: float = 0.1
    """std of the Gaussian action noise, continuous actions, in units of half the action range (paper silent)"""
    share_policy: bool = False
    """one actor for all agents (marlbenchmark/off-policy rMADDPG's default; ours: one per agent). With identical
    observations (the climb games) the agents then share one greedy action: a diagonal joint action (x, x)"""
    epsilon_start: float = 0.0
    """probability that an agent's explore action is uniformly random instead of the Gumbel sample, at step 0
    (discrete actions; rMADDPG: 1.0; ours: 0, off)"""
    epsilon_end: float = 0.0
    """that probability after --epsilon-anneal-steps (rMADDPG: 0.05)"""
    epsilon_anneal_steps: int = 50_000
    """env steps (of the learner's own phase) of the linear decay from --epsilon-start to --epsilon-end (rMADDPG: 50k)"""
    greedy_target_actions: bool = False
    """the critic's targets use the target actors' argmax (discrete) or noiseless tanh (continuous), as rMADDPG,
    instead of a Gumbel sample / noisy action (ours). rMADDPG also has no logit penalty (--logit-penalty 0),
    tau 0.005 (--tau 0.005) and one update per episode (--train-frequency = the episode length)"""

    # evaluation and logging
    eval_frequency: Optional[int] = None
    """env steps between greedy evaluations logged under eval/ (None: total_timesteps // 20)"""
    eval_episodes: int = 5
    """greedy episodes per evaluation (the climb games are deterministic: 1 would do)"""
    log_frequency: int = 1000
    """env steps between losses/ and charts/ logs (each log syncs the device once)"""


# ---------------------------------------------------------------------------------------------
# Environment set-up
# ---------------------------------------------------------------------------------------------
# --- shared: paper-defaults ---
PAPER_DEFAULTS = {  # Appendix B.2 Table 1, per environment; "ours" where the paper is silent
    #                   test steps  lr     batch  random  train_freq (ours)  buffer (ours)  tasks train/test
    "climb-one-step": dict(total_timesteps=50_000, learning_rate=5e-3, batch_size=32, learning_starts=3000,
                           train_frequency=8, buffer_size=5000, num_train_tasks=10, num_test_tasks=5),
    "climb-multi-stage": dict(total_timesteps=100_000, learning_rate=5e-3, batch_size=32, learning_starts=3000,
                              train_frequency=20, buffer_size=5000, num_train_tasks=10, num_test_tasks=5),
    "mpe-climb": dict(total_timesteps=3_000_000, learning_rate=1e-4, batch_size=300, learning_starts=50_000,
                      train_frequency=100, buffer_size=2000, num_train_tasks=30, num_test_tasks=15),
    "swimmer-climb": dict(total_timesteps=2_500_000, learning_rate=1e-4, batch_size=8, learning_starts=50_000,
                          train_frequency=1000, buffer_size=200, num_train_tasks=30, num_test_tasks=6),
}


def resolve_args(args, *extra_defaults):
    """A copy of args with every None hyperparameter set to the paper's value for args.env_id
    (PAPER_DEFAULTS, then each extra {env_id: {field: value}} table); BadInput (one line,
    naming what is valid) for an unknown env id."""
    if args.env_id not in ENV_IDS:
        raise BadInput(f"--env-id {args.env_id}: must be one of {', '.join(ENV_IDS)}")
    args = copy.copy(args)
    for table in (PAPER_DEFAULTS, *extra_defaults):
        for name, value in table[args.env_id].items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    if args.eval_frequency is None:
        args.eval_frequency = max(1, args.total_timesteps // 20)
    return args


# (envs.multiagent's setting, the Args field that sets it)
ENV_FLAGS = (("n", "n_agents"), ("U", "num_actions"), ("k", "k"), ("S", "stages"), ("max_steps", "max_steps"))


def env_settings(args) -> dict:
    """The env settings given on the command line, under envs.multiagent's names. The env checks
    them (U >= 2, k <= n, ...) when it draws and builds a task; adding them one at a time tells
    which flag it refuses: BadInput `--flag VALUE: <the env's reason>`."""
    settings = {}
    for key, name in ENV_FLAGS:
        value = getattr(args, name)
        if value is None:
            continue
        flag = f"--{name.replace('_', '-')} {value}"
        if key not in DEFAULT_SETTINGS[args.env_id]:
            valid = ", ".join(f"--{field.replace('_', '-')}" for k, field in ENV_FLAGS if k in DEFAULT_SETTINGS[args.env_id])
            raise BadInput(f"{flag}: not a setting of {args.env_id} (its settings: {valid})")
        settings[key] = value
        try:  # one task drawn and one env built per flag given (for Swimmer, a MuJoCo model loaded: milliseconds)
            _, (task,) = sample_tasks(args.env_id, 0, 1, 0, **settings)
            make_env(args.env_id, task, **settings).close()
        except ValueError as error:
            raise BadInput(f"{flag}: {error}") from None
    return settings


def draw_tasks(args, settings):
    """(train_tasks, test_tasks) of args.task_seed, checked disjoint; BadInput (one line) when the
    task space holds fewer distinct tasks than asked for."""
    try:
        train_tasks, test_tasks = sample_tasks(args.env_id, args.num_train_tasks, args.num_test_tasks, args.task_seed, **settings)
    except ValueError as error:
        counts = f"--num-train-tasks {args.num_train_tasks} and --num-test-tasks {args.num_test_tasks}"
        raise BadInput(f"{counts}: {error}") from None
    check_disjoint(train_tasks, test_tasks)  # a bug of the draw if it fails, not bad input
    return train_tasks, test_tasks


def env_spaces(env):
    """(n, obs_dim, act_dim, discrete, action_low, action_high) of a ParallelEnv whose agents
    share one observation and one action space (true of every env in envs/)."""
    agents = env.possible_agents
    obs_space, act_space = env.observation_space(agents[0]), env.action_space(agents[0])
    for a in agents[1:]:
        if env.observation_space(a).shape != obs_space.shape or env.action_space(a) != act_space:
            raise ValueError("the stacked actors need agents with identical observation and action spaces")
    discrete = hasattr(act_space, "n")
    act_dim = int(act_space.n) if discrete else int(np.prod(act_space.shape))
    low = None if discrete else np.asarray(act_space.low, np.float32)
    high = None if discrete else np.asarray(act_space.high, np.float32)
    return len(agents), int(np.prod(obs_space.shape)), act_dim, discrete, low, high


def report_scale(env_id: str, max_steps: int) -> float:
    """Factor from summed episode reward to the reported return: the climb games report the
    return averaged over timesteps (section 6.2: optimal 1, sub-optimal 0.5), MPE and Swimmer the sum."""
    return 1.0 / max_steps if env_id.startswith("climb") else 1.0
# --- end shared ---


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
# --- shared: networks ---
def tanh(x):
    """tanh(x) = 2 sigmoid(2x) - 1, the same function (within 2e-7 of torch.tanh) at a third of its CPU
    time: torch.tanh was the slowest elementwise op of the GRU steps (torch 2.13, one thread: 120 against
    37 us at [2, 300, 64], 9.9 against 4.5 ms at [2, 30000, 64])."""
    return torch.sigmoid(2.0 * x).mul(2.0).sub(1.0)


class StackedGRUNet(nn.Module):
    """`num_nets` independent networks x -> Linear-ReLU -> GRU cell -> Linear, evaluated in one
    batched pass (per-net weights stacked on dim 0, `torch.baddbmm`): n actors cost one call,
    not a Python loop over agents. GRU equations as torch.nn.GRU (gates r, z, n)."""

    def __init__(self, num_nets: int, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()

        def linear(fan_in, fan_out):  # nn.Linear's default init, one weight per net
            bound = 1.0 / math.sqrt(fan_in)
            weight = nn.Parameter(torch.empty(num_nets, fan_in, fan_out).uniform_(-bound, bound))
            bias = nn.Parameter(torch.empty(num_nets, 1, fan_out).uniform_(-bound, bound))
            return weight, bias

        self.hidden_dim = hidden_dim
        self.w_in, self.b_in = linear(in_dim, hidden_dim)
        self.w_ih, self.b_ih = linear(hidden_dim, 3 * hidden_dim)
        self.w_hh, self.b_hh = linear(hidden_dim, 3 * hidden_dim)
        self.w_out, self.b_out = linear(hidden_dim, out_dim)

    def input_gates(self, x):
        """x [nets, M, in] -> the GRU's input-side gate pre-activations [nets, M, 3H]."""
        return torch.baddbmm(self.b_ih, F.relu(torch.baddbmm(self.b_in, x, self.w_in)), self.w_ih)

    def hidden_gates(self, h):
        """h [nets, M, H] -> the GRU's hidden-side gate pre-activations [nets, M, 3H]."""
        return torch.baddbmm(self.b_hh, h, self.w_hh)

    def cell(self, gates_x, h, gates_h=None):
        """One GRU step: gates_x [nets, M, 3H], h [nets, M, H] -> h' [nets, M, H]. `gates_h`:
        hidden_gates(h) when the caller has them (they broadcast against gates_x)."""
        if gates_h is None:
            gates_h = self.hidden_gates(h)  # [nets, M, 3H]
        x_r, x_z, x_n = gates_x.chunk(3, dim=-1)
        h_r, h_z, h_n = gates_h.chunk(3, dim=-1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = tanh(torch.addcmul(x_n, r, h_n))  # tanh(x_n + r * h_n)
        return torch.lerp(n, h, z)  # (1 - z) * n + z * h

    def head(self, h):
        """h [nets, M, H] -> outputs [nets, M, out]."""
        return torch.baddbmm(self.b_out, h, self.w_out)

    def step(self, x, h):
        """One step from given hidden states: x [nets, M, in], h [nets, M, H] -> (out, h').
        A single net (num_nets = 1) serves any number of members: x [members, M, in]."""
        members, M, _ = x.shape
        if members != self.w_in.shape[0]:  # one shared net: the members fold into its batch, [1, members*M, in]
            out, h = self.step(x.reshape(1, members * M, -1), h.reshape(1, members * M, -1))
            return out.reshape(members, M, -1), h.reshape(members, M, -1)
        h = self.cell(self.input_gates(x), h)
        return self.head(h), h

    def forward(self, x):
        """Whole sequences from a zero hidden state: x [nets, B, T, in] -> (out [nets, B, T, out],
        hs [nets, B, T, H]), hs[:, :, t] the hidden state after step t. A single net (num_nets = 1)
        serves any number of members: x [members, B, T, in]."""
        nets, B, T, _ = x.shape
        if nets != self.w_in.shape[0]:  # one shared net: the members fold into its batch, [1, members*B, T, in]
            out, hs = self.forward(x.reshape(1, nets * B, T, -1))
            return out.reshape(nets, B, T, -1), hs.reshape(nets, B, T, -1)
        gates_x = self.input_gates(x.reshape(nets, B * T, -1)).reshape(nets, B, T, -1)  # [nets, B, T, 3H]
        h = x.new_zeros(nets, B, self.hidden_dim)
        hs = []
        # the recurrence is the only per-step Python work; T = 1..1000. Easy to overlook: unbind, not
        # gates_x[:, :, t] (a select's backward zero-fills a whole gates_x-sized tensor per step:
        # O(T^2) memory traffic, two thirds of an update's time at T = 100 before we measured it)
        for gates_t in gates_x.unbind(2):  # [nets, B, 3H] each
            h = self.cell(gates_t, h)
            hs.append(h)
        hs = torch.stack(hs, dim=2)  # [nets, B, T, H]
        return self.head(hs.reshape(nets, B * T, -1)).reshape(nets, B, T, -1), hs
# --- end shared ---


# ---------------------------------------------------------------------------------------------
# Replay buffer
# ---------------------------------------------------------------------------------------------
# --- shared: buffer ---
class TrajectoryBuffer:
    """Whole trajectories, padded to the env's max_steps T, stored on the device:
    obs [cap, n, T+1, obs], actions [cap, n, T, act] (one-hot or in [-1, 1]), rewards, terminated,
    mask [cap, T] (1 on real steps). Oldest trajectory overwritten first."""

    def __init__(self, capacity, n, T, obs_dim, act_dim, device):
        self.capacity, self.size, self.pos = capacity, 0, 0
        self.obs = torch.zeros(capacity, n, T + 1, obs_dim, device=device)
        self.actions = torch.zeros(capacity, n, T, act_dim, device=device)
        self.rewards = torch.zeros(capacity, T, device=device)
        self.terminated = torch.zeros(capacity, T, device=device)
        self.mask = torch.zeros(capacity, T, device=device)

    def add(self, episode, rewards=None):
        """Store one run_episode() result; `rewards` [T] replaces the env's rewards if given."""
        i = self.pos
        for name in ("obs", "actions", "terminated", "mask"):
            getattr(self, name)[i] = torch.as_tensor(episode[name])
        self.rewards[i] = torch.as_tensor(episode["rewards"] if rewards is None else rewards)
        self.pos, self.size = (self.pos + 1) % self.capacity, min(self.size + 1, self.capacity)

    def sample(self, batch_size, generator):
        idx = torch.randint(self.size, (batch_size,), generator=generator).to(self.obs.device)
        return {name: getattr(self, name)[idx] for name in ("obs", "actions", "rewards", "terminated", "mask")}

    def state_dict(self) -> dict:
        """For a checkpoint: the filled trajectories (cloned: a slice would save the whole storage), pos and size."""
        fields = ("obs", "actions", "rewards", "terminated", "mask")
        return {"pos": self.pos, "size": self.size, **{name: getattr(self, name)[: self.size].clone() for name in fields}}

    def load_state_dict(self, state: dict) -> None:
        self.pos, self.size = state["pos"], state["size"]
        for name in ("obs", "actions", "rewards", "terminated", "mask"):
            getattr(self, name)[: self.size] = state[name]
# --- end shared ---


# ---------------------------------------------------------------------------------------------
# MADDPG (Lowe et al. 2017) on trajectories: acting, one episode, one update
# ---------------------------------------------------------------------------------------------
# --- shared: maddpg ---
class MADDPG:
    """n GRU actors (stacked; one shared by all agents with args.share_policy), one centralized GRU
    critic over all observations and actions, target copies of both, Adam; `update` is one
    gradient step of critic and actors. `epsilon`: the probability that an agent's explore-mode
    action is replaced by a uniformly random one (discrete actions; the loop sets it every episode
    from `greedy_epsilon`, 0 unless --epsilon-start is set)."""

    def __init__(self, n, obs_dim, act_dim, discrete, args, device):
        self.n, self.act_dim, self.discrete, self.args = n, act_dim, discrete, args
        self.epsilon = 0.0
        # shared policy: one net, every agent's observations folded into its batch (StackedGRUNet.step/forward)
        self.actor = StackedGRUNet(1 if args.share_policy else n, obs_dim, args.hidden_dim, act_dim).to(device)
        self.critic = StackedGRUNet(1, n * (obs_dim + act_dim), args.hidden_dim, 1).to(device)
        self.target_actor, self.target_critic = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=args.learning_rate)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=args.learning_rate)

    PARTS = ("actor", "critic", "target_actor", "target_critic", "actor_optimizer", "critic_optimizer")

    def state_dict(self) -> dict:
        """Networks, targets and optimizers, {part: its state_dict}: a checkpoint's learner."""
        return {name: getattr(self, name).state_dict() for name in self.PARTS}

    def load_state_dict(self, state: dict) -> None:
        for name in self.PARTS:
            getattr(self, name).load_state_dict(state[name])

    def policy_action(self, out, mode):
        """Actor outputs [n, ..., act] -> actions [n, ..., act] (one-hot, or in [-1, 1]).
        mode "train": differentiable (straight-through Gumbel-softmax / tanh); "explore": a
        sample (Gumbel-max = categorical / tanh + Gaussian noise); "greedy": argmax / tanh."""
        if self.discrete:
            if mode == "greedy":
                return F.one_hot(out.argmax(-1), self.act_dim).float()
            # forward: a one-hot sample; backward: the softmax's gradient (straight-through)
            return F.gumbel_softmax(out, tau=self.args.gumbel_temperature, hard=True)
        action = torch.tanh(out)
        if mode == "explore":
            action = (action + self.args.exploration_noise * torch.randn_like(action)).clamp(-1.0, 1.0)
        return action

    @torch.no_grad()
    def act(self, obs, h, mode):
        """obs [n, obs] of one env step, h [n, 1, H] or None -> (actions [n, act], h')."""
        if h is None:
            h = obs.new_zeros(self.n, 1, self.args.hidden_dim)
        out, h = self.actor.step(obs[:, None], h)  # out [n, 1, act]
        action = self.policy_action(out[:, 0], mode)  # [n, act]
        if mode == "explore" and self.discrete and self.epsilon > 0:  # epsilon-greedy on top of the Gumbel sample
            # (rMADDPG's exploration; a Python float, no host sync): each agent independently
            take_random = torch.rand(self.n, 1, device=obs.device) < self.epsilon  # [n, 1]
            uniform = F.one_hot(torch.randint(self.act_dim, (self.n,), device=obs.device), self.act_dim).float()
            action = torch.where(take_random, uniform, action)
        return action, h

    def update(self, batch):
        """One MADDPG step on a batch of trajectories; returns detached losses (no host sync)."""
        args, n = self.args, self.n
        obs = batch["obs"].transpose(0, 1)  # [n, B, T+1, obs]
        _, B, T1, _ = obs.shape
        T = T1 - 1
        actions = batch["actions"].permute(0, 2, 1, 3).reshape(B, T, -1)  # [B, T, n*act]
        joint_obs = obs.permute(1, 2, 0, 3).reshape(B, T1, -1)  # [B, T+1, n*obs]
        mask = batch["mask"]  # [B, T]

        # CRITIC: y_t = r_t + gamma (1 - terminated_t) Q'(history_t, o_{t+1}, mu'(o_{t+1}))
        x = torch.cat([joint_obs[:, :T], actions], dim=-1)[None]  # [1, B, T, n*(obs+act)]
        with torch.no_grad():
            target_out, _ = self.target_actor(obs)  # [n, B, T+1, act]
            # a sample of the target policy (ours), or its argmax / noiseless tanh (rMADDPG: --greedy-target-actions)
            target_mode = "greedy" if args.greedy_target_actions else "explore"
            next_actions = self.policy_action(target_out[:, :, 1:], target_mode)  # [n, B, T, act]
            next_actions = next_actions.permute(1, 2, 0, 3).reshape(B, T, -1)  # [B, T, n*act]
            _, target_hs = self.target_critic(x)  # [1, B, T, H]: hidden after the real step t
            x_next = torch.cat([joint_obs[:, 1:], next_actions], dim=-1)  # [B, T, n*(obs+act)]
            # one batched GRU step from every h_t: the target critic sees the real history
            next_q, _ = self.target_critic.step(x_next.reshape(1, B * T, -1), target_hs.reshape(1, B * T, -1))
            next_q_value = batch["rewards"] + args.gamma * (1.0 - batch["terminated"]) * next_q.reshape(B, T)
        q_values, critic_hs = self.critic(x)  # [1, B, T, 1], [1, B, T, H]
        td_error = (q_values.reshape(B, T) - next_q_value) * mask
        critic_loss = td_error.pow(2).sum() / mask.sum()
        self.critic_optimizer.zero_grad()
        critic_loss.backward()
        nn.utils.clip_grad_norm_(self.critic.parameters(), args.max_grad_norm)
        self.critic_optimizer.step()

        # ACTOR: agent i's own action from its policy, the others' from the buffer (MADDPG),
        # all n substitutions in one critic call from the critic's hidden state before step t
        out, _ = self.actor(obs[:, :, :T])  # [n, B, T, act]
        policy_actions = self.policy_action(out, "train")  # [n, B, T, act]
        buffer_actions = batch["actions"].permute(0, 2, 1, 3)  # [B, T, n, act]
        own = torch.eye(n, dtype=torch.bool, device=obs.device).reshape(n, 1, 1, n, 1)  # [n(i), 1, 1, n(j), 1]
        joint = torch.where(own, policy_actions[:, :, :, None], buffer_actions[None])  # [n, B, T, n, act]
        h_prev = torch.cat([critic_hs.new_zeros(1, B, 1, critic_hs.shape[-1]), critic_hs[:, :, :-1]], dim=2)
        h_prev = h_prev.detach().reshape(1, B * T, -1)  # [1, B*T, H]
        x_pi = torch.cat([joint_obs[None, :, :T].expand(n, B, T, -1), joint.reshape(n, B, T, -1)], dim=-1)
        gates_x = self.critic.input_gates(x_pi.reshape(1, n * B * T, -1)).reshape(n, B * T, -1)  # [n, B*T, 3H]
        # the hidden side is the same for the n substitutions: computed once, broadcast over them
        h_pi = self.critic.cell(gates_x, h_prev, self.critic.hidden_gates(h_prev))  # [n, B*T, H]
        q_pi = self.critic.head(h_pi.reshape(1, n * B * T, -1))  # [1, n*B*T, 1]
        actor_loss = -(q_pi.reshape(n, B, T) * mask).sum() / (n * mask.sum())
        actor_loss = actor_loss + args.logit_penalty * out.pow(2).mean()
        self.actor_optimizer.zero_grad()
        # inputs=: the actors' grads only; the critic's weight grads of this loss (a third of the
        # actor step's matmul work) would be computed and thrown away
        actor_loss.backward(inputs=list(self.actor.parameters()))
        nn.utils.clip_grad_norm_(self.actor.parameters(), args.max_grad_norm)
        self.actor_optimizer.step()

        # TARGETS: soft update
        with torch.no_grad():
            for net, target in ((self.actor, self.target_actor), (self.critic, self.target_critic)):
                torch._foreach_lerp_(list(target.parameters()), list(net.parameters()), args.tau)
        return {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(),
                "q_value": (q_values.reshape(B, T) * mask).sum().detach() / mask.sum()}


def seed_everything(seed, torch_deterministic):
    """Seed random, numpy and torch (network init, Gumbel and Gaussian noise); returns the numpy
    rng of uniformly random actions and task choices and the torch generator of replay sampling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic
    return np.random.default_rng(seed), torch.Generator().manual_seed(seed)


def run_episode(env, policy, seed, spaces):
    """Play one episode. policy(obs [n, obs] tensor, h) -> (actions [n, act] one-hot or in
    [-1, 1], h). Returns numpy arrays padded to T = env.max_steps: obs [n, T+1, obs],
    actions [n, T, act], rewards, terminated, mask [T], states [T, state] (env.state() before
    each action) and the summed reward, NaN if the policy gave a non-finite action: the episode
    stops before the env sees it (MuJoCo fails on a NaN far from its cause), the caller stops the run."""
    n, obs_dim, act_dim, discrete, low, high = spaces
    T, agents = env.max_steps, env.possible_agents
    ep = {"obs": np.zeros((n, T + 1, obs_dim), np.float32), "actions": np.zeros((n, T, act_dim), np.float32),
          "rewards": np.zeros(T, np.float32), "terminated": np.zeros(T, np.float32), "mask": np.zeros(T, np.float32)}
    states = []
    obs, _ = env.reset(seed=seed)
    h, finite = None, True
    for t in range(T):
        ep["obs"][:, t] = np.stack([np.asarray(obs[a], np.float32).reshape(-1) for a in agents])
        states.append(np.asarray(env.state(), np.float32).reshape(-1))
        actions, h = policy(torch.as_tensor(ep["obs"][:, t]), h)
        actions = actions.cpu().numpy()  # host sync: the env steps on the CPU
        ep["actions"][:, t] = actions
        if not np.isfinite(actions).all():
            finite = False
            break
        if discrete:
            env_actions = actions.argmax(-1)
        else:  # [-1, 1] -> the Box's bounds
            env_actions = low + (actions + 1.0) * 0.5 * (high - low)
        obs, rewards, terminations, truncations, _ = env.step({a: env_actions[i] for i, a in enumerate(agents)})
        ep["rewards"][t] = rewards[agents[0]]  # team reward: identical for all agents
        ep["terminated"][t] = float(terminations[agents[0]])
        ep["mask"][t] = 1.0
        if terminations[agents[0]] or truncations[agents[0]]:
            break
    # the observation after the last step: bootstrapped from when the episode was truncated
    ep["obs"][:, t + 1] = np.stack([np.asarray(obs[a], np.float32).reshape(-1) for a in agents])
    ep["states"] = np.stack(states)  # [t+1, state]
    ep["return"] = float(ep["rewards"].sum()) if finite else math.nan
    return ep


def random_policy(spaces, rng):
    """Uniformly random actions (Table 1's "random exploration" steps), from a seeded numpy rng."""
    n, _, act_dim, discrete, _, _ = spaces

    def policy(obs, h):
        if discrete:
            return F.one_hot(torch.as_tensor(rng.integers(act_dim, size=n)), act_dim).float(), h
        return torch.as_tensor(rng.uniform(-1.0, 1.0, size=(n, act_dim)), dtype=torch.float32), h

    return policy


def learner_policy(learner, mode, device):
    """The learner's actors as a run_episode policy (mode: "explore" or "greedy")."""
    return lambda obs, h: learner.act(obs.to(device), h, mode)


def evaluate(env, learner, episodes, seed, spaces, device) -> float:
    """Mean summed reward of `episodes` greedy episodes."""
    policy = learner_policy(learner, "greedy", device)
    return float(np.mean([run_episode(env, policy, seed + i, spaces)["return"] for i in range(episodes)]))


def greedy_epsilon(step: int, args) -> float:
    """Probability of a uniformly random action per agent for an explore episode starting at env step
    `step`: linear from epsilon_start to epsilon_end over epsilon_anneal_steps, then flat (rMADDPG:
    1.0 -> 0.05 over 50k steps; ours: 0, off)."""
    fraction = min(step / args.epsilon_anneal_steps, 1.0)
    return args.epsilon_start + fraction * (args.epsilon_end - args.epsilon_start)


def train_steps(learner, rb, global_step, next_train, args, generator):
    """The backbone's cadence (paper silent): once global_step >= learning_starts, one gradient
    step on batch_size trajectories per train_frequency env steps. -> (losses or {}, next_train)."""
    losses = {}
    while global_step >= next_train and global_step >= args.learning_starts:
        losses = learner.update(rb.sample(args.batch_size, generator))
        next_train += args.train_frequency
    return losses, next_train
# --- end shared ---


# ---------------------------------------------------------------------------------------------
# Command line, validation
# ---------------------------------------------------------------------------------------------
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


# --- shared: maddpg-resume ---
# The MADDPG scripts play whole episodes and seed every env reset with the episode index, so they checkpoint between
# two episodes and need no env state: the learner, its replay buffer, the generators and the loop counters decide
# the rest of the run.
def learner_state(learner, rb, rng, sample_generator) -> dict:
    """The learner's part of a checkpoint: networks, targets, optimizers, replay buffer, and the generators: numpy's
    `rng` (random actions; MESA: draws of tasks and policies), `sample_generator` (replay sampling; MESA: M*'s
    subsample, KMeans) and the global ones (network initialisations, Gumbel and Gaussian action noise)."""
    return {**learner.state_dict(), "buffer": rb.state_dict(),
            "rng": {"numpy": rng_state(rng), "sample": sample_generator.get_state(), "global": global_rng_states()}}


def restore_learner_state(state: dict, learner, rb, rng, sample_generator) -> None:
    """learner_state's inverse, into a learner and buffer built afresh just before (their building draws from the
    global generator, as it did in the interrupted run; that generator is then set back to the checkpoint's)."""
    learner.load_state_dict(state)
    rb.load_state_dict(state["buffer"])
    set_rng_state(rng, state["rng"]["numpy"])
    sample_generator.set_state(state["rng"]["sample"])
    set_global_rng_states(state["rng"]["global"])


def event_file_sizes(folder: str) -> dict:
    """{name: bytes} of a run folder's TensorBoard event files; after writer.flush() each ends on a whole record."""
    names = sorted(name for name in os.listdir(folder) if name.startswith("events.out.tfevents."))
    return {name: os.path.getsize(os.path.join(folder, name)) for name in names}


def restore_event_files(folder: str, sizes: dict) -> None:
    """A run folder's TensorBoard logs as they were at a checkpoint (`sizes`: event_file_sizes then): each file cut
    back to its size, every later file (the interrupted run's, or an earlier resume's) deleted. SummaryWriter's
    purge_step would not do: TensorBoard purges by step across all tags, and MESA's tags count their steps per
    phase, per policy or per task (a purge at explorer 2's step would cut explorer 1's curve)."""
    if not os.path.isdir(folder):  # a checkpoint resumed away from its run folder: the logs start at the checkpoint
        return
    for name in os.listdir(folder):
        if name.startswith("events.out.tfevents."):
            path = os.path.join(folder, name)
            if name not in sizes:
                os.remove(path)
            elif os.path.getsize(path) > sizes[name]:
                os.truncate(path, sizes[name])
# --- end shared ---


def setup(args: Args):
    """(resolved args, env settings, the task to learn); BadInput (one line) for the first
    impossible setting, or one that would make the run meaningless."""
    args = resolve_args(args)
    check_range(args, ("seed", "task_seed"), 0, 2**31 - 1, kind="integer")
    check_range(args, ("torch_threads", "num_test_tasks", "total_timesteps", "batch_size", "hidden_dim", "train_frequency",
                       "buffer_size", "eval_frequency", "eval_episodes", "log_frequency"), 1, kind="integer")  # fmt: skip
    check_range(args, ("num_train_tasks", "learning_starts", "checkpoint_every"), 0, kind="integer")  # train tasks: the draw only
    check_range(args, ("gamma",), 0, 1)
    check_range(args, ("tau",), 0, 1, low_open=True)
    check_range(args, ("learning_rate", "max_grad_norm", "gumbel_temperature"), 0, low_open=True)
    check_range(args, ("logit_penalty", "exploration_noise"), 0)
    check_range(args, ("epsilon_start", "epsilon_end"), 0, 1)
    check_range(args, ("epsilon_anneal_steps",), 1, kind="integer")
    if args.learning_starts >= args.total_timesteps:  # the run would end untrained and report that as its score
        raise BadInput(f"--learning-starts {args.learning_starts}: no learning step before the end; "
                       f"must be < --total-timesteps {args.total_timesteps}")
    check_range(args, ("test_task_index",), 0, args.num_test_tasks - 1, kind="integer")
    settings = env_settings(args)
    _, test_tasks = draw_tasks(args, settings)
    return args, settings, test_tasks[args.test_task_index]


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main(args: Args) -> dict:
    args, settings, task = setup(args)
    torch.set_num_threads(args.torch_threads)  # before any torch work (see --torch-threads)
    keep_freed_memory()  # glibc keeps freed blocks up to 32 MiB for reuse (Linux)
    resume = load_checkpoint(args, SCRIPT) if args.resume else None  # BadInput for a missing, foreign or mismatched one
    env, eval_env = make_env(args.env_id, task, **settings), make_env(args.env_id, task, **settings)
    spaces = env_spaces(env)
    n, obs_dim, act_dim, discrete, _, _ = spaces
    scale = report_scale(args.env_id, env.max_steps)

    from torch.utils.tensorboard import SummaryWriter  # lazily: tests that only import need no tensorboard

    run_name = resume["run_name"] if resume else f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    if resume:  # what the interrupted run logged after its checkpoint is dropped, and logged again below
        restore_event_files(f"runs/{run_name}", resume["event_files"])
    writer = SummaryWriter(f"runs/{run_name}")
    write_json({"script": SCRIPT, "settings": settings_of(args)}, f"runs/{run_name}/settings.json")
    if not resume:  # (a resumed run's first event file holds them)
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
        writer.add_text("task", repr(task))

    # seeding: one block; env resets are seeded with seed and the episode index below
    rng, sample_generator = seed_everything(args.seed, args.torch_deterministic)

    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    learner = MADDPG(n, obs_dim, act_dim, discrete, args, device)
    rb = TrajectoryBuffer(args.buffer_size, n, env.max_steps, obs_dim, act_dim, device)
    explore_policy, warmup_policy = learner_policy(learner, "explore", device), random_policy(spaces, rng)

    global_step, episode, next_train, next_eval, next_log = 0, 0, args.learning_starts, 0, 0
    losses = {}
    next_checkpoint, checkpoint_path = args.checkpoint_every, f"runs/{run_name}/checkpoint.pt"
    if resume:  # RESUME: the learner, buffer, generators and counters as the checkpoint left them
        restore_learner_state(resume, learner, rb, rng, sample_generator)
        global_step, episode, next_train, next_eval, next_log, losses = (
            resume["loop"][k] for k in ("step", "episode", "next_train", "next_eval", "next_log", "losses"))
        next_checkpoint = resume["next_checkpoint"]
    start_time, learning_start_step = None, None  # charts/SPS only: a resumed run starts its clock again
    phase = f"test task {args.test_task_index + 1}/{args.num_test_tasks}"  # the phase name of mesa_maddpg.py's meta-testing
    progress = Progress()
    progress.phase(phase, args.total_timesteps, global_step)

    def training_state(step: int, loop: dict | None) -> dict:
        """Everything that decides the rest of the run, between two episodes (`loop`: the loop's counters): a
        checkpoint for --resume; without `loop` (a non-finite stop) one for inspection only."""
        writer.flush()  # the event files then end on a whole record: a resume cuts them back to these sizes
        return {"script": SCRIPT, "settings": settings_of(args), "run_name": run_name, "resumable": loop is not None,
                "phase": phase, "step": step, **learner_state(learner, rb, rng, sample_generator), "loop": loop,
                "next_checkpoint": next_checkpoint, "event_files": event_file_sizes(f"runs/{run_name}")}

    def stop(error: Exception, step: int, loop: dict | None = None):
        """End the run between two episodes: Ctrl-C with a resumable checkpoint, a non-finite value with one for
        inspection; the logs closed."""
        save_file(training_state(step, loop), checkpoint_path)
        progress.close()
        writer.close()
        raise type(error)(f"{error}; checkpoint in {checkpoint_path}")

    def check_finite(values: dict, step: int):
        """stop() with NonFinite naming each of {name: float} that is NaN or infinite."""
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        if bad:
            stop(NonFinite(f"{', '.join(bad)} not finite at step {step} of {phase}"), step)

    def between_episodes(step: int, loop: dict):
        """The end of a loop iteration (`loop`: the counters a resumed run restores): the checkpoint every
        checkpoint_every env steps, atomically (a kill -9 while writing leaves the previous one whole), and the stop
        a first Ctrl-C asked for."""
        nonlocal next_checkpoint
        if args.checkpoint_every and step >= next_checkpoint:
            next_checkpoint += args.checkpoint_every * ((step - next_checkpoint) // args.checkpoint_every + 1)
            save_file(training_state(step, loop), checkpoint_path)
        if STOP_REQUESTED[0]:
            stop(Interrupted(f"at step {step} of {phase}"), step, loop)

    while global_step < args.total_timesteps:
        # COLLECT: uniformly random actions for the first learning_starts steps
        learner.epsilon = greedy_epsilon(global_step, args)  # rMADDPG's epsilon-greedy (0: off)
        policy = warmup_policy if global_step < args.learning_starts else explore_policy
        ep = run_episode(env, policy, args.seed * 1_000_003 + episode, spaces)
        check_finite({"actions": ep["return"]}, global_step)  # the return is NaN iff an action was
        rb.add(ep)
        steps = int(ep["mask"].sum())
        global_step, episode = global_step + steps, episode + 1
        writer.add_scalar("charts/episodic_return", ep["return"] * scale, global_step)

        # CRITIC + ACTOR
        if start_time is None and global_step >= args.learning_starts:
            start_time, learning_start_step = time.time(), global_step
        new_losses, next_train = train_steps(learner, rb, global_step, next_train, args, sample_generator)
        losses = new_losses or losses

        # EVAL: greedy policy on the task
        eval_return = None
        if global_step >= next_eval:
            eval_return = evaluate(eval_env, learner, args.eval_episodes, 10**9 + episode, spaces, device) * scale
            check_finite({"greedy actions": eval_return}, global_step)
            writer.add_scalar("eval/episodic_return", eval_return, global_step)
            next_eval += args.eval_frequency

        # LOG
        if global_step >= next_log and losses:
            logged = {f"losses/{name}": value.item() for name, value in losses.items()}  # host sync, once per log
            check_finite(logged, global_step)
            for tag, value in logged.items():
                writer.add_scalar(tag, value, global_step)
            sps = int((global_step - learning_start_step) / max(time.time() - start_time, 1e-9))
            writer.add_scalar("charts/SPS", sps, global_step)
            next_log += args.log_frequency
        progress.update(global_step, eval_return)

        # CHECKPOINT, Ctrl-C
        between_episodes(global_step, {"step": global_step, "episode": episode, "next_train": next_train,
                                       "next_eval": next_eval, "next_log": next_log, "losses": losses})

    progress.close()
    test_return = evaluate(eval_env, learner, args.eval_episodes, 10**9 + episode, spaces, device) * scale
    check_finite({"greedy actions": test_return}, global_step)
    writer.add_scalar("eval/test_return", test_return, global_step)
    writer.close()
    result = {"test_return": test_return, "run_name": run_name}
    write_json(result, f"runs/{run_name}/result.json")  # the run is finished: --resume no longer picks it
    print(f"test_return={test_return:.4f}")
    return {**result, "task": task, "global_step": global_step,
            "test_actor": copy.deepcopy(learner.actor.state_dict())}  # the final actors: for analysis and tests


if __name__ == "__main__":
    cli(main, Args)
