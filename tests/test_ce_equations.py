"""The CE paper's equations as ce_sac.py implements them (spec: shared/spec/CE.md, "Equations").

Each function is checked twice: on small hand-made inputs whose results are worked out by hand
in the comments (with the edge cases N = 1, a bank shorter than K, ties), and against a plainly
written numpy/loop reference on random inputs.
"""

import math

import numpy as np
import pytest
import torch

from ce_sac import collaborative_action, collaborative_reward, info_nce_loss, knn_cosine_similarity, novelty_of

R2 = 1 / math.sqrt(2)  # cos 45 degrees


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def close(actual, expected, atol=1e-5):
    np.testing.assert_allclose(torch.as_tensor(actual).detach().numpy(), np.asarray(expected, dtype=np.float64), atol=atol, rtol=0)


# --- independent references: loops over plain numpy, float64 ---


def cos(u, v):
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def ref_knn_cosine_similarity(query, keys, k):
    B, (N, M, _) = len(query), keys.shape
    out = np.zeros((B, N))
    for b in range(B):
        for n in range(N):
            sims = sorted((cos(query[b], keys[n, m]) for m in range(M)), reverse=True)
            out[b, n] = np.mean(sims[:k])  # fewer than k keys: the mean over all of them
    return out


def ref_collaborative_reward(novelty, w, aggregate):
    g = {"mean": np.mean, "max": np.max, "min": np.min}[aggregate]
    B, N = novelty.shape
    out = np.zeros((B, N))
    for b in range(B):
        for i in range(N):
            others = [novelty[b, j] for j in range(N) if j != i]
            out[b, i] = w * novelty[b, i] + (1 - w) * (g(others) if others else 0.0)
    return out


def ref_info_nce_loss_row(anchors, positives, temperature, b):
    logits = [cos(anchors[b], positives[c]) / temperature for c in range(len(anchors))]
    return -(logits[b] - math.log(sum(math.exp(x) for x in logits)))


def ref_info_nce_loss(anchors, positives, temperature):
    return sum(ref_info_nce_loss_row(anchors, positives, temperature, b) for b in range(len(anchors))) / len(anchors)


def ref_collaborative_action(candidates):
    N, _, M, _ = candidates.shape
    chosen = []
    for i in range(N):
        scores = [
            sum(np.sum((candidates[i, i, k] - candidates[i, j, h]) ** 2) for j in range(N) if j != i for h in range(M))
            for k in range(M)
        ]
        chosen.append(candidates[i, i, int(np.argmax(scores))])
    return np.stack(chosen)


# --- f^KNN (Eq. 2) ---

# Two queries, D = 2, against two agents' banks of M = 3 keys. Keys and queries are deliberately
# not unit length: cosine similarity must not see the norm.
KNN_QUERY = [[1.0, 0.0], [0.0, 5.0]]
KNN_KEYS = [
    [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]],  # agent 0
    [[2.0, 0.0], [1.0, 1.0], [0.0, -3.0]],  # agent 1
]
# cos(query, key):      agent 0 keys    agent 1 keys
#   q0 = (1, 0):        1,  0, -1       1,  1/sqrt2,  0
#   q1 = (0, 5):        0,  1,  0       0,  1/sqrt2, -1


def test_knn_by_hand_k1_is_the_nearest_key():
    # k = 1: the largest similarity.  q0: agent 0 -> 1, agent 1 -> 1;  q1: agent 0 -> 1, agent 1 -> 1/sqrt2
    close(knn_cosine_similarity(t(KNN_QUERY), t(KNN_KEYS), 1), [[1.0, 1.0], [1.0, R2]])


def test_knn_by_hand_k2_and_a_tie():
    # k = 2: mean of the two largest.
    #   q0: agent 0 (1 + 0)/2 = 0.5;  agent 1 (1 + 1/sqrt2)/2 = 0.853553
    #   q1: agent 0 has a tie for second place (0, 0): either way (1 + 0)/2 = 0.5
    #       agent 1 (1/sqrt2 + 0)/2 = 0.353553
    close(knn_cosine_similarity(t(KNN_QUERY), t(KNN_KEYS), 2), [[0.5, (1 + R2) / 2], [0.5, R2 / 2]])


def test_knn_bank_shorter_than_k_is_the_mean_over_all_keys():
    # k = 20 > M = 3: the mean over all three keys.
    #   q0: agent 0 (1 + 0 - 1)/3 = 0;  agent 1 (1 + 1/sqrt2 + 0)/3 = 0.569036
    #   q1: agent 0 (0 + 1 + 0)/3 = 1/3; agent 1 (0 + 1/sqrt2 - 1)/3 = -0.097631
    expected = [[0.0, (1 + R2) / 3], [1 / 3, (R2 - 1) / 3]]
    close(knn_cosine_similarity(t(KNN_QUERY), t(KNN_KEYS), 20), expected)
    close(knn_cosine_similarity(t(KNN_QUERY), t(KNN_KEYS), 3), expected)  # k = M exactly


def test_knn_partially_filled_bank_and_empty_bank():
    # ce_sac passes only the filled keys of the banks (all banks fill in lockstep): a bank of
    # M = 1 filled key with k = 20 is the similarity to that key.
    #   q0 . agent 0 key (1, 0) = 1, agent 1 key (2, 0) = 1;  q1 . (1, 0) = 0, q1 . (2, 0) = 0
    close(knn_cosine_similarity(t(KNN_QUERY), t(KNN_KEYS)[:, :1], 20), [[1.0, 1.0], [0.0, 0.0]])
    # No key stored yet (M = 0): similarity 0 (novelty 0), not NaN from a mean over nothing.
    out = knn_cosine_similarity(t(KNN_QUERY), torch.zeros(2, 0, 2), 20)
    assert out.shape == (2, 2)
    close(out, np.zeros((2, 2)))


def test_knn_single_agent():
    # N = 1 (agent 1's bank alone), k = 2: column 1 of the k = 2 case, shape [B, 1].
    out = knn_cosine_similarity(t(KNN_QUERY), t(KNN_KEYS[1:]), 2)
    assert out.shape == (2, 1)
    close(out, [[(1 + R2) / 2], [R2 / 2]])


def test_knn_identical_keys_tie_everywhere():
    # Every key is the query's direction: all similarities are 1, every top-k is a tie, mean 1.
    keys = t([[[3.0, 3.0]] * 4, [[-1.0, -1.0]] * 4])  # agent 0 same direction, agent 1 opposite
    close(knn_cosine_similarity(t([[1.0, 1.0]]), keys, 2), [[1.0, -1.0]])


@pytest.mark.parametrize("k", [1, 4, 11, 20])
def test_knn_matches_reference_on_random_inputs(k):
    rng = np.random.default_rng(k)
    query, keys = rng.normal(size=(7, 5)), rng.normal(size=(3, 11, 5))
    out = knn_cosine_similarity(t(query), t(keys), k)
    assert out.shape == (7, 3)
    close(out, ref_knn_cosine_similarity(query, keys, k))


def test_novelty_is_the_negative_knn_similarity():
    # Eq. 2: r(s', A^n) = -f^KNN; k = 2 case above negated.
    close(novelty_of(t(KNN_QUERY), t(KNN_KEYS), 2), [[-0.5, -(1 + R2) / 2], [-0.5, -R2 / 2]])


# --- Eq. 3: collaborative reward ---

NOVELTY = [[1.0, 2.0, 4.0]]  # B = 1, N = 3


@pytest.mark.parametrize(
    "aggregate, expected",
    [
        # R_i = 0.5 * n_i + 0.5 * g(others)
        #   mean: R0 = 0.5 + 0.5*(2+4)/2 = 2.0,  R1 = 1 + 0.5*(1+4)/2 = 2.25,  R2 = 2 + 0.5*(1+2)/2 = 2.75
        ("mean", [[2.0, 2.25, 2.75]]),
        #   max:  R0 = 0.5 + 0.5*4 = 2.5,  R1 = 1 + 0.5*4 = 3.0,  R2 = 2 + 0.5*2 = 3.0
        ("max", [[2.5, 3.0, 3.0]]),
        #   min:  R0 = 0.5 + 0.5*2 = 1.5,  R1 = 1 + 0.5*1 = 1.5,  R2 = 2 + 0.5*1 = 2.5
        ("min", [[1.5, 1.5, 2.5]]),
    ],
)
def test_collaborative_reward_by_hand(aggregate, expected):
    close(collaborative_reward(t(NOVELTY), 0.5, aggregate=aggregate), expected)


def test_collaborative_reward_default_is_mean_and_w_weights_the_ego_term():
    # w = 0.25, mean: R0 = 0.25*1 + 0.75*3 = 2.5,  R1 = 0.25*2 + 0.75*2.5 = 2.375,  R2 = 0.25*4 + 0.75*1.5 = 2.125
    close(collaborative_reward(t(NOVELTY), 0.25), [[2.5, 2.375, 2.125]])
    # w = 1: only the ego term, the novelty itself
    close(collaborative_reward(t(NOVELTY), 1.0), NOVELTY)


@pytest.mark.parametrize("aggregate", ["mean", "max", "min"])
def test_collaborative_reward_single_agent_has_no_mutual_term(aggregate):
    # N = 1: R = w * novelty (no other agent; in particular not NaN from a mean over nothing)
    #   [[3], [-2]] * 0.5 = [[1.5], [-1.0]]
    close(collaborative_reward(t([[3.0], [-2.0]]), 0.5, aggregate=aggregate), [[1.5], [-1.0]])


def test_collaborative_reward_ties_and_two_agents():
    # Ties: n = [5, 5, 1], max: R0 = 2.5 + 0.5*max(5,1) = 5,  R1 = 5,  R2 = 0.5 + 0.5*5 = 3
    close(collaborative_reward(t([[5.0, 5.0, 1.0]]), 0.5, aggregate="max"), [[5.0, 5.0, 3.0]])
    # N = 2: every aggregate of one other agent is that agent's novelty.
    #   n = [-1, 3]: R0 = -0.5 + 1.5 = 1,  R1 = 1.5 - 0.5 = 1
    for aggregate in ("mean", "max", "min"):
        close(collaborative_reward(t([[-1.0, 3.0]]), 0.5, aggregate=aggregate), [[1.0, 1.0]])


def test_collaborative_reward_unknown_aggregate_is_an_error():
    with pytest.raises(ValueError, match="mean, max or min"):
        collaborative_reward(t(NOVELTY), 0.5, aggregate="median")


@pytest.mark.parametrize("aggregate", ["mean", "max", "min"])
@pytest.mark.parametrize("n_agents", [1, 2, 5])
def test_collaborative_reward_matches_reference_on_random_inputs(aggregate, n_agents):
    novelty = np.random.default_rng(n_agents).normal(size=(9, n_agents))
    out = collaborative_reward(t(novelty), 0.3, aggregate=aggregate)
    assert out.shape == (9, n_agents)
    close(out, ref_collaborative_reward(novelty, 0.3, aggregate))


# --- Eq. 4: InfoNCE ---


def test_info_nce_by_hand():
    # cos(anchor_b, positive_c) is the identity matrix; T = 0.5 -> logits [[2, 0], [0, 2]].
    # Each row: -log(e^2 / (e^2 + e^0)) = log(1 + e^-2) = 0.126928; the mean is the same.
    anchors, positives = t([[1.0, 0.0], [0.0, 1.0]]), t([[1.0, 0.0], [0.0, 2.0]])
    close(info_nce_loss(anchors, positives, 0.5), math.log(1 + math.exp(-2)))
    # Positives swapped: logits [[0, 2], [2, 0]] -> each row log(1 + e^2) = 2.126928
    close(info_nce_loss(anchors, positives.flip(0), 0.5), math.log(1 + math.exp(2)))
    # T = 1: logits [[1, 0], [0, 1]] -> log(1 + e^-1) = 0.313262
    close(info_nce_loss(anchors, positives, 1.0), math.log(1 + math.exp(-1)))


def test_info_nce_edge_cases():
    # B = 1: one logit, its own softmax is 1, loss 0.
    close(info_nce_loss(t([[0.3, -1.0]]), t([[2.0, 1.0]]), 0.1), 0.0)
    # Ties: all positives the same vector -> every logit in a row equal -> loss log(B) = log 3.
    anchors = t([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    close(info_nce_loss(anchors, t([[1.0, 1.0]] * 3), 0.2), math.log(3))


def test_info_nce_valid_mask_averages_over_anchors_with_a_positive():
    # ce_sac's optional `valid` [B]: anchors without a positive leave the mean, but their
    # positives stay negatives of the other rows.
    # Positives swapped (logits [[0, 2], [2, 0]] at T = 0.5), only row 0 valid: log(1 + e^2) = 2.126928
    anchors, positives = t([[1.0, 0.0], [0.0, 1.0]]), t([[0.0, 2.0], [1.0, 0.0]])
    close(info_nce_loss(anchors, positives, 0.5, torch.tensor([True, False])), math.log(1 + math.exp(2)))
    # Row 1's positive is still a negative of row 0: row 0 with only its own positive would be 0.
    close(info_nce_loss(anchors[:1], positives[:1], 0.5), 0.0)
    # All valid: the plain mean; none valid: 0 (no anchor to learn from), not NaN.
    close(info_nce_loss(anchors, positives, 0.5, torch.tensor([True, True])), info_nce_loss(anchors, positives, 0.5))
    close(info_nce_loss(anchors, positives, 0.5, torch.tensor([False, False])), 0.0)


def test_info_nce_matches_reference_and_trains_the_encoder():
    rng = np.random.default_rng(0)
    anchors, positives = rng.normal(size=(16, 8)), rng.normal(size=(16, 8))
    a = t(anchors).requires_grad_()
    loss = info_nce_loss(a, t(positives), 0.1)
    assert loss.dim() == 0
    close(loss, ref_info_nce_loss(anchors, positives, 0.1), atol=1e-4)
    loss.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    # with a mask: the mean of the reference's per-row losses over the valid rows
    valid = rng.random(16) < 0.5
    per_row = [ref_info_nce_loss_row(anchors, positives, 0.1, b) for b in range(16)]
    close(info_nce_loss(t(anchors), t(positives), 0.1, torch.tensor(valid)), np.mean(np.asarray(per_row)[valid]), atol=1e-4)


# --- Eq. 5: collaborative action ---


def test_collaborative_action_by_hand():
    # N = 2, M = 2, A = 1.
    #   agent 0: own [0], [4]; agent 1's samples at agent 0's obs [1], [2]
    #     k=0: (0-1)^2 + (0-2)^2 = 5;  k=1: (4-1)^2 + (4-2)^2 = 13  -> 4
    #   agent 1: own [1], [-1]; agent 0's samples at agent 1's obs [2], [3]
    #     k=0: (1-2)^2 + (1-3)^2 = 5;  k=1: (-1-2)^2 + (-1-3)^2 = 25 -> -1
    candidates = t([[[[0.0], [4.0]], [[1.0], [2.0]]], [[[2.0], [3.0]], [[1.0], [-1.0]]]])  # [N, N, M, A]
    close(collaborative_action(candidates), [[4.0], [-1.0]])


def test_collaborative_action_ignores_the_agents_own_samples():
    # N = 2, M = 3, A = 1; agent 0 own [0], [1], [10]; agent 1's samples [6], [6], [6].
    #   sum over j != i: k=0: 3*36 = 108;  k=1: 3*25 = 75;  k=2: 3*16 = 48  -> 0
    #   (wrongly adding j = i, the own spread 101, 82, 181 would pick 10 instead: 209, 157, 229)
    # agent 1 (same numbers mirrored): own [6], [6], [7]; agent 0's samples [0], [0], [0] -> 7
    candidates = t([[[[0.0], [1.0], [10.0]], [[6.0], [6.0], [6.0]]], [[[0.0], [0.0], [0.0]], [[6.0], [6.0], [7.0]]]])
    close(collaborative_action(candidates), [[0.0], [7.0]])


def test_collaborative_action_two_dim_actions():
    # N = 3, M = 2, A = 2: for agent i the score is the squared distance to all of the other two
    # agents' samples. Agent 0: own (0,0) and (1,1); others all at (1,1) -> (0,0) has 4 * 2 = 8,
    # (1,1) has 0 -> (0,0). Agents 1, 2: own (1,1) and (1,-1); others at (1,1) and (-1,-1):
    #   (1,1): 2 agents * (0 + 8) = 16;  (1,-1): 2 agents * (4 + 4) = 16 -> a tie; ce_sac documents
    #   the first k on ties (torch.argmax), so (1,1).
    c = torch.zeros(3, 3, 2, 2)
    c[0, 0] = t([[0.0, 0.0], [1.0, 1.0]])
    c[0, 1] = c[0, 2] = t([[1.0, 1.0], [1.0, 1.0]])
    for i in (1, 2):
        c[i] = t([[1.0, 1.0], [-1.0, -1.0]])
        c[i, i] = t([[1.0, 1.0], [1.0, -1.0]])
    out = collaborative_action(c)
    assert out.shape == (3, 2)
    close(out, [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])


def test_collaborative_action_single_agent_and_identical_samples():
    # N = 1: no other agent, every score is 0 (a tie): the agent's first sample (documented tie-break).
    c = t([[[[0.5, -0.5], [0.1, 0.2], [-0.3, 0.9]]]])  # [1, 1, 3, 2]
    out = collaborative_action(c)
    assert out.shape == (1, 2)
    close(out, [[0.5, -0.5]])
    # Identical samples everywhere: the one action there is.
    close(collaborative_action(torch.full((3, 3, 4, 2), 0.25)), np.full((3, 2), 0.25))


@pytest.mark.parametrize("n_agents", [1, 2, 4])
def test_collaborative_action_matches_reference_on_random_inputs(n_agents):
    candidates = np.random.default_rng(n_agents).uniform(-1, 1, size=(n_agents, n_agents, 10, 3))
    out = collaborative_action(t(candidates))
    assert out.shape == (n_agents, 3)
    if n_agents > 1:  # with N = 1 every candidate ties (covered above)
        close(out, ref_collaborative_action(candidates))
