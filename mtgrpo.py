"""
Multi-Task GRPO (MT-GRPO) in one file: Ramesh et al., "Multi-Task GRPO: Reliable LLM Reasoning
Across Tasks", arXiv 2602.05547. The training loop `train()` is the paper's Algorithm 1:

    for each step t:
        batch, rho = RP_SAMPLER(z, B, N, rho, D_train)        # Algorithm 2  -> rp_sample()
        theta     <- GRPO update(s) on batch                   # Eq. 11-13    -> grpo_loss()
        I_k        = J_GRPO,k(theta_t+1) - J_GRPO,k(theta_t)   # Eq. 8        -> task_objectives()
        J_k        = accuracy of task k's rollouts this step
        z          = softmax(xi - beta * g(I, J))              # Subroutine 1 -> iwu_gradient()

Every piece of the method is a small pure function (torch/numpy only, no model needed) so it can be
read beside the paper and pasted into another trainer. Where we depart from the paper or its released
code (github.com/rsshyam/MT-GRPO), the comment at that line says so; SPEC-style summary:
  - J_k is this step's pre-filter accuracy of task k (released code: an EMA with decay 0.5);
  - I_k is the change of the task's token-mean clipped surrogate, measured once per step (code: a sum
    over responses, once per minibatch); at theta_t the ratio is 1, so J_GRPO,k(theta_t) needs no forward;
  - the lenient filter drops every constant group (code: only all-0 / all-1 groups);
  - rho is updated for every task that generated prompts in a round (code: forgets tasks with none
    filtered), and the RP sampler always terminates (at most N_rs resampling rounds).

Run:
    python mtgrpo.py --model tiny                 # CPU demo, no download: tiny Qwen2 on toy tasks (~20 s)
    python mtgrpo.py --model Qwen2.5-0.5B         # one GPU: Countdown / Zebra / ARC-1D, medium variants
Shapes: B prompts, N rollouts per prompt, R = rows (prompts x N), T tokens, V vocab, K tasks.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

METHODS = ("mtgrpo", "grpo", "dapo", "iwu", "rps", "sec")


# -----------------------------------------------------------------------------
# GRPO pieces (Appendix B, Eq. 11-13)


def group_advantages(rewards: torch.Tensor, unbiased: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 11: A_i = (R_i - mean(R)) / (std(R) + eps), over each prompt's group of N responses.

    rewards: (B, N) -> advantages (B, N). `unbiased=True` uses the sample std (divide by N-1), as the
    released code and TRL do; the paper's Eq. 11 does not say. With N = 8 the two differ by sqrt(8/7).
    The clipped surrogate scales with A, so this rescales the gradient; it still changes training through
    grad-norm clipping, Adam's eps, and the size of I_k next to lam * J_k and the clip c, hence an option.
    Example: rewards [[1, 0]] -> [[0.7071, -0.7071]] (sample std = 0.7071).
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must have shape (B, N) with N >= 2 rollouts per prompt, got {tuple(rewards.shape)}")
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=unbiased)
    return (rewards - mean) / (std + eps)


def zero_gradient_keep(rewards: torch.Tensor, mode: str = "strict") -> torch.Tensor:
    """Zero-gradient filter (Sec. 2, 5): which prompt groups to keep. rewards (B, N) -> bool (B,).

    strict  (Exp. 1): drop a group with no correct (reward 1.0) or all correct responses.
    lenient (Exp. 2): drop a group only if its rewards are constant, i.e. A = 0 for every response.
    The released code's lenient mode keeps all-0.1 groups although they carry no gradient; we drop them.
    "none" keeps everything (plain GRPO).
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must have shape (B, N), got {tuple(rewards.shape)}")
    if mode == "strict":
        n_correct = (rewards == 1.0).sum(dim=1)
        return (n_correct > 0) & (n_correct < rewards.shape[1])
    if mode == "lenient":
        return (rewards.max(dim=1).values - rewards.min(dim=1).values) > 1e-6
    if mode == "none":
        return torch.ones(rewards.shape[0], dtype=torch.bool, device=rewards.device)
    raise ValueError(f"filter mode must be 'strict', 'lenient' or 'none', got {mode!r}")


def response_mask(tokens: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1.0 on response tokens up to and including the first EOS, 0.0 after. tokens (R, T) -> (R, T).

    Counting EOS strictly *before* each position keeps the first EOS itself in the loss (the model must
    learn to stop) and drops the padding `generate` writes after it, even when pad == eos (Qwen base).
    A response with no EOS was truncated at max length: all its tokens count (SPEC: scored as written).
    """
    is_eos = torch.isin(tokens, torch.tensor(eos_ids, device=tokens.device))
    eos_before = torch.cumsum(is_eos, dim=1) - is_eos.long()
    return (eos_before == 0).float()


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor,
                   temperature: float = 1.0, chunk_size: int = 2048) -> torch.Tensor:
    """log pi(y_t | x, y_<t) of the sampled tokens at the sampling temperature (SPEC 2).

    hidden (R, T, H) final hidden states at the positions that predict `tokens` (R, T); weight (V, H)
    the lm_head. Equal to log_softmax(hidden @ weight.T / temperature).gather(tokens), but computed
    `chunk_size` tokens at a time, and each chunk is recomputed in backward instead of stored, so the
    float32 (R, T, V) logits tensor (R*T*V*4 bytes: 1 GB for R=8, T=1024 at Qwen's V=151936) never
    exists; peak extra memory is one (chunk_size, V) chunk. Returns (R, T) in float32 (or float64).
    """
    R, T, H = hidden.shape
    h, y = hidden.reshape(R * T, H), tokens.reshape(R * T)

    def chunk_logprobs(h_c: torch.Tensor, y_c: torch.Tensor) -> torch.Tensor:
        logits = h_c @ weight.T  # (C, V) <- the big one, one chunk at a time
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature  # bf16 -> fp32
        return logits.gather(1, y_c[:, None]).squeeze(1) - torch.logsumexp(logits, dim=1)

    out = []
    for i in range(0, R * T, chunk_size):
        h_c, y_c = h[i:i + chunk_size], y[i:i + chunk_size]
        if torch.is_grad_enabled() and h_c.requires_grad:
            out.append(checkpoint(chunk_logprobs, h_c, y_c, use_reentrant=False))
        else:
            out.append(chunk_logprobs(h_c, y_c))
    return torch.cat(out).reshape(R, T)


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                      eps_low: float, eps_high: float) -> torch.Tensor:
    """Eq. 13's per-token term min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), r = pi / pi_old.

    logp, old_logp (R, T); adv (R,) broadcast over each response's tokens. eps_high > eps_low is
    DAPO's "clip-higher" (0.28 vs 0.2): it lets low-probability tokens with A > 0 grow further.
    """
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None]
    return torch.minimum(ratio * a, torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * a)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
              eps_low: float = 0.2, eps_high: float = 0.28, tau: float = 0.0,
              ref_logp: torch.Tensor | None = None, agg: str = "token_mean",
              normalizer: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO loss -J_GRPO (Eq. 13) of a (micro-)batch. logp/old_logp/mask (R, T), adv (R,).

    agg="token_mean" (DAPO, default): sum over all response tokens / number of tokens;
    agg="seq_mean" (original GRPO): mean over each response's tokens, then sum / number of responses.
    `normalizer` is that count for the whole *minibatch* of an optimizer step: with micro-batches, pass
    the minibatch's total so that the accumulated gradients equal the gradient of the unsplit minibatch
    (a per-micro-batch mean would weight short micro-batches up). Default: this batch's own count.
    tau > 0 adds tau * KL_t with the k3 estimator f(u) = u - log u - 1, u = pi_ref / pi (needs ref_logp).
    Returns (loss, stats) with stats the clipped-token fraction and mean ratio as 0-d tensors: a float()
    here would make the host wait for the GPU on every micro-batch, so callers convert once per step.
    """
    if not (logp.shape == old_logp.shape == mask.shape and adv.shape == logp.shape[:1]):
        raise ValueError(f"shape mismatch: logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)}, "
                         f"mask {tuple(mask.shape)}, adv {tuple(adv.shape)} (want (R, T) x3 and (R,))")
    term = clipped_surrogate(logp, old_logp, adv, eps_low, eps_high)
    if tau > 0:
        if ref_logp is None:
            raise ValueError("tau > 0 needs ref_logp (log-probs of the reference policy)")
        log_u = ref_logp - logp
        term = term - tau * (torch.exp(log_u) - log_u - 1.0)
    if agg == "token_mean":
        total = (term * mask).sum()
        count = mask.sum() if normalizer is None else normalizer
    elif agg == "seq_mean":
        total = ((term * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).sum()
        count = logp.shape[0] if normalizer is None else normalizer
    else:
        raise ValueError(f"agg must be 'token_mean' or 'seq_mean', got {agg!r}")
    loss = -total / max(float(count), 1.0)
    with torch.no_grad():
        ratio = torch.exp(logp - old_logp)
        a = adv[:, None].expand_as(ratio)
        clipped = ((ratio < 1 - eps_low) & (a < 0)) | ((ratio > 1 + eps_high) & (a > 0))
        n = mask.sum().clamp(min=1.0)
        stats = {"clip_frac": (clipped.float() * mask).sum() / n, "ratio_mean": (ratio * mask).sum() / n}
    return loss, stats


# -----------------------------------------------------------------------------
# Per-task objective and improvement (Eq. 8)


def task_objectives(surrogate: torch.Tensor, mask: torch.Tensor, task_ids: torch.Tensor, K: int) -> torch.Tensor:
    """J_GRPO,k: token-mean of the clipped surrogate over task k's response tokens. -> (K,).

    surrogate/mask (R, T) (from clipped_surrogate), task_ids (R,) in [0, K). A task with no tokens in
    the batch gets 0, so its improvement is 0: no evidence either way.
    At theta_t itself pi = pi_old, the ratio is 1 and the surrogate is just A: J_GRPO,k(theta_t) is the
    token-weighted mean advantage and needs no forward pass.
    """
    per_row = (surrogate * mask).sum(dim=1)  # (R,)
    num = torch.zeros(K, dtype=per_row.dtype, device=per_row.device).index_add_(0, task_ids, per_row)
    den = torch.zeros(K, dtype=per_row.dtype, device=per_row.device).index_add_(0, task_ids, mask.sum(dim=1))
    return num / den.clamp(min=1.0)


def task_improvement(j_before: torch.Tensor, j_after: torch.Tensor, clip: float = 0.1) -> torch.Tensor:
    """Eq. 8: I_k = J_GRPO,k(theta_t+1) - J_GRPO,k(theta_t), clipped to [-c, c] for stability (App. E)."""
    return (j_after - j_before).clamp(-clip, clip)


# -----------------------------------------------------------------------------
# Task weights: IWU (Subroutine 1), reward-only + L2 (Subroutine 2), SEC (Chen et al. 2025)


def _check_distribution(z: np.ndarray | torch.Tensor, name: str = "z") -> None:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 1 or len(z) == 0 or (z < 0).any() or abs(z.sum() - 1.0) > 1e-6:
        raise ValueError(f"{name} must be a probability vector over the K tasks (non-negative, sums to 1), got {z}")


def iwu_gradient(z: torch.Tensor, improvement: torch.Tensor, reward: torch.Tensor, lam: float) -> torch.Tensor:
    """Subroutine 1, lines 3-4: s_k = I_k + lam * J_k;  g_k = z_k (s_k - sum_j z_j s_j).

    Descending on xi with g (line 5: xi <- xi - beta g) raises the weight of tasks whose combined score
    s_k is below its z-weighted mean: low reward, little improvement, or both. lam trades the two: large
    lam -> worst-task focus.
    Example: z = [.5, .5], I = [0, 0], J = [0, 1], lam = 1 -> g = [-.25, .25] (task 0 gains weight).
    """
    _check_distribution(z)
    if not (z.shape == improvement.shape == reward.shape):
        raise ValueError(f"z, improvement, reward must all have shape (K,), got {tuple(z.shape)}, "
                         f"{tuple(improvement.shape)}, {tuple(reward.shape)}")
    s = improvement + lam * reward
    return z * (s - (z * s).sum())


def reward_l2_gradient(z: torch.Tensor, reward: torch.Tensor, xi: torch.Tensor, eta: float) -> torch.Tensor:
    """Subroutine 2 (App. F, Eq. 43-44), the ablation: g_k = z_k (J_k - sum_j z_j J_j) + eta * xi_k.

    Reward-only reweighting collapses onto the current worst task (Fig. 2); the L2 term eta * xi pulls
    the logits back toward uniform. The paper's step is plain gradient descent, xi <- xi - beta (g + eta xi),
    so the trainer requires --xi-optimizer sgd with it (Adam would rescale the eta * xi term).
    """
    _check_distribution(z)
    return z * (reward - (z * reward).sum()) + eta * xi


def sec_distribution(q: np.ndarray, temperature: float = 0.2) -> np.ndarray:
    """SEC (Chen et al. 2025): sample tasks by a Boltzmann distribution over their learning-progress
    values Q_k (an EMA of the mean |advantage| of the task's trained groups), temperature 0.2."""
    logits = np.asarray(q, dtype=np.float64) / temperature
    p = np.exp(logits - logits.max())
    return p / p.sum()


# -----------------------------------------------------------------------------
# Batch construction: RP sampler (Algorithm 2) and the baselines' samplers, one interface
#
# Every sampler takes `sample_round(counts) -> groups`: given counts (K,) of prompts to draw per task,
# it draws them, generates N rollouts each, scores them and applies the zero-gradient filter, returning
# for each task the list of groups that survived. The samplers never see a model, so they are tested
# with a fake sample_round, and the trainer passes one that calls `generate`.

SampleRound = Callable[[np.ndarray], "list[list[Any]]"]


@dataclass
class SampledBatch:
    groups: list[Any]          # the prompt groups to train on (at most B)
    tasks: list[int]           # task index of each group
    generated: list[list[int]] # per round: prompts generated per task
    accepted: list[list[int]]  # per round: prompts surviving the filter per task
    targets: list[int]         # n_k ~ Mult(B, z): wanted post-filter counts (RP sampler; else [])
    rho: np.ndarray            # updated filter-rate estimates (K,)

    @property
    def rounds(self) -> int:   # generation rounds, the first included
        return len(self.generated)


def _check_sampler_args(z: np.ndarray, B: int, rho: np.ndarray, os_factor: float, max_rounds: int,
                        acc_cap: float = 1.0) -> None:
    _check_distribution(z)
    if B < 1:
        raise ValueError(f"B (batch size in prompts) must be >= 1, got {B}")
    if len(rho) != len(z) or not ((0 <= rho) & (rho < 1)).all():
        raise ValueError(f"rho must hold K={len(z)} filter rates in [0, 1), got {rho}")
    if os_factor < 1:
        raise ValueError(f"M_os (oversampling factor) must be >= 1, got {os_factor}")
    if max_rounds < 0:
        raise ValueError(f"N_rs (max resampling rounds) must be >= 0, got {max_rounds}")
    if acc_cap < 1:
        raise ValueError(f"M_acc (inflation cap) must be >= 1, got {acc_cap}")


def update_filter_rates(rho: np.ndarray, generated: np.ndarray, accepted: np.ndarray, decay: float = 0.9) -> np.ndarray:
    """rho_k <- decay rho_k + (1 - decay) (filtered / generated), for every task that generated prompts
    this round (the released code skips tasks with nothing filtered, so their rho never decays: a bug).
    Stays in [0, 1) when it starts there: decay * rho + (1 - decay) * 1 < 1."""
    rho = rho.copy()
    gen = generated > 0
    rho[gen] = decay * rho[gen] + (1 - decay) * (1.0 - accepted[gen] / generated[gen])
    return np.minimum(rho, 1.0 - 1e-9)  # float rounding must not reach 1 (m_k = 1/(1-rho) below)


def rp_sample(z: np.ndarray, B: int, sample_round: SampleRound, rho: np.ndarray, rng: np.random.Generator,
              os_factor: float = 3, max_rounds: int = 10, acc_cap: float = 5.0, rho_decay: float = 0.9,
              inflate: bool = True) -> SampledBatch:
    """Algorithm 2, the ratio-preserving sampler: a post-filter batch whose task shares follow z.

    z (K,) task weights; B prompts wanted after filtering; rho (K,) filter-rate estimates in [0, 1);
    os_factor = M_os; max_rounds = N_rs resampling rounds after the first; acc_cap = M_acc.
    inflate=False sets m_k = 1 (the "no acceptance-aware sampling" ablation, Fig. 16).
    """
    z, rho = np.asarray(z, dtype=np.float64), np.asarray(rho, dtype=np.float64)
    _check_sampler_args(z, B, rho, os_factor, max_rounds, acc_cap)
    K, n_gen = len(z), int(round(os_factor * B))
    n = rng.multinomial(B, z)                                       # line 1: target counts
    m = 1.0 / np.maximum(1.0 - rho, 1.0 / acc_cap) if inflate else np.ones(K)  # line 2: min(1/(1-rho), M_acc)
    accepted_by_task: list[list[Any]] = [[] for _ in range(K)]
    generated, accepted = [], []
    p = z * m / (z * m).sum()                                       # line 3: zhat
    while True:
        counts = rng.multinomial(n_gen, p)                          # lines 4 / 15
        survivors = sample_round(counts)                            # lines 5-9 / 16-22
        c_round = np.array([len(s) for s in survivors])
        for k in range(K):
            accepted_by_task[k].extend(survivors[k])
        generated.append(counts.tolist())
        accepted.append(c_round.tolist())
        rho = update_filter_rates(rho, counts, c_round, rho_decay)
        c = np.array([len(a) for a in accepted_by_task])           # lines 10 / 24
        deficit = np.maximum(n - c, 0)                              # lines 11 / 24
        if deficit.sum() == 0 or len(generated) > max_rounds:       # line 13: r <= N_rs
            break
        p = deficit * m / (deficit * m).sum()                       # line 14: deficiency-aware
    groups, tasks = _trim_to_targets(accepted_by_task, n, B, rng)   # lines 27-33
    return SampledBatch(groups, tasks, generated, accepted, n.tolist(), rho)


def _trim_to_targets(accepted_by_task: list[list[Any]], n: np.ndarray, B: int,
                     rng: np.random.Generator) -> tuple[list[Any], list[int]]:
    """Algorithm 2, lines 27-33: at most B accepted -> keep all (a short batch); otherwise keep at most
    n_k random survivors of task k, then fill up to exactly B at random from the rest. The batch comes out
    in random order: policy_update cuts it into contiguous minibatches, which must each mix the tasks."""
    pool = [(k, g) for k, groups in enumerate(accepted_by_task) for g in groups]
    if len(pool) <= B:
        keep = list(range(len(pool)))
    else:
        keep, rest = [], []
        start = 0
        for k, groups in enumerate(accepted_by_task):
            idx = start + rng.permutation(len(groups))
            keep += idx[:n[k]].tolist()
            rest += idx[n[k]:].tolist()
            start += len(groups)
        keep += rng.choice(rest, size=B - len(keep), replace=False).tolist()
    keep = rng.permutation(keep).tolist()
    return [pool[i][1] for i in keep], [pool[i][0] for i in keep]


def dynamic_sample(z: np.ndarray, B: int, sample_round: SampleRound, rho: np.ndarray, rng: np.random.Generator,
                   os_factor: float = 3, max_rounds: int = 10, rho_decay: float = 0.9) -> SampledBatch:
    """The baselines' sampler (DAPO's dynamic sampling): draw M_os * B prompts by z per round, filter,
    repeat until B prompts survived (or N_rs extra rounds are spent) and keep the first B.

    DAPO: z uniform. IWU-only: z from IWU. SEC: z from sec_distribution. Plain GRPO is the special
    case os_factor=1, max_rounds=0 with a sample_round that filters nothing. Nothing preserves z here:
    a task filtered at rate rho_k ends up with a share of about z_k (1 - rho_k) / sum_j z_j (1 - rho_j)
    (Fig. 12). rho is still tracked, for the logs.
    """
    z, rho = np.asarray(z, dtype=np.float64), np.asarray(rho, dtype=np.float64)
    _check_sampler_args(z, B, rho, os_factor, max_rounds)
    K, n_gen = len(z), int(round(os_factor * B))
    kept: list[tuple[int, Any]] = []
    generated, accepted = [], []
    while len(kept) < B and len(generated) <= max_rounds:
        counts = rng.multinomial(n_gen, z)
        survivors = sample_round(counts)
        c_round = np.array([len(s) for s in survivors])
        generated.append(counts.tolist())
        accepted.append(c_round.tolist())
        rho = update_filter_rates(rho, counts, c_round, rho_decay)
        # "Keep the first B" in draw order: prompts are drawn i.i.d., so their order is a random
        # permutation of the round's survivors, whatever their tasks.
        round_kept = [(k, g) for k in range(K) for g in survivors[k]]
        kept += [round_kept[i] for i in rng.permutation(len(round_kept))]
    kept = kept[:B]
    return SampledBatch([g for _, g in kept], [k for k, _ in kept], generated, accepted, [], rho)


# -----------------------------------------------------------------------------
# Metrics (SPEC 9)


def mean_at_k(correct: np.ndarray) -> float:
    """mean@k accuracy: correct (P, k) booleans for P test prompts x k samples -> mean over all."""
    return float(np.mean(correct)) if np.size(correct) else 0.0


def worst_and_average(acc: dict[str, float]) -> tuple[float, float]:
    """Worst-task accuracy (the headline metric) and average accuracy over tasks."""
    return min(acc.values()), sum(acc.values()) / len(acc)


def average_relative_change(acc: dict[str, float], baseline: dict[str, float]) -> float:
    """(1/K) sum_k (Acc(k) - Acc_b(k)) / Acc_b(k) x 100, over the tasks both have. Tasks where the
    baseline scores 0 are skipped (the ratio is undefined)."""
    ks = [k for k in acc if k in baseline and baseline[k] > 0]
    if not ks:
        raise ValueError("average_relative_change: no task with baseline accuracy > 0 in common")
    return 100.0 * sum((acc[k] - baseline[k]) / baseline[k] for k in ks) / len(ks)


def steps_to_threshold(steps: list[int], worst: list[float], threshold: float) -> int | None:
    """First step at which worst-task accuracy reaches `threshold` (None if never)."""
    for s, w in zip(steps, worst):
        if w >= threshold:
            return s
    return None


# -----------------------------------------------------------------------------
# Config: one dataclass, paper defaults cited (SPEC 2-7). Every field is a CLI flag (--field-name).


@dataclass
class Config:
    # run
    model: str = "tiny"            # hub name (Qwen2.5-0.5B -> Qwen/Qwen2.5-0.5B), org/name, a local dir, or "tiny"
    method: str = "mtgrpo"         # mtgrpo | grpo | dapo | iwu | rps | sec (SPEC 7)
    tasks: str = "countdown_medium,zebra_medium,arc1d_medium"  # Exp. 1 trains on the medium variants
    steps: int = 200               # paper Exp. 1: 720 (Qwen2.5-3B)
    seed: int = 0                  # model init (tiny), data, sampling: one seed fixes the run
    out_dir: str = "out"           # log.jsonl and checkpoint-STEP/ go here
    resume: str = ""               # a checkpoint dir written by --save-every
    save_every: int = 0            # 0: only at the end
    eval_every: int = 25           # 0: only at the end
    eval_k: int = 8                # mean@k samples per test prompt (paper: k = 8)
    eval_prompts: int = 200        # test prompts per task (paper: 200)
    n_train: int = 1000            # train prompts per task (paper: 1000; released data 10,000)
    prompt_style: str = "auto"     # auto (chat template if the tokenizer has one, else r1) | r1 | chat | plain
    box_rule: str = "last"         # last \boxed{} anywhere | last_line (released code)
    baseline_log: str = ""         # a baseline run's log.jsonl: adds average relative change to evals
    # rollouts (SPEC 2)
    batch_size: int = 16           # B prompts per step after filtering (Exp. 1: 32, Exp. 2: 256)
    num_rollouts: int = 8          # N responses per prompt (Exp. 1: 72, Exp. 2: 8)
    max_prompt_len: int = 512      # tokens; longer prompts are dropped at load time (paper: 1024)
    max_response_len: int = 1024   # tokens (paper: 4096)
    temperature: float = 1.0       # sampling temperature; log-probs use the same (paper: 1.0)
    top_p: float = 1.0             # paper: 1.0
    gen_batch_size: int = 384      # rows (prompts x N) per generate() call
    # GRPO update (SPEC 2, 6)
    minibatch_size: int = 4        # prompts per optimizer step (paper: B/4 -> 4 updates per step)
    micro_batch_size: int = 8      # rows per forward/backward; gradients accumulate over a minibatch
    lr: float = 1e-6               # AdamW (paper)
    beta1: float = 0.9             # paper (0.9, 0.99); released code (0.9, 0.999)
    beta2: float = 0.99            # paper 0.99; released code 0.999
    weight_decay: float = 0.0      # paper: not stated; released code 0.01
    grad_clip: float = 1.0         # paper
    eps_low: float = 0.2           # clip range below 1 (Eq. 13)
    eps_high: float = -1.0         # clip-higher: -1 = method default (0.28 MT-GRPO/DAPO, 0.2 GRPO)
    kl_tau: float = 0.0            # k3 KL weight; paper 0, so no reference model
    loss_agg: str = "token_mean"   # token_mean (DAPO, used in the paper's runs) | seq_mean (Eq. 13, original GRPO)
    adv_std: str = "unbiased"      # unbiased (released code) | population
    filter: str = "strict"         # strict (Exp. 1) | lenient (Exp. 2); GRPO never filters
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower update
    # task weights (Subroutine 1 / 2)
    lam: float = 0.2               # trade-off lambda (Exp. 1: 0.2 / 0.25; Exp. 2: 0.1-1.2)
    weight_update: str = "iwu"     # iwu (Subroutine 1) | reward_l2 (Subroutine 2 ablation)
    eta: float = 0.0               # L2 strength of reward_l2 (paper: 1e-5, 5e-4, 1e-2)
    xi_optimizer: str = "adamw"    # adamw (paper) | sgd (xi <- xi - beta g)
    xi_lr: float = 0.025           # paper: AdamW lr 0.025
    xi_weight_decay: float = 1e-5  # AdamW on xi only; paper: 1e-5 (Exp. 1), 1e-4 (Exp. 2)
    improvement_clip: float = 0.1  # c: I_k clipped to [-c, c] (Exp. 1: 0.1; Exp. 2: 0.2)
    # RP sampler (Algorithm 2)
    os_factor: float = 3.0         # M_os (paper: 3)
    max_resample_rounds: int = 10  # N_rs (Exp. 1: 10, Exp. 2: 2); also caps DAPO's regeneration
    acc_cap: float = 5.0           # M_acc (paper: 5)
    rho_decay: float = 0.9         # EMA decay of the filter-rate estimate rho
    inflate: bool = True           # acceptance-aware inflation m_k (False: m_k = 1, Fig. 16 ablation)
    # SEC baseline (Chen et al. 2025)
    sec_temperature: float = 0.2   # Boltzmann temperature over learning progress (SEC paper: 0.2)
    sec_decay: float = 0.5         # EMA decay of SEC's mean |advantage| per task


PRESETS: dict[str, dict[str, Any]] = {
    # CPU demo: the tiny model on the toy tasks, about 20 s on 2 cores.
    "tiny": dict(tasks="toy_copy,toy_next,toy_sum", steps=100, eval_every=25, eval_k=4, eval_prompts=64,
                 n_train=1000, batch_size=16, num_rollouts=8, max_prompt_len=32, max_response_len=4,
                 gen_batch_size=512, minibatch_size=16, micro_batch_size=128, lr=3e-3, max_resample_rounds=3),
    # Paper Exp. 1 (Qwen2.5-3B, 3 tasks), App. E.
    "exp1": dict(tasks="countdown_medium,zebra_medium,arc1d_medium", steps=720, batch_size=32, num_rollouts=72,
                 minibatch_size=8, max_prompt_len=1024, max_response_len=4096, filter="strict", lam=0.2,
                 max_resample_rounds=10, xi_weight_decay=1e-5, improvement_clip=0.1, prompt_style="r1"),
    # Paper Exp. 2 (9 tasks: three families x easy/medium/hard).
    "exp2": dict(tasks=",".join(f"{t}_{d}" for t in ("countdown", "zebra", "arc1d") for d in ("easy", "medium", "hard")),
                 steps=720, batch_size=256, num_rollouts=8, minibatch_size=64, max_prompt_len=1024, max_response_len=4096,
                 filter="lenient", lam=1.2, max_resample_rounds=2, xi_weight_decay=1e-4, improvement_clip=0.2,
                 prompt_style="r1"),
}


def method_defaults(method: str) -> dict[str, Any]:
    """Paper settings per method (SPEC 7): which sampler, whether z adapts, eps_high, filtering."""
    return {
        "mtgrpo": dict(sampler="rp", adaptive="iwu", eps_high=0.28, filters=True),
        "grpo":   dict(sampler="grpo", adaptive=None, eps_high=0.2, filters=False),
        "dapo":   dict(sampler="dynamic", adaptive=None, eps_high=0.28, filters=True),
        "iwu":    dict(sampler="dynamic", adaptive="iwu", eps_high=0.28, filters=True),
        "rps":    dict(sampler="rp", adaptive=None, eps_high=0.28, filters=True),
        "sec":    dict(sampler="dynamic", adaptive="sec", eps_high=0.28, filters=True),
    }[method]


def validate(cfg: Config) -> None:
    """Reject bad settings with one line naming the flag and the fix (the CLI exits with status 2)."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ValueError(msg)
    need(cfg.method in METHODS, f"--method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    need(cfg.batch_size >= 1, f"--batch-size (B) must be >= 1, got {cfg.batch_size}")
    need(cfg.num_rollouts >= 2, f"--num-rollouts (N) must be >= 2 (group advantages need a group), got {cfg.num_rollouts}")
    need(cfg.steps >= 1, f"--steps must be >= 1, got {cfg.steps}")
    need(cfg.temperature > 0, f"--temperature must be > 0, got {cfg.temperature}")
    need(0 < cfg.top_p <= 1, f"--top-p must be in (0, 1], got {cfg.top_p}")
    need(cfg.max_response_len >= 1, f"--max-response-len must be >= 1, got {cfg.max_response_len}")
    need(cfg.max_prompt_len >= 1, f"--max-prompt-len must be >= 1, got {cfg.max_prompt_len}")
    need(cfg.lam >= 0, f"--lam (lambda) must be >= 0, got {cfg.lam}")
    need(cfg.acc_cap >= 1, f"--acc-cap (M_acc) must be >= 1, got {cfg.acc_cap}")
    need(cfg.max_resample_rounds >= 0, f"--max-resample-rounds (N_rs) must be >= 0, got {cfg.max_resample_rounds}")
    need(cfg.os_factor >= 1, f"--os-factor (M_os) must be >= 1, got {cfg.os_factor}")
    need(0 <= cfg.rho_decay < 1, f"--rho-decay must be in [0, 1), got {cfg.rho_decay}")
    need(cfg.sec_temperature > 0, f"--sec-temperature must be > 0, got {cfg.sec_temperature}")
    need(0 <= cfg.sec_decay < 1, f"--sec-decay must be in [0, 1), got {cfg.sec_decay}")
    need(cfg.eta >= 0, f"--eta must be >= 0, got {cfg.eta}")
    need(cfg.eval_k >= 1, f"--eval-k must be >= 1, got {cfg.eval_k}")
    need(cfg.eval_prompts >= 1, f"--eval-prompts must be >= 1, got {cfg.eval_prompts}")
    need(1 <= cfg.n_train <= 10_000, f"--n-train must be in 1..10000, got {cfg.n_train}")
    need(cfg.minibatch_size >= 1 and cfg.micro_batch_size >= 1 and cfg.gen_batch_size >= 1,
         "--minibatch-size, --micro-batch-size and --gen-batch-size must be >= 1")
    need(cfg.lr > 0 and cfg.xi_lr > 0, "--lr and --xi-lr must be > 0")
    need(0 <= cfg.eps_low < 1, f"--eps-low must be in [0, 1), got {cfg.eps_low}")
    need(cfg.eps_high == -1.0 or cfg.eps_high >= 0, f"--eps-high must be >= 0 (or -1 for the method default), got {cfg.eps_high}")
    need(cfg.improvement_clip > 0, f"--improvement-clip must be > 0, got {cfg.improvement_clip}")
    need(cfg.kl_tau >= 0, f"--kl-tau must be >= 0, got {cfg.kl_tau}")
    need(cfg.eval_every >= 0 and cfg.save_every >= 0, "--eval-every and --save-every must be >= 0")
    for name, val, allowed in (("loss-agg", cfg.loss_agg, ("token_mean", "seq_mean")),
                               ("adv-std", cfg.adv_std, ("unbiased", "population")),
                               ("filter", cfg.filter, ("strict", "lenient")),
                               ("weight-update", cfg.weight_update, ("iwu", "reward_l2")),
                               ("xi-optimizer", cfg.xi_optimizer, ("adamw", "sgd")),
                               ("prompt-style", cfg.prompt_style, ("auto", "r1", "chat", "plain")),
                               ("box-rule", cfg.box_rule, ("last", "last_line"))):
        need(val in allowed, f"--{name} must be one of {', '.join(allowed)}, got {val!r}")
    from tasks import TASK_NAMES
    for name in (t.strip() for t in cfg.tasks.split(",") if t.strip()):
        need(name in TASK_NAMES or name.endswith(".jsonl"),
             f"--tasks: unknown task {name!r}; known: {', '.join(TASK_NAMES)}, or a path to a .jsonl file")
        need(not name.endswith(".jsonl") or os.path.isfile(name), f"--tasks: task file {name} does not exist")
    need(cfg.weight_update != "reward_l2" or cfg.xi_optimizer == "sgd",
         "--weight-update reward_l2 is Subroutine 2's plain step xi <- xi - beta (g + eta xi): pass --xi-optimizer sgd "
         "(AdamW would rescale the eta * xi term and add its own weight decay)")
    need(cfg.kl_tau == 0, "--kl-tau > 0 needs a reference model, which this trainer does not keep "
                          "(the paper uses tau = 0); grpo_loss() supports it for other trainers")


# -----------------------------------------------------------------------------
# Models: hub name, local directory, or a tiny Qwen2 built locally (no download)


def build_tiny_model(path: str, newline: bool = True, seed: int = 0) -> str:
    """Write a tiny random Qwen2 (hidden 128, 2 layers, 0.5M params: the shape of the TRL peer
    benchmark's W1) and a character-level tokenizer to `path`, for CPU demos and tests.

    Vocab: <pad>=0, <|endoftext|>=1 (EOS), printable ASCII 32..126, and '\\n' if `newline` (W1 has none).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    chars = [chr(c) for c in range(32, 127)] + (["\n"] if newline else [])
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<|endoftext|>"] + chars)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")  # one token per character
    tk.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<|endoftext|>",
                                        unk_token="<pad>", padding_side="left", model_max_length=512)
    config = Qwen2Config(vocab_size=len(vocab), hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=512, tie_word_embeddings=True,
                         max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).float()
    model.generation_config = GenerationConfig(pad_token_id=0, eos_token_id=1, bos_token_id=None)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def resolve_model_name(name: str) -> str:
    """'Qwen2.5-0.5B' -> 'Qwen/Qwen2.5-0.5B'; local dirs and 'org/name' pass through."""
    if os.path.isdir(name) or "/" in name:
        return name
    if name.lower().startswith("qwen"):
        return f"Qwen/{name}"
    raise ValueError(f"--model {name!r} is neither a local directory nor a hub name 'org/name'; "
                     "pass e.g. Qwen/Qwen2.5-0.5B, a local path, or --model tiny")


def load_model(name: str, device: torch.device, grad_checkpointing: bool = False):
    """from_pretrained for hub names and local paths alike. Master weights stay fp32 on every device:
    AdamW at lr 1e-6 on bf16 weights rounds most updates away (SPEC 11); bf16 comes from autocast."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    if name.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(name)):
        raise ValueError(f"--model {name!r}: no such directory; pass a directory written by save_pretrained, "
                         "a hub name like Qwen/Qwen2.5-0.5B, or --model tiny")
    path = resolve_model_name(os.path.expanduser(name))
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        # transformers 5 forces Qwen2Tokenizer for model type qwen2, which mangles a plain fast
        # tokenizer (the tiny one loses its spaces): load by the class the tokenizer was saved as.
        cls = AutoTokenizer
        cfg_file = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(cfg_file) and json.load(open(cfg_file)).get("tokenizer_class") in ("PreTrainedTokenizerFast", "TokenizersBackend"):
            cls = PreTrainedTokenizerFast
        tokenizer = cls.from_pretrained(path, padding_side="left")
    except OSError as e:
        raise ValueError(f"could not load model {path!r} ({str(e).splitlines()[0]}). Without network access, "
                         "pass a local directory holding a saved model (--model /path/to/model) or use --model tiny") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Dropout off for good: pi_old (no-grad pass) and pi_theta (training pass) must be the same function,
    # or the first ratio would not be 1. Train mode stays on because HF gradient checkpointing needs it.
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    if hasattr(model.config, "attention_dropout"):
        model.config.attention_dropout = 0.0
    if grad_checkpointing:
        enable_checkpointing(model)
    model.config.use_cache = True
    model.train()
    return model.to(device), tokenizer


def enable_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in backward (transformers 5.2x renamed the method)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a response: the generation config may list several (Qwen instruct: 2)."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return sorted(set(ids + [tokenizer.eos_token_id]) - {None})


def autocast(device: torch.device):
    """bf16 autocast on GPU over fp32 master weights; plain fp32 on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


# -----------------------------------------------------------------------------
# Rollouts: HF generate, left-padded, KV cache on, temperature 1.0 / top_p 1.0


@dataclass
class Group:
    """One prompt and its N rollouts: the unit the zero-gradient filter keeps or drops."""
    task: int
    prompt_ids: list[int]
    response: torch.Tensor     # (N, T) sampled token ids, pad after the first EOS
    mask: torch.Tensor         # (N, T) response_mask: up to and including the first EOS
    rewards: torch.Tensor      # (N,) 1.0 / 0.1 / 0.0


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (ids, attention_mask), both (R, L), padded on the left."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, L - len(s):] = torch.tensor(s, dtype=torch.long)
        att[i, L - len(s):] = 1
    return ids, att


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[list[int]], n: int, cfg: Config, eos_ids: list[int],
             max_new_tokens: int, **overrides: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n sampled responses for each prompt -> [(tokens (n, T), mask (n, T))] per prompt, on CPU.

    Prompts go through generate() in chunks of cfg.gen_batch_size rows. Each prompt is prefilled once
    and its n rows share that KV cache (generate()'s num_return_sequences would prefill it n times).
    generate() fills every unset field of our GenerationConfig from the model's own (an instruct model's
    repetition_penalty 1.05, top_k 20...), which would make the sampling distribution differ from the
    one the loss assumes, so the model's config is swapped for a neutral one during the call.
    `overrides` go into that GenerationConfig (the W1 benchmark suppresses EOS to fix lengths).
    """
    from transformers import GenerationConfig

    gen_cfg = GenerationConfig(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0,
                               max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=eos_ids, bos_token_id=None, **overrides)
    device = next(model.parameters()).device
    per_call = max(1, cfg.gen_batch_size // n)
    out = []
    was_training, model_gen_cfg = model.training, model.generation_config
    model.eval()  # the KV cache is on (use_cache=True)
    model.generation_config = GenerationConfig(pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids)
    try:
        for i in range(0, len(prompts), per_call):
            ids, att = (t.to(device) for t in left_pad(prompts[i:i + per_call], tokenizer.pad_token_id))  # (U, P)
            rows = torch.arange(len(ids), device=device).repeat_interleave(n)    # (U*n,) grouped by prompt
            cache = {}
            with autocast(device):
                if n > 1 and ids.shape[1] > 1:  # all but the last prompt token; generate() runs that one
                    cache = {_cache_kwarg(model): prompt_cache(model, ids[:, :-1], att[:, :-1], rows)[0]}
                seq = model.generate(input_ids=ids[rows], attention_mask=att[rows], generation_config=gen_cfg, **cache)
            resp = seq[:, ids.shape[1]:].cpu()                      # (U*n, T)
            mask = response_mask(resp, eos_ids)
            out += [(resp[j * n:(j + 1) * n], mask[j * n:(j + 1) * n]) for j in range(len(ids))]
    finally:
        model.train(was_training)
        model.generation_config = model_gen_cfg
    return out


def prompt_cache(model, ids: torch.Tensor, att: torch.Tensor, rows: torch.Tensor):
    """Run U left-padded prompts (U, P) once -> (KV cache of R = len(rows) rows, row r holding prompt
    rows[r]; final hidden states (U, P, H)). Positions are cumsum(att) - 1, as generate() builds them,
    so a response continued from this cache sees exactly what a full pass over [prompt | response] would."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    hidden = model.base_model(input_ids=ids, attention_mask=att, position_ids=(att.cumsum(dim=1) - 1).clamp(min=0),
                              use_cache=True, **{_cache_kwarg(model): cache}).last_hidden_state
    cache.reorder_cache(rows)  # (U, ...) -> (R, ...); index_select, so gradients sum back over the rows
    return cache, hidden


def policy_logprobs(model, prompts: list[list[int]], responses: torch.Tensor, pad_id: int,
                    temperature: float, share_prompts: bool = True) -> torch.Tensor:
    """log pi_theta of each response token, (R, T) float32, for R rows of [left-padded prompt | response].

    GRPO rows come N to a prompt, so each distinct prompt runs once and its KV cache is shared by its
    rows: the prompt's tokens cost 1/N of a row-by-row pass (N = 72 in Exp. 1). Position ids are
    cumsum(attention_mask) - 1, exactly as generate() builds them, so the recomputed log-probs equal
    the sampler's (the first minibatch's ratio is exactly 1). Only the hidden states of response
    positions reach the lm_head, chunk by chunk (token_logprobs): never full-vocab logits.
    """
    device = next(model.parameters()).device
    slot: dict[tuple[int, ...], int] = {}
    row_prompt = torch.tensor([slot.setdefault(tuple(p), len(slot)) for p in prompts], device=device)  # (R,)
    ids, att = (t.to(device) for t in left_pad([list(p) for p in slot], pad_id))  # (U, P) distinct prompts
    responses = responses.to(device)
    R, T = responses.shape
    # HF drops the KV cache of checkpointed layers in train mode, so there every row runs whole.
    share = share_prompts and len(slot) < R and not (model.training and _checkpointing(model))
    with autocast(device):
        if not share:
            ids, att = ids[row_prompt], att[row_prompt]
            P = ids.shape[1]
            attention = torch.cat([att, torch.ones_like(responses)], dim=1)
            hidden = model.base_model(input_ids=torch.cat([ids, responses], dim=1), attention_mask=attention,
                                      position_ids=(attention.cumsum(dim=1) - 1).clamp(min=0),
                                      use_cache=False).last_hidden_state[:, P - 1:P + T - 1]  # (R, T, H)
        else:
            cache, prompt_hidden = prompt_cache(model, ids, att, row_prompt)
            hidden = prompt_hidden[row_prompt, -1:]  # (R, 1, H): the last prompt token predicts y_0
            if T > 1:  # y_0..y_{T-2} predict y_1..y_{T-1}; y_t sits at position len(prompt) + t
                attention = torch.cat([att[row_prompt], torch.ones_like(responses[:, 1:])], dim=1)
                positions = att.sum(dim=1)[row_prompt, None] + torch.arange(T - 1, device=device)
                out = model.base_model(input_ids=responses[:, :-1], attention_mask=attention, position_ids=positions,
                                       use_cache=True, **{_cache_kwarg(model): cache})
                hidden = torch.cat([hidden, out.last_hidden_state], dim=1)  # (R, T, H)
        return token_logprobs(hidden, model.get_output_embeddings().weight, responses, temperature)


def _checkpointing(model) -> bool:
    """Whether HF gradient checkpointing is on in any layer (the flag moved between transformers versions)."""
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def _cache_kwarg(model) -> str:
    """transformers renamed forward's `past_key_values` to `cache` (5.2x); take whichever this one has."""
    return _cache_kwarg_of(type(model.base_model))


@functools.cache
def _cache_kwarg_of(cls: type) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def score(examples: list, outputs: list[tuple[torch.Tensor, torch.Tensor]], tokenizer, box_rule: str) -> list[torch.Tensor]:
    """Rewards (n,) per prompt: decode each response up to its first EOS and verify it (verify.py)."""
    from verify import reward

    rewards = []
    for ex, (resp, mask) in zip(examples, outputs):
        texts = tokenizer.batch_decode([r[m.bool()] for r, m in zip(resp, mask)], skip_special_tokens=True)
        rewards.append(torch.tensor([reward(t, ex, box_rule=box_rule) for t in texts]))
    return rewards


# -----------------------------------------------------------------------------
# The GRPO update of one step: old log-probs, minibatch updates (Eq. 13), and I_k (Eq. 8)


@dataclass
class Rows:
    """A batch of groups flattened to R = groups x N rows."""
    prompts: list[list[int]]   # R prompt id lists
    responses: torch.Tensor    # (R, T)
    mask: torch.Tensor         # (R, T)
    adv: torch.Tensor          # (R,) Eq. 11, one per response
    task: torch.Tensor         # (R,) task index


def flatten_groups(groups: list[Group], unbiased: bool, pad_id: int) -> Rows:
    T = max(g.response.shape[1] for g in groups)
    pad = lambda t, v: F.pad(t, (0, T - t.shape[1]), value=v)  # noqa: E731
    return Rows(prompts=[g.prompt_ids for g in groups for _ in range(len(g.rewards))],
                responses=torch.cat([pad(g.response, pad_id) for g in groups]),
                mask=torch.cat([pad(g.mask, 0.0) for g in groups]),
                adv=group_advantages(torch.stack([g.rewards for g in groups]), unbiased).reshape(-1),
                task=torch.tensor([g.task for g in groups for _ in range(len(g.rewards))]))


def micro_batches(idx: list[int], rows: Rows, size: int):
    """Row indices in chunks of `size`, each with T cut at its longest response (less padding)."""
    for i in range(0, len(idx), size):
        ix = idx[i:i + size]
        yield ix, max(1, int(rows.mask[ix].sum(dim=0).nonzero().max()) + 1 if rows.mask[ix].any() else 1)


def batch_logprobs(model, rows: Rows, idx: list[int], cfg: Config, pad_id: int) -> torch.Tensor:
    """No-grad log-probs of rows `idx` -> (len(idx), T) float32 on CPU, zero past each micro-batch's T.
    Filled on the model's device and copied to the host once, so the GPU never waits on the host."""
    out = torch.zeros(len(idx), rows.responses.shape[1], device=next(model.parameters()).device)
    with torch.no_grad():
        for j, (ix, t) in enumerate(micro_batches(idx, rows, cfg.micro_batch_size)):
            lp = policy_logprobs(model, [rows.prompts[i] for i in ix], rows.responses[ix, :t], pad_id, cfg.temperature)
            out[j * cfg.micro_batch_size:j * cfg.micro_batch_size + len(ix), :t] = lp.float()
    return out.cpu()


def grpo_update(model, opt, rows: Rows, idx: list[int], old_logp: torch.Tensor | None, cfg: Config,
                eps_high: float, pad_id: int) -> tuple[dict[str, float], torch.Tensor]:
    """One optimizer step on the minibatch `idx`: Eq. 13 with gradients accumulated over micro-batches.

    old_logp (len(idx), T) from the pass before the first update, or None for the first minibatch:
    then theta = theta_old, so pi_old is this forward's own log-probs, detached (saves a pass; the ratio
    is exactly 1). Returns (stats, the old log-probs used).
    """
    device = next(model.parameters()).device
    opt.zero_grad(set_to_none=True)
    # token_mean divides by the tokens of the whole minibatch, not of each micro-batch (micro == full).
    normalizer = float(rows.mask[idx].sum()) if cfg.loss_agg == "token_mean" else float(len(idx))
    # Everything below stays on the device until the end: no host sync per micro-batch, so the host
    # queues the next forward while the GPU still runs this backward.
    used_old = torch.zeros(len(idx), rows.responses.shape[1], device=device)
    sums = torch.zeros(3, device=device)   # loss, clipped tokens, ratio x tokens
    for j, (ix, t) in enumerate(micro_batches(idx, rows, cfg.micro_batch_size)):
        sl = slice(j * cfg.micro_batch_size, j * cfg.micro_batch_size + len(ix))
        logp = policy_logprobs(model, [rows.prompts[i] for i in ix], rows.responses[ix, :t], pad_id, cfg.temperature)
        old = logp.detach() if old_logp is None else old_logp[sl, :t].to(device)
        used_old[sl, :t] = old.float()
        mask = rows.mask[ix, :t].to(device)
        loss, st = grpo_loss(logp, old, rows.adv[ix].to(device), mask, cfg.eps_low, eps_high,
                             agg=cfg.loss_agg, normalizer=normalizer)
        loss.backward()
        k = float(rows.mask[ix, :t].sum())   # host-side mask: no sync
        sums += torch.stack([loss.detach().float(), st["clip_frac"] * k, st["ratio_mean"] * k])
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    n_tok = max(float(rows.mask[idx].sum()), 1.0)
    loss_sum, clip_sum, ratio_sum = sums.tolist()   # the one sync of the update
    return {"loss": loss_sum, "grad_norm": float(grad_norm), "clip_frac": clip_sum / n_tok,
            "ratio_mean": ratio_sum / n_tok}, used_old.cpu()


# -----------------------------------------------------------------------------
# Data, evaluation, checkpoints


def prepare_tasks(cfg: Config, tokenizer) -> tuple[list[str], list[tuple[list, list]], list[tuple[list, list]]]:
    """Load every task's train/test split and tokenize its prompts once. -> labels, train, test, where
    train[k] = (examples, prompt id lists). Prompts over --max-prompt-len tokens are dropped, loudly."""
    from tasks import load_task, make_prompt

    names = [t.strip() for t in cfg.tasks.split(",") if t.strip()]
    if not names:
        raise ValueError("--tasks is empty: give a comma-separated list of task names or .jsonl files")
    style = cfg.prompt_style
    if style == "auto":  # the paper's base models use the raw r1 wrapper; instruct models their template
        style = "chat" if getattr(tokenizer, "chat_template", None) else "r1"
    train, test = [], []
    for name in names:
        t0 = time.perf_counter()
        tr, te = load_task(name, n_train=cfg.n_train, n_test=cfg.eval_prompts, seed=cfg.seed)
        shown = "plain (toy)" if tr[0].verifier == "toy" else style
        print(f"task {name}: {len(tr)} train / {len(te)} test prompts ({time.perf_counter() - t0:.1f} s), prompt style {shown}")
        for split, out in ((tr, train), (te, test)):
            ids = [tokenizer(make_prompt(ex, style=style, tokenizer=tokenizer), add_special_tokens=False)["input_ids"] for ex in split]
            keep = [i for i, p in enumerate(ids) if len(p) <= cfg.max_prompt_len]
            if len(keep) < len(split):
                print(f"note: {name}: dropped {len(split) - len(keep)} of {len(split)} prompts longer than --max-prompt-len {cfg.max_prompt_len}")
            out.append(([split[i] for i in keep], [ids[i] for i in keep]))
        if len(test[-1][0]) < cfg.eval_prompts:
            raise ValueError(f"task {name}: test split has {len(test[-1][0])} usable prompts, fewer than "
                             f"--eval-prompts {cfg.eval_prompts}; lower --eval-prompts or raise --max-prompt-len")
        if not train[-1][0]:
            raise ValueError(f"task {name}: no train prompt fits --max-prompt-len {cfg.max_prompt_len}")
    labels = [tr[0].task for tr, _ in train]   # a .jsonl task is logged under its file's stem
    return labels, train, test


def evaluate(model, tokenizer, test: list[tuple[list, list]], names: list[str], cfg: Config,
             eos_ids: list[int], seed: int) -> dict[str, float]:
    """mean@k accuracy on each task's test split (k = cfg.eval_k samples at temperature 1.0; SPEC 9).
    Sampling runs on a forked RNG seeded by `seed`, so evaluating never changes the training stream."""
    device = next(model.parameters()).device
    acc = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for name, (examples, ids) in zip(names, test):
            examples, ids = examples[:cfg.eval_prompts], ids[:cfg.eval_prompts]
            outs = generate(model, tokenizer, ids, cfg.eval_k, cfg, eos_ids, cfg.max_response_len)
            rewards = score(examples, outs, tokenizer, cfg.box_rule)
            acc[name] = mean_at_k(np.stack([(r == 1.0).numpy() for r in rewards]))
    return acc


def save_checkpoint(path: str, model, tokenizer, opt, state: dict[str, Any], log_path: str) -> None:
    """Everything a resumed run needs to continue bit-for-bit: weights, tokenizer, both optimizers,
    xi, rho, the SEC state, J, the step, every RNG state, and the log so far."""
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({**state, "optimizer": opt.state_dict(), "rng": rng}, os.path.join(path, "trainer_state.pt"))
    with open(log_path) as src, open(os.path.join(path, "log.jsonl"), "w") as dst:
        dst.write(src.read())


def load_trainer_state(path: str) -> dict[str, Any]:
    f = os.path.join(path, "trainer_state.pt")
    if not os.path.isfile(f):
        raise ValueError(f"--resume {path!r} is not a checkpoint (no trainer_state.pt); pass a "
                         "checkpoint-STEP directory written by --save-every")
    return torch.load(f, weights_only=False)


# -----------------------------------------------------------------------------
# The phases of one step of Algorithm 1


def task_weights(adaptive: str | None, xi: torch.Tensor, sec_q: np.ndarray, sec_temperature: float) -> np.ndarray:
    """The distribution prompts are drawn by: softmax(xi) (IWU), SEC's Boltzmann, or uniform. -> (K,)"""
    if adaptive == "iwu":
        z = torch.softmax(xi.detach().double(), dim=0).numpy()
    elif adaptive == "sec":
        z = sec_distribution(sec_q, sec_temperature)
    else:
        z = np.full(len(xi), 1.0 / len(xi))
    return z / z.sum()


@dataclass
class RoundStats:
    """What the rounds of one step saw before filtering: J_k and the generation figures come from here."""
    correct: np.ndarray        # (K,) rollouts with reward 1.0
    total: np.ndarray          # (K,) rollouts generated
    tokens: int = 0            # response tokens generated (up to EOS)
    seconds: float = 0.0       # time in generate + score + filter


def rollout_round(model, tokenizer, train_sets, cfg: Config, rng: np.random.Generator, filter_mode: str,
                  eos_ids: list[int], stats: RoundStats) -> SampleRound:
    """The `sample_round(counts)` the samplers call (Algorithm 2, lines 5-9): draw counts[k] prompts of
    task k, generate N rollouts each in as few generate() calls as --gen-batch-size allows, score them,
    and return each task's groups that pass the zero-gradient filter."""
    K, N = len(train_sets), cfg.num_rollouts

    def sample_round(counts: np.ndarray) -> list[list[Group]]:
        t = time.perf_counter()
        picks = [(k, int(i)) for k in range(K) for i in rng.choice(len(train_sets[k][0]), size=int(counts[k]),
                                                                   replace=int(counts[k]) > len(train_sets[k][0]))]
        outs = generate(model, tokenizer, [train_sets[k][1][i] for k, i in picks], N, cfg, eos_ids, cfg.max_response_len)
        rewards = score([train_sets[k][0][i] for k, i in picks], outs, tokenizer, cfg.box_rule)
        survivors: list[list[Group]] = [[] for _ in range(K)]
        for (k, i), (resp, mask), r in zip(picks, outs, rewards):
            stats.correct[k] += float((r == 1.0).sum())
            stats.total[k] += len(r)
            stats.tokens += int(mask.sum())
            if zero_gradient_keep(r[None], filter_mode)[0]:
                survivors[k].append(Group(k, train_sets[k][1][i], resp, mask, r))
        stats.seconds += time.perf_counter() - t
        return survivors

    return sample_round


def sample_batch(sampler: str, z: np.ndarray, sample_round: SampleRound, rho: np.ndarray,
                 rng: np.random.Generator, cfg: Config) -> SampledBatch:
    """Algorithm 1, line 3, with the method's sampler (SPEC 7)."""
    if sampler == "rp":        # MT-GRPO, RPS-only
        return rp_sample(z, cfg.batch_size, sample_round, rho, rng, cfg.os_factor, cfg.max_resample_rounds,
                         cfg.acc_cap, cfg.rho_decay, cfg.inflate)
    if sampler == "dynamic":   # DAPO, IWU-only, SEC
        return dynamic_sample(z, cfg.batch_size, sample_round, rho, rng, cfg.os_factor, cfg.max_resample_rounds, cfg.rho_decay)
    # plain GRPO: B prompts by z in one round, nothing filtered
    return dynamic_sample(z, cfg.batch_size, sample_round, rho, rng, os_factor=1, max_rounds=0, rho_decay=cfg.rho_decay)


def policy_update(model, opt, groups: list[Group], cfg: Config, eps_high: float, pad_id: int, K: int,
                  measure_improvement: bool) -> tuple[dict[str, float], torch.Tensor, Rows | None]:
    """Algorithm 1, lines 4-5: minibatch GRPO updates on the batch, then I_k (Eq. 8).

    The batch is cut into minibatches of --minibatch-size prompts, one optimizer step each. pi_old of
    minibatches 2.. comes from one no-grad pass at theta_t before any update; the first minibatch is
    still at theta_t when it trains, so its own detached log-probs serve. With measure_improvement, one
    more no-grad pass at theta_t+1 gives J_GRPO,k(theta_t+1) on the same samples and the same pi_old;
    J_GRPO,k(theta_t) is the token-mean advantage (ratio 1). Returns (stats, I (K,), rows).
    """
    improvement = torch.zeros(K)
    if not groups:  # every prompt was filtered and resampling ran out: no update this step
        return {}, improvement, None
    N = len(groups[0].rewards)
    t0 = time.perf_counter()
    rows = flatten_groups(groups, cfg.adv_std == "unbiased", pad_id)
    minibatches = [list(range(g * N, min(g + cfg.minibatch_size, len(groups)) * N))
                   for g in range(0, len(groups), cfg.minibatch_size)]
    later = [i for mb in minibatches[1:] for i in mb]
    old_logp = torch.zeros_like(rows.mask)
    if later:
        old_logp[later] = batch_logprobs(model, rows, later, cfg, pad_id)
    t1 = time.perf_counter()
    stats = []
    for j, mb in enumerate(minibatches):
        st, used = grpo_update(model, opt, rows, mb, None if j == 0 else old_logp[mb], cfg, eps_high, pad_id)
        old_logp[mb] = used
        stats.append(st)
    t2 = time.perf_counter()
    if measure_improvement:
        new_logp = batch_logprobs(model, rows, list(range(len(rows.prompts))), cfg, pad_id)
        j_after = task_objectives(clipped_surrogate(new_logp, old_logp, rows.adv, cfg.eps_low, eps_high), rows.mask, rows.task, K)
        j_before = task_objectives(rows.adv[:, None].expand_as(rows.mask), rows.mask, rows.task, K)
        improvement = task_improvement(j_before, j_after, cfg.improvement_clip)
    out = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
    out.update(ratio_first_update=stats[0]["ratio_mean"], updates=len(minibatches), seconds_old_logp=t1 - t0,
               seconds_update=t2 - t1, seconds_improvement=time.perf_counter() - t2)
    return out, improvement, rows


def update_sec_values(q: np.ndarray, rows: Rows, decay: float) -> np.ndarray:
    """SEC: Q_k <- decay Q_k + (1 - decay) mean |A| of task k's trained responses (tasks in the batch)."""
    q = q.copy()
    for k in range(len(q)):
        if (rows.task == k).any():
            q[k] = decay * q[k] + (1 - decay) * float(rows.adv[rows.task == k].abs().mean())
    return q


def update_task_weights(xi: torch.Tensor, xi_opt: torch.optim.Optimizer, improvement: torch.Tensor,
                        J: torch.Tensor, cfg: Config) -> None:
    """Subroutine 1 line 5 (or Subroutine 2): one optimizer step on the logits xi, in place."""
    z = torch.softmax(xi.detach(), dim=0)
    xi.grad = (iwu_gradient(z, improvement, J, cfg.lam) if cfg.weight_update == "iwu"
               else reward_l2_gradient(z, J, xi.detach(), cfg.eta))
    xi_opt.step()


# -----------------------------------------------------------------------------
# Training loop (Algorithm 1)


def train(cfg: Config) -> dict[str, Any]:
    """Run Algorithm 1 with cfg.method's sampler and task weights. Writes cfg.out_dir/log.jsonl
    (first line: the config), checkpoints, and returns the last evaluation."""
    validate(cfg)
    md = method_defaults(cfg.method)
    eps_high = md["eps_high"] if cfg.eps_high < 0 else cfg.eps_high
    filter_mode = cfg.filter if md["filters"] else "none"
    try:
        os.makedirs(cfg.out_dir, exist_ok=True)
        log_path = os.path.join(cfg.out_dir, "log.jsonl")
        open(log_path, "a").close()
    except OSError as e:
        raise ValueError(f"--out-dir {cfg.out_dir!r} is not writable ({e.strerror}); pass a writable directory") from None
    resumed = load_trainer_state(cfg.resume) if cfg.resume else None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)  # every sampling decision (tasks, prompts, trimming)

    # Init: model, data, optimizers, task weights
    if cfg.resume:
        model, tokenizer = load_model(cfg.resume, device, cfg.grad_checkpointing)
    elif cfg.model == "tiny":
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            model, tokenizer = load_model(build_tiny_model(d, seed=cfg.seed), device, cfg.grad_checkpointing)
    else:
        model, tokenizer = load_model(cfg.model, device, cfg.grad_checkpointing)
    pad_id, eos_ids = tokenizer.pad_token_id, eos_token_ids(model, tokenizer)
    names, train_sets, test_sets = prepare_tasks(cfg, tokenizer)
    K, B, N = len(names), cfg.batch_size, cfg.num_rollouts
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    xi = torch.zeros(K, requires_grad=True)  # task-weight logits, xi_0 = 0: z_0 uniform (Alg. 1)
    xi_opt = (torch.optim.AdamW([xi], lr=cfg.xi_lr, weight_decay=cfg.xi_weight_decay) if cfg.xi_optimizer == "adamw"
              else torch.optim.SGD([xi], lr=cfg.xi_lr))
    rho = np.zeros(K)           # filter-rate estimates (Alg. 2)
    sec_q = np.zeros(K)         # SEC learning-progress values
    J = torch.zeros(K)          # last known per-task accuracy, kept for tasks not sampled in a step
    start = 0
    baseline = _last_eval(cfg.baseline_log) if cfg.baseline_log else None
    if resumed:
        opt.load_state_dict(resumed["optimizer"])
        with torch.no_grad():
            xi.copy_(resumed["xi"])
        xi_opt.load_state_dict(resumed["xi_optimizer"])
        rho, sec_q, J, start = resumed["rho"], resumed["sec_q"], resumed["J"], resumed["step"]
        rng.bit_generator.state = resumed["rng_numpy"]
        torch.set_rng_state(resumed["rng"]["torch"])
        random.setstate(resumed["rng"]["python"])
        if "cuda" in resumed["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(resumed["rng"]["cuda"])
        with open(os.path.join(cfg.resume, "log.jsonl")) as src, open(log_path, "w") as dst:
            dst.write(src.read())  # the log up to the checkpoint; this run appends the rest
    else:
        with open(log_path, "w") as f:
            f.write(json.dumps({"kind": "config", **asdict(cfg), "eps_high_used": eps_high, "filter_used": filter_mode}) + "\n")
    n_updates = math.ceil(B / cfg.minibatch_size)
    print(f"mtgrpo | method {cfg.method} | model {cfg.model} on {device} | tasks {', '.join(names)}")
    print(f"  B={B} prompts x N={N} rollouts | M_os*B={int(round(cfg.os_factor * B))} prompts per generation round"
          f" | {n_updates} minibatch update(s)/step | {cfg.gen_batch_size} rows per generate | eps_high={eps_high}"
          f" | filter={filter_mode} | log {log_path}")

    def log(rec: dict[str, Any]) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    last_eval: dict[str, Any] = {}
    for step in range(start + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        # 1) task weights: IWU's z (MT-GRPO, IWU-only), SEC's Boltzmann, or uniform
        z = task_weights(md["adaptive"], xi, sec_q, cfg.sec_temperature)
        # 2) batch construction (Alg. 1 line 3): generate, score, filter through the method's sampler
        stats = RoundStats(np.zeros(K), np.zeros(K))
        sample_round = rollout_round(model, tokenizer, train_sets, cfg, rng, filter_mode, eos_ids, stats)
        batch = sample_batch(md["sampler"], z, sample_round, rho, rng, cfg)
        rho = batch.rho
        t_sampled = time.perf_counter()
        # 3) GRPO update(s) (line 4) and the improvement I_k (line 5, Eq. 8)
        upd, improvement, rows = policy_update(model, opt, batch.groups, cfg, eps_high, pad_id, K,
                                               measure_improvement=md["adaptive"] == "iwu" and cfg.weight_update == "iwu")
        if md["adaptive"] == "sec" and rows is not None:
            sec_q = update_sec_values(sec_q, rows, cfg.sec_decay)
        t_updated = time.perf_counter()
        # 4) J_k = this step's pre-filter accuracy; z <- IWU (line 6, Subroutine 1)
        seen = stats.total > 0
        J[torch.from_numpy(seen)] = torch.from_numpy(stats.correct[seen] / stats.total[seen]).float()
        if md["adaptive"] == "iwu":
            update_task_weights(xi, xi_opt, improvement, J, cfg)
        t_end = time.perf_counter()

        # 5) log every per-step metric of SPEC 9, and one progress line
        n_groups = len(batch.groups)
        shares = np.bincount(batch.tasks, minlength=K) / max(n_groups, 1)
        acc = stats.correct / np.maximum(stats.total, 1)
        z_next = task_weights(md["adaptive"], xi, sec_q, cfg.sec_temperature)
        rec = {"kind": "train", "step": step, "z": z.tolist(), "z_next": z_next.tolist(),
               "batch_shares": shares.tolist(), "batch_groups": n_groups, "targets": batch.targets,
               "rho": rho.tolist(), "J": J.tolist(), "I": improvement.tolist(), "train_acc": acc.tolist(),
               "rounds": batch.rounds, "generated": batch.generated, "accepted": batch.accepted,
               "prompts_generated": int(sum(map(sum, batch.generated))), "prompts_used": n_groups, **upd,
               "response_len": stats.tokens / max(stats.total.sum(), 1),
               "gen_tokens_per_s": stats.tokens / max(stats.seconds, 1e-9),
               "seconds": t_end - t0, "seconds_gen": stats.seconds,
               "seconds_bookkeeping": (t_sampled - t0 - stats.seconds) + upd.get("seconds_improvement", 0.0) + (t_end - t_updated)}
        if md["adaptive"] == "sec":
            rec["sec_q"] = sec_q.tolist()
        log(rec)
        fmt = lambda v: "/".join(f"{x:.2f}" for x in v)  # noqa: E731
        print(f"step {step}/{cfg.steps} | {rec['seconds']:.1f}s | train acc worst {acc[seen].min() if seen.any() else 0:.2f} "
              f"avg {acc[seen].mean() if seen.any() else 0:.2f} | z {fmt(z)} | shares {fmt(shares)} | rounds {batch.rounds}"
              + (f" | loss {upd['loss']:.4f}" if upd else " | no group survived: no update"), flush=True)

        # 6) evaluate and save
        if step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0):
            accs = evaluate(model, tokenizer, test_sets, names, cfg, eos_ids, seed=cfg.seed + step)
            worst, avg = worst_and_average(accs)
            last_eval = {"kind": "eval", "step": step, "acc": accs, "worst": worst, "avg": avg}
            if baseline:
                last_eval["avg_rel_change"] = average_relative_change(accs, baseline)
            log(last_eval)
            print(f"eval step {step} | worst {worst:.3f} | avg {avg:.3f} | " + " ".join(f"{k} {v:.3f}" for k, v in accs.items()), flush=True)
        if step == cfg.steps or (cfg.save_every and step % cfg.save_every == 0):
            save_checkpoint(os.path.join(cfg.out_dir, f"checkpoint-{step}"), model, tokenizer, opt,
                            {"step": step, "config": asdict(cfg), "xi": xi.detach().clone(), "xi_optimizer": xi_opt.state_dict(),
                             "rho": rho, "sec_q": sec_q, "J": J.clone(), "rng_numpy": rng.bit_generator.state}, log_path)
    return last_eval


def _last_eval(path: str) -> dict[str, float]:
    """The per-task accuracies of the last evaluation in a run's log.jsonl (for --baseline-log)."""
    if not os.path.isfile(path):
        raise ValueError(f"--baseline-log {path!r}: no such file")
    evals = [r for r in map(json.loads, open(path)) if r.get("kind") == "eval"]
    if not evals:
        raise ValueError(f"--baseline-log {path!r} holds no evaluation record")
    return evals[-1]["acc"]


# -----------------------------------------------------------------------------
# CLI: every Config field is a flag; --preset fills several at once; explicit flags win


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description="Multi-Task GRPO (arXiv 2602.05547): Algorithm 1 on one device.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="tiny (CPU demo; the default with --model tiny), exp1 / exp2 (the paper's experiments)")
    defaults = Config()
    for f in fields(Config):
        flag, default = "--" + f.name.replace("_", "-"), getattr(defaults, f.name)
        if isinstance(default, bool):
            p.add_argument(flag, type=_parse_bool, default=argparse.SUPPRESS,
                           metavar="{true,false}", help=f"(default {default})")
        else:
            p.add_argument(flag, type=type(default), default=argparse.SUPPRESS, help=f"(default {default!r})")
    args = vars(p.parse_args(argv))
    preset = args.pop("preset")
    if args.get("resume"):  # continue with the checkpoint's config; explicit flags still win
        if preset:
            raise ValueError("--preset cannot be combined with --resume: a resumed run keeps its saved config "
                             "(override single settings with their flags)")
        base = load_trainer_state(args["resume"])["config"]
    else:
        base = asdict(defaults)
        if preset is None and args.get("model", defaults.model) == "tiny":
            preset = "tiny"
        base.update(PRESETS.get(preset, {}))
    base.update(args)
    return Config(**base)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
        train(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
