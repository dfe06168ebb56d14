"""
Multi-Task GRPO (MT-GRPO; Ramesh et al., arXiv 2602.05547) in one file. GRPO post-trains one policy on K tasks
at once; MT-GRPO adds task weights z = softmax(xi) that move toward tasks scoring low *and* not improving (IWU,
Subroutine 1), and a ratio-preserving sampler (Algorithm 2) so the batch left after zero-gradient filtering
has proportions z. `train()` is Algorithm 1:

    for each step t:
        batch, rho = RP_SAMPLER(z, B, N, rho, D_train)        # Algorithm 2  -> rp_sample()
        theta     <- GRPO update(s) on batch                   # Eq. 11-13    -> policy_update()
        I_k        = J_GRPO,k(theta_t+1) - J_GRPO,k(theta_t)   # Eq. 8        -> task_objectives()
        J_k        = accuracy of task k's rollouts this step
        z          = softmax(xi - beta * g(I, J))              # Subroutine 1 -> iwu_gradient()

    python mtgrpo.py --model tiny           # CPU testbed, no download: a warm-started tiny Qwen2 on toy tasks (~80 s)
    python mtgrpo.py --model Qwen2.5-0.5B   # one GPU: Countdown / Zebra / ARC-1D, medium variants
Shapes: B prompts, N rollouts per prompt, R rows (prompts x N), T tokens, H hidden, V vocab, K tasks.
"""

from __future__ import annotations

import argparse, contextlib, functools, inspect, json, math, os, re, shutil, signal, sys, tempfile, time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from models import left_pad

# --- GRPO (Appendix B, Eq. 11-13) ------------------------------------------------------------------------------------
def group_advantages(rewards: torch.Tensor, unbiased: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 11: A_i = (R_i - mean(R)) / (std(R) + eps) within each group. (B, N) -> (B, N). The paper does not
    say which std; unbiased (N - 1) is the released code's and TRL's. Example: [[1, 0]] -> [[0.7071, -0.7071]]."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must have shape (B, N) with N >= 2 rollouts per prompt, got {tuple(rewards.shape)}")
    return (rewards - rewards.mean(dim=1, keepdim=True)) / (rewards.std(dim=1, keepdim=True, unbiased=unbiased) + eps)

def zero_gradient_keep(rewards: torch.Tensor, mode: str = "strict") -> torch.Tensor:
    """The zero-gradient filter (Sec. 5), (B, N) -> keep (B,): strict (Exp. 1) drops groups with no or only correct
    responses; lenient (Exp. 2) every constant group, all-0.1 too (the released code keeps those; their A is 0)."""
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
    """1.0 up to and including the first EOS, 0.0 after, (R, T): the EOS is learned (the model must stop), what
    generate() pads after it is not, even when pad == eos. No EOS: truncated, every token counts."""
    is_eos = torch.isin(tokens, torch.tensor(eos_ids, device=tokens.device)).long()
    return (torch.cumsum(is_eos, dim=1) - is_eos == 0).float()  # no EOS strictly before this token

def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                   chunk_size: int = 2048) -> torch.Tensor:
    """log pi(y_t | x, y_<t) at the sampling temperature, (R, T) float32, from hidden (R, T, H) and the lm_head (V, H):
    log_softmax(hidden @ weight.T / T).gather(tokens) chunk by chunk, so the (R, T, V) logits (1 GB at V=151936) never exist."""
    R, T, H = hidden.shape
    h, y = hidden.reshape(R * T, H), tokens.reshape(R * T)
    def chunk_logprobs(h_c: torch.Tensor, y_c: torch.Tensor) -> torch.Tensor:
        logits = h_c @ weight.T  # (C, V) <- the big one, one chunk at a time
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature  # bf16 -> fp32
        return logits.gather(1, y_c[:, None]).squeeze(1) - torch.logsumexp(logits, dim=1)
    grad = torch.is_grad_enabled() and h.requires_grad  # then recompute each chunk in backward, not store it
    out = [checkpoint(chunk_logprobs, h[i:i + chunk_size], y[i:i + chunk_size], use_reentrant=False) if grad
           else chunk_logprobs(h[i:i + chunk_size], y[i:i + chunk_size]) for i in range(0, R * T, chunk_size)]
    return torch.cat(out).reshape(R, T)

def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float) -> torch.Tensor:
    """Eq. 13 per token, (R, T): min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), r = pi / pi_old, A (R,)."""
    ratio, a = torch.exp(logp - old_logp), adv[:, None]
    return torch.minimum(ratio * a, torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * a)

def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, eps_low: float = 0.2,
              eps_high: float = 0.28, agg: str = "token_mean", normalizer: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """-J_GRPO (Eq. 13, tau = 0 as in the paper: no KL, no reference model) of a (micro-)batch: logp, old_logp, mask
    (R, T); adv (R,). token_mean (DAPO, the paper's runs) divides the token sum by the tokens, seq_mean (GRPO) averages
    per response first; micro-batches pass their minibatch's count as `normalizer`. Stats stay tensors: no GPU sync."""
    if not (logp.shape == old_logp.shape == mask.shape and adv.shape == logp.shape[:1]):
        raise ValueError(f"shape mismatch: want (R, T) x3 and (R,), got {[tuple(t.shape) for t in (logp, old_logp, mask, adv)]}")
    term = clipped_surrogate(logp, old_logp, adv, eps_low, eps_high)
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
        ratio, a, n = torch.exp(logp - old_logp), adv[:, None], mask.sum().clamp(min=1.0)
        clipped = ((ratio < 1 - eps_low) & (a < 0)) | ((ratio > 1 + eps_high) & (a > 0))
        return loss, {"clip_frac": (clipped.float() * mask).sum() / n, "ratio_mean": (ratio * mask).sum() / n}

# --- Task weights: I_k (Eq. 8), IWU (Subroutine 1), reward-only + L2 (Subroutine 2), SEC -----------------------------
def task_objectives(surrogate: torch.Tensor, mask: torch.Tensor, task_ids: torch.Tensor, K: int, agg: str = "mean") -> torch.Tensor:
    """J_GRPO,k: the clipped surrogate (R, T) over task k's tokens -> (K,): a token mean, or each response's mean summed
    ("sum", the released code). At theta_t the ratio is 1 and the surrogate is A: J_GRPO,k(theta_t) needs no forward."""
    per_row = (surrogate * mask).sum(dim=1) / (mask.sum(dim=1).clamp(min=1.0) if agg == "sum" else 1.0)  # (R,)
    num = torch.zeros(K, dtype=per_row.dtype, device=per_row.device).index_add_(0, task_ids, per_row)
    den = torch.zeros(K, dtype=per_row.dtype, device=per_row.device).index_add_(0, task_ids, mask.sum(dim=1))
    return num if agg == "sum" else num / den.clamp(min=1.0)

def task_improvement(j_before: torch.Tensor, j_after: torch.Tensor, clip: float = 0.1) -> torch.Tensor:
    """Eq. 8: I_k = J_GRPO,k(theta_t+1) - J_GRPO,k(theta_t), clipped to [-c, c] (App. E, c = 0.1)."""
    return (j_after - j_before).clamp(-clip, clip)

def _check_distribution(z: np.ndarray | torch.Tensor, name: str = "z") -> None:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 1 or len(z) == 0 or (z < 0).any() or abs(z.sum() - 1.0) > 1e-6:
        raise ValueError(f"{name} must be a probability vector over the K tasks (non-negative, sums to 1), got {z}")

def iwu_gradient(z: torch.Tensor, improvement: torch.Tensor, reward: torch.Tensor, lam: float) -> torch.Tensor:
    """Subroutine 1, lines 3-4: s_k = I_k + lam J_k, g_k = z_k (s_k - sum_j z_j s_j). Descending (line 5) raises tasks below
    the z-weighted mean of s: low reward, little improvement, or both. z = [.5, .5], I = 0, J = [0, 1], lam = 1: g = [-.25, .25]."""
    _check_distribution(z)
    if not (z.shape == improvement.shape == reward.shape):
        raise ValueError(f"z, improvement, reward must all have shape (K,), got {[tuple(t.shape) for t in (z, improvement, reward)]}")
    s = improvement + lam * reward
    return z * (s - (z * s).sum())

def reward_l2_gradient(z: torch.Tensor, reward: torch.Tensor, xi: torch.Tensor, eta: float) -> torch.Tensor:
    """Subroutine 2 (App. F, Eq. 43-44), the ablation: g_k = z_k (J_k - sum_j z_j J_j) + eta xi_k. Reward alone
    collapses z onto the current worst task (Fig. 2); eta xi pulls xi back toward uniform."""
    _check_distribution(z)
    return z * (reward - (z * reward).sum()) + eta * xi

def sec_distribution(q: np.ndarray, temperature: float = 0.2) -> np.ndarray:
    """SEC baseline: Boltzmann over learning progress Q_k (EMA of the mean |A| of task k's groups), T = 0.2."""
    p = np.exp(np.asarray(q, dtype=np.float64) / temperature - np.max(q) / temperature)  # minus the largest: no overflow
    return p / p.sum()

def task_weights(weighting: str, xi: torch.Tensor, sec_q: np.ndarray, sec_temperature: float) -> np.ndarray:
    """The distribution z prompts are drawn by (Alg. 1 line 2): softmax(xi), SEC's, or uniform. (K,)"""
    if weighting in ("iwu", "reward_l2"):
        z = torch.softmax(xi.detach().double(), dim=0).numpy()
    else:
        z = sec_distribution(sec_q, sec_temperature) if weighting == "sec" else np.full(len(xi), 1.0 / len(xi))
    return z / z.sum()  # exactly a distribution for the multinomial draws

# --- Batch construction: the RP sampler (Algorithm 2) and the baselines' sampler -------------------------------------
# Samplers call `sample_round(counts) -> (survivors, stats)`: draw counts[k] prompts of task k, generate N rollouts
# each, score, filter; survivors[k] are task k's groups that passed, stats whatever the round logs (SampledBatch.stats).
# Samplers never see a model, so fakes test them.
@dataclass
class SampledBatch:
    groups: list[Any]           # the prompt groups to train on (at most B), in random order
    tasks: list[int]            # task index of each group
    targets: list[int]          # n_k ~ Mult(B, z), the wanted post-filter counts (RP sampler; else [])
    rho: np.ndarray             # (K,) filter-rate estimates, updated every round
    generated: list[list[int]] = field(default_factory=list)  # per round: prompts generated per task
    accepted: list[list[int]] = field(default_factory=list)   # per round: prompts surviving the filter
    stats: list[Any] = field(default_factory=list)            # per round: sample_round's stats
    rounds = property(lambda self: len(self.generated))       # generation rounds, the first included

def _check_sampler_args(z, B: int, rho, os_factor: float, max_rounds: int, acc_cap: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    z, rho = np.asarray(z, dtype=np.float64), np.asarray(rho, dtype=np.float64)
    _check_distribution(z)
    for ok, msg in ((B >= 1, f"B (batch size in prompts) must be >= 1, got {B}"),
                    (len(rho) == len(z) and ((0 <= rho) & (rho < 1)).all(), f"rho must hold K={len(z)} rates in [0, 1), got {rho}"),
                    (os_factor >= 1, f"M_os (oversampling factor) must be >= 1, got {os_factor}"),
                    (max_rounds >= 0, f"N_rs (max resampling rounds) must be >= 0, got {max_rounds}"),
                    (acc_cap >= 1, f"M_acc (inflation cap) must be >= 1, got {acc_cap}")):
        if not ok:
            raise ValueError(msg)
    return z, rho

def update_filter_rates(rho: np.ndarray, generated: np.ndarray, accepted: np.ndarray, decay: float = 0.9) -> np.ndarray:
    """rho_k <- decay rho_k + (1 - decay) (filtered / generated), for every task that generated prompts this
    round (the released code skips tasks with nothing filtered, so their rho never decays: a bug)."""
    rho, gen = rho.copy(), generated > 0
    rho[gen] = decay * rho[gen] + (1 - decay) * (1.0 - accepted[gen] / generated[gen])
    return np.minimum(rho, 1.0 - 1e-9)  # float rounding must not reach 1: m_k = 1 / (1 - rho_k)

def _generation_round(batch: SampledBatch, sample_round: Callable, counts: np.ndarray, rho_decay: float) -> list[list[Any]]:
    """Alg. 2 lines 5-9 / 16-22: one round of generate, score and filter, logged into batch, rho updated."""
    survivors, stats = sample_round(counts)
    accepted = np.array([len(s) for s in survivors])
    batch.generated.append(counts.tolist())
    batch.accepted.append(accepted.tolist())
    batch.stats.append(stats)
    batch.rho = update_filter_rates(batch.rho, counts, accepted, rho_decay)
    return survivors

def rp_sample(z: np.ndarray, B: int, sample_round: Callable, rho: np.ndarray, rng: np.random.Generator,
              os_factor: float = 3, max_rounds: int = 10, acc_cap: float = 5.0, rho_decay: float = 0.9,
              inflate: bool = True) -> SampledBatch:
    """Algorithm 2, the RP sampler: a post-filter batch of B groups whose task shares follow z. os_factor = M_os,
    max_rounds = N_rs (rounds after the first), acc_cap = M_acc; inflate=False sets m_k = 1 (Fig. 16 ablation)."""
    z, rho = _check_sampler_args(z, B, rho, os_factor, max_rounds, acc_cap)
    K, n_gen = len(z), int(round(os_factor * B))
    n = rng.multinomial(B, z)                                                    # line 1: target counts
    m = 1.0 / np.maximum(1.0 - rho, 1.0 / acc_cap) if inflate else np.ones(K)   # line 2: min(1/(1-rho), M_acc)
    batch, accepted = SampledBatch([], [], n.tolist(), rho), [[] for _ in range(K)]
    p = z * m / (z * m).sum()                                                    # line 3: zhat
    while True:
        survivors = _generation_round(batch, sample_round, rng.multinomial(n_gen, p), rho_decay)  # lines 4-9 / 15-22
        accepted = [a + s for a, s in zip(accepted, survivors)]
        deficit = np.maximum(n - np.array([len(a) for a in accepted]), 0)       # lines 10-11 / 24
        if deficit.sum() == 0 or batch.rounds > max_rounds:                      # line 13: r <= N_rs
            break
        p = deficit * m / (deficit * m).sum()                                    # line 14: deficiency-aware
    batch.groups, batch.tasks = _trim_to_targets(accepted, n, B, rng)            # lines 27-33
    return batch

def _trim_to_targets(accepted: list[list[Any]], n: np.ndarray, B: int, rng: np.random.Generator) -> tuple[list[Any], list[int]]:
    """Algorithm 2, lines 27-33: at most B accepted -> keep all (a short batch); else at most n_k random survivors of
    task k, filled up to B at random from the rest. Shuffled: each contiguous minibatch of the update mixes tasks."""
    pool = [(k, g) for k, groups in enumerate(accepted) for g in groups]
    keep = list(range(len(pool)))
    if len(pool) > B:
        keep, rest, start = [], [], 0
        for k, groups in enumerate(accepted):
            idx = start + rng.permutation(len(groups))
            keep, rest, start = keep + idx[:n[k]].tolist(), rest + idx[n[k]:].tolist(), start + len(groups)
        keep += rng.choice(rest, size=B - len(keep), replace=False).tolist()
    keep = rng.permutation(keep).tolist()
    return [pool[i][1] for i in keep], [pool[i][0] for i in keep]

def dynamic_sample(z: np.ndarray, B: int, sample_round: Callable, rho: np.ndarray, rng: np.random.Generator,
                   os_factor: float = 3, max_rounds: int = 10, rho_decay: float = 0.9) -> SampledBatch:
    """The baselines' sampler (DAPO's): M_os B prompts by z per round until B survive the filter (or N_rs more rounds
    pass); the first B. GRPO: os_factor=1, max_rounds=0, no filter. A task filtered at rate rho_k gets a share
    ~ z_k (1 - rho_k) / sum_j z_j (1 - rho_j), not z_k (Fig. 12)."""
    z, rho = _check_sampler_args(z, B, rho, os_factor, max_rounds)
    batch, kept = SampledBatch([], [], [], rho), []
    while len(kept) < B and batch.rounds <= max_rounds:
        survivors = _generation_round(batch, sample_round, rng.multinomial(int(round(os_factor * B)), z), rho_decay)
        # "The first B" in draw order: i.i.d. draws make it a random permutation of the survivors.
        round_kept = [(k, g) for k in range(len(z)) for g in survivors[k]]
        kept += [round_kept[i] for i in rng.permutation(len(round_kept))]
    batch.groups, batch.tasks = [g for _, g in kept[:B]], [k for k, _ in kept[:B]]
    return batch

# --- Config: the paper's values (App. E) ----------------------------------------------------------------------------
# Each field is a flag --field-name with its help text, `within` an interval it must lie in, `choices` its values.
def arg(default: Any, help: str, within: str = "", choices: tuple[str, ...] = (), group: str = "") -> Any:
    return field(default=default, metadata=dict(help=help, within=within, choices=choices, group=group))

@dataclass
class Config:
    model: str = arg("tiny", "hub name (Qwen2.5-0.5B = Qwen/Qwen2.5-0.5B), local dir, or tiny (the CPU testbed)", group="run")
    tasks: str = arg("countdown_medium,zebra_medium,arc1d_medium", "built-in task names or .jsonl files, comma-separated")
    steps: int = arg(200, "training steps (paper: 720)", "[1, inf)")
    seed: int = arg(0, "fixes the run: tiny model init, data, every sampling decision")
    out_dir: str = arg("out", "where log.jsonl and checkpoint-STEP/ go")
    resume: str = arg("", "a run dir (its newest complete checkpoint) or a checkpoint-STEP dir; its config comes back")
    overwrite: bool = arg(False, "clear another run's log and checkpoints from --out-dir instead of refusing to start")
    save_every: int = arg(0, "checkpoint every this many steps (0: only at the end and on Ctrl-C / SIGTERM)", "[0, inf)")
    keep_checkpoints: int = arg(2, "the newest complete checkpoints kept; older ones go once a new one is complete", "[1, inf)")
    eval_every: int = arg(25, "evaluate at step 0 and every this many steps (0: at step 0 and the end only)", "[0, inf)")
    eval_k: int = arg(8, "samples per test prompt for mean@k (paper: 8)", "[1, inf)")
    eval_prompts: int = arg(200, "test prompts per task (paper: 200)", "[1, inf)")
    n_train: int = arg(1000, "train prompts per task (paper: 1000; released data: 10000)", "[1, 10000]")
    prompt_style: str = arg("auto", "r1: the paper's wrapper; chat: template; auto: chat for instruct models", choices=("auto", "r1", "chat", "plain"))
    box_rule: str = arg("last", "the last \\boxed{}, or the last on the last line (released code)", choices=("last", "last_line"))
    sampler: str = arg("rp", "RP sampler (Alg. 2), DAPO's, or one round", choices=("rp", "dynamic", "grpo"), group="method")
    weighting: str = arg("iwu", "task weights: Subroutine 1, Subroutine 2, SEC, uniform", choices=("iwu", "reward_l2", "sec", "uniform"))
    filter: str = arg("strict", "zero-gradient filter (Exp. 1: strict, Exp. 2: lenient)", choices=("strict", "lenient", "none"))
    eps_high: float = arg(0.28, "upper clip of Eq. 13: 0.28 clip-higher (DAPO, MT-GRPO), 0.2 (GRPO)", "[0, inf)")
    batch_size: int = arg(16, "B: prompts per step after filtering (Exp. 1: 32, Exp. 2: 256)", "[1, inf)", group="rollouts")
    num_rollouts: int = arg(8, "N: responses per prompt (Exp. 1: 72, Exp. 2: 8)", "[2, inf)")
    max_prompt_len: int = arg(1024, "longer prompts are dropped at load, loudly (paper: 1024)", "[1, inf)")
    max_response_len: int = arg(1024, "new tokens per response (paper: 4096)", "[1, inf)")
    temperature: float = arg(1.0, "sampling temperature; log-probs use the same (paper: 1.0)", "(0, inf)")
    top_p: float = arg(1.0, "nucleus sampling (paper: 1.0)", "(0, 1]")
    gen_batch_size: int = arg(384, "rows (prompts x N) per generate() call; lower it if the KV cache is too big", "[1, inf)")
    minibatch_size: int = arg(4, "prompts per optimizer step (paper: B/4, i.e. 4 updates per step)", "[1, inf)", group="update")
    micro_batch_size: int = arg(8, "rows per forward/backward; gradients accumulate over a minibatch", "[1, inf)")
    lr: float = arg(1e-6, "policy AdamW learning rate (paper: 1e-6)", "(0, inf)")
    beta1: float = arg(0.9, "policy AdamW beta1 (paper: 0.9)", "[0, 1)")
    beta2: float = arg(0.99, "policy AdamW beta2 (paper: 0.99; released code: 0.999)", "[0, 1)")
    weight_decay: float = arg(0.0, "policy AdamW weight decay (paper: not stated; released code: 0.01)", "[0, inf)")
    grad_clip: float = arg(1.0, "gradient-norm clip (paper: 1.0)", "(0, inf)")
    eps_low: float = arg(0.2, "lower clip of Eq. 13 (paper: 0.2)", "[0, 1)")
    loss_agg: str = arg("token_mean", "token_mean (DAPO, the paper's runs) or seq_mean (GRPO)", choices=("token_mean", "seq_mean"))
    adv_std: str = arg("unbiased", "std of Eq. 11 (unbiased: released code, TRL)", choices=("unbiased", "population"))
    grad_checkpointing: bool = arg(False, "recompute activations in backward: less memory, ~30%% slower update")
    lam: float = arg(0.2, "lambda of s = I + lambda J (Exp. 1: 0.2, Exp. 2: 0.1-1.2)", "[0, inf)", group="task weights")
    eta: float = arg(0.0, "L2 strength of reward_l2 (paper: 1e-5, 5e-4, 1e-2)", "[0, inf)")
    xi_optimizer: str = arg("adamw", "on xi: adamw (paper), sgd (xi - beta g), adam (released Subroutine 2)", choices=("adamw", "sgd", "adam"))
    xi_lr: float = arg(0.025, "beta, the step size on xi (paper: AdamW lr 0.025)", "(0, inf)")
    xi_weight_decay: float = arg(1e-5, "AdamW weight decay on xi (Exp. 1: 1e-5, Exp. 2: 1e-4)", "[0, inf)")
    improvement_clip: float = arg(0.1, "c: I_k is clipped to [-c, c] (Exp. 1: 0.1, Exp. 2: 0.2)", "(0, inf)")
    improvement_agg: str = arg("mean", "I_k a token mean (paper) or a sum over responses (released code: lambda's scale)", choices=("mean", "sum"))
    os_factor: float = arg(3.0, "M_os: a round generates M_os B prompts (paper: 3)", "[1, inf)", group="RP sampler")
    max_resample_rounds: int = arg(10, "N_rs: rounds after the first (Exp. 1: 10, Exp. 2: 2); caps DAPO's too", "[0, inf)")
    acc_cap: float = arg(5.0, "M_acc: cap of the inflation m_k = 1/(1 - rho_k) (paper: 5)", "[1, inf)")
    rho_decay: float = arg(0.9, "EMA decay of the filter-rate estimates rho", "[0, 1)")
    inflate: bool = arg(True, "acceptance-aware inflation m_k (false: m_k = 1, the Fig. 16 ablation)")
    sec_temperature: float = arg(0.2, "Boltzmann temperature over learning progress (SEC: 0.2)", "(0, inf)", group="SEC")
    sec_decay: float = arg(0.5, "EMA decay of SEC's mean |advantage| per task", "[0, 1)")

METHODS: dict[str, dict[str, Any]] = {  # Sec. 6: each method as Config fields
    "mtgrpo": dict(sampler="rp", weighting="iwu", eps_high=0.28),
    "grpo":   dict(sampler="grpo", weighting="uniform", filter="none", eps_high=0.2),
    "dapo":   dict(sampler="dynamic", weighting="uniform", eps_high=0.28),
    "iwu":    dict(sampler="dynamic", weighting="iwu", eps_high=0.28),    # IWU only: no ratio preservation
    "rps":    dict(sampler="rp", weighting="uniform", eps_high=0.28),     # RP sampler only: z uniform
    "sec":    dict(sampler="dynamic", weighting="sec", eps_high=0.28),
}

PRESETS: dict[str, dict[str, Any]] = {  # tiny: the CPU testbed (default with --model tiny); exp1/2: the paper's (App. E)
    "tiny": dict(tasks="toy_copy,toy_next,toy_first", steps=100, eval_every=20, eval_k=8, eval_prompts=200, n_train=1000, batch_size=16,
                 num_rollouts=8, max_prompt_len=32, max_response_len=4, gen_batch_size=512, minibatch_size=16, micro_batch_size=128,
                 lr=1e-3, max_resample_rounds=3),
    "exp1": dict(tasks="countdown_medium,zebra_medium,arc1d_medium", steps=720, batch_size=32, num_rollouts=72, minibatch_size=8,
                 max_prompt_len=1024, max_response_len=4096, filter="strict", lam=0.2, max_resample_rounds=10, xi_weight_decay=1e-5,
                 improvement_clip=0.1, prompt_style="r1"),
    "exp2": dict(tasks=",".join(f"{t}_{d}" for t in ("countdown", "zebra", "arc1d") for d in ("easy", "medium", "hard")),
                 steps=720, batch_size=256, num_rollouts=8, minibatch_size=64, max_prompt_len=1024, max_response_len=4096,
                 filter="lenient", lam=1.2, max_resample_rounds=2, xi_weight_decay=1e-4, improvement_clip=0.2, prompt_style="r1"),
}

# --- Rollouts: HF generate, left-padded, KV cache on, temperature 1.0 / top_p 1.0 (App. E) ---------------------------
@dataclass
class Group:  # one prompt and its N rollouts: the unit the zero-gradient filter keeps or drops
    task: int
    prompt_ids: list[int]
    response: torch.Tensor     # (N, T) sampled token ids, pad after the first EOS
    mask: torch.Tensor         # (N, T) response_mask: up to and including the first EOS
    rewards: torch.Tensor      # (N,) 1.0 / 0.1 / 0.0

def kv_cache(model):
    """An empty KV cache that keeps keys in the values' dtype. Under bf16 autocast RoPE's fp32 cos/sin make the keys fp32
    next to bf16 values (1.5x the cache); attention casts both to bf16 anyway, so no result changes."""
    from transformers import DynamicCache
    class SameDtypeCache(DynamicCache):
        def update(self, keys, values, *args, **kwargs):
            return super().update(keys.to(values.dtype), values, *args, **kwargs)
    return SameDtypeCache(config=model.config)

@torch.inference_mode()
def generate(model, prompts: list[list[int]], n: int, *, max_new_tokens: int, pad_id: int, eos_ids: list[int],
             temperature: float = 1.0, top_p: float = 1.0, gen_batch_size: int = 384) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n sampled responses per prompt -> [(tokens (n, T), mask (n, T))], on the CPU. HF would fill unset fields from
    the model's generation_config (repetition_penalty...) and sample another distribution: a neutral one stands in."""
    from transformers import GenerationConfig
    gen_cfg = GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens,
                               pad_token_id=pad_id, eos_token_id=eos_ids, bos_token_id=None)
    device, per_call, out = next(model.parameters()).device, max(1, gen_batch_size // n), []
    was_training, model_gen_cfg = model.training, model.generation_config
    model.eval()  # KV cache on (use_cache=True)
    model.generation_config = GenerationConfig(pad_token_id=pad_id, eos_token_id=eos_ids)
    try:
        for i in range(0, len(prompts), per_call):
            ids, att = (t.to(device) for t in left_pad(prompts[i:i + per_call], pad_id))  # (U, P)
            rows = torch.arange(len(ids), device=device).repeat_interleave(n)               # (U*n,) by prompt
            with autocast(device):
                cache = shared_prefill(model, ids, att, rows)  # the prompts' KV cache (a speed-up, below) or a kv_cache()
                seq = model.generate(input_ids=ids[rows], attention_mask=att[rows], generation_config=gen_cfg, **cache)
            resp = seq[:, ids.shape[1]:].cpu()                                              # (U*n, T)
            mask = response_mask(resp, eos_ids)
            out += [(resp[j * n:(j + 1) * n], mask[j * n:(j + 1) * n]) for j in range(len(ids))]
    finally:
        model.train(was_training)
        model.generation_config = model_gen_cfg
    return out

def policy_logprobs(model, prompts: list[list[int]], responses: torch.Tensor, pad_id: int, temperature: float = 1.0) -> torch.Tensor:
    """log pi_theta of each response token, (R, T) float32, by one forward over [left-padded prompt | response] with
    position ids as generate() builds them: the sampler's own log-probs, so the first ratio is exactly 1."""
    device = next(model.parameters()).device
    ids, att = (t.to(device) for t in left_pad(prompts, pad_id))
    responses = responses.to(device)
    P, T = ids.shape[1], responses.shape[1]
    attention = torch.cat([att, torch.ones_like(responses)], dim=1)
    with autocast(device):
        hidden = model.base_model(input_ids=torch.cat([ids, responses], dim=1), attention_mask=attention,
                                  position_ids=(attention.cumsum(dim=1) - 1).clamp(min=0),
                                  use_cache=False).last_hidden_state[:, P - 1:P + T - 1]  # (R, T, H)
        return token_logprobs(hidden, model.get_output_embeddings().weight, responses, temperature)

# --- The GRPO update of one step: old log-probs, minibatch updates (Eq. 13), I_k (Eq. 8) -----------------------------
# These take `logprobs(prompts, responses) -> (R, T)`: policy_logprobs bound to a model, or any function like it.
@dataclass
class Rows:  # a batch of groups flattened to R = groups x N rows
    prompts: list[list[int]]   # R prompt id lists
    responses: torch.Tensor    # (R, T)
    mask: torch.Tensor         # (R, T)
    adv: torch.Tensor          # (R,) Eq. 11, one per response
    task: torch.Tensor         # (R,) task index

def flatten_groups(groups: list[Group], unbiased: bool, pad_id: int) -> Rows:
    T = max(g.response.shape[1] for g in groups)
    pad = lambda t, v: F.pad(t, (0, T - t.shape[1]), value=v)  # noqa: E731
    return Rows(prompts=[g.prompt_ids for g in groups for _ in range(len(g.rewards))],
                responses=torch.cat([pad(g.response, pad_id) for g in groups]), mask=torch.cat([pad(g.mask, 0.0) for g in groups]),
                adv=group_advantages(torch.stack([g.rewards for g in groups]), unbiased).reshape(-1),
                task=torch.tensor([g.task for g in groups for _ in range(len(g.rewards))]))

def chunks(idx: list[int], size: int) -> list[list[int]]:
    return [idx[i:i + size] for i in range(0, len(idx), size)]

def used_len(mask: torch.Tensor) -> int:
    """Tokens up to the last unmasked one: a micro-batch's T is cut there (less padding to run)."""
    return int(mask.sum(dim=0).nonzero().max()) + 1 if mask.any() else 1

def batch_logprobs(logprobs: Callable, rows: Rows, idx: list[int], micro_batch_size: int) -> torch.Tensor:
    """No-grad log-probs of rows idx -> (len(idx), T) float32 on the CPU, zero past each micro-batch's T."""
    T, out = rows.responses.shape[1], []
    with torch.no_grad():
        for ix in chunks(idx, micro_batch_size):
            t = used_len(rows.mask[ix])
            out.append(F.pad(logprobs([rows.prompts[i] for i in ix], rows.responses[ix, :t]).float(), (0, T - t)))
    return torch.cat(out).cpu() if out else torch.zeros(0, T)  # one copy to the host, not one per micro-batch

def grpo_update(logprobs: Callable, opt: torch.optim.Optimizer, rows: Rows, idx: list[int], old_logp: torch.Tensor | None,
                micro_batch_size: int = 8, eps_low: float = 0.2, eps_high: float = 0.28, loss_agg: str = "token_mean",
                grad_clip: float = 1.0) -> tuple[dict[str, float], torch.Tensor]:
    """One optimizer step on minibatch idx (Eq. 13), over micro-batches. old_logp (len(idx), T), or None while theta =
    theta_old (first minibatch): then this forward's own log-probs, detached, are pi_old. -> (stats, old log-probs)"""
    T, used_old, sums = rows.responses.shape[1], [], None
    # token_mean divides by the tokens of the whole minibatch, not of each micro-batch (tested: split == full)
    n_tok = max(float(rows.mask[idx].sum()), 1.0)
    normalizer = n_tok if loss_agg == "token_mean" else float(len(idx))
    for j, ix in enumerate(chunks(idx, micro_batch_size)):
        t, start = used_len(rows.mask[ix]), j * micro_batch_size
        logp = logprobs([rows.prompts[i] for i in ix], rows.responses[ix, :t])
        old = logp.detach() if old_logp is None else old_logp[start:start + len(ix), :t].to(logp.device)
        used_old.append(F.pad(old.float(), (0, T - t)))
        loss, st = grpo_loss(logp, old, rows.adv[ix].to(logp.device), rows.mask[ix, :t].to(logp.device),
                             eps_low, eps_high, agg=loss_agg, normalizer=normalizer)
        loss.backward()
        k = float(rows.mask[ix, :t].sum())  # host-side mask, so no sync: stats stay on the device until the end
        part = torch.stack([loss.detach().float(), st["clip_frac"] * k, st["ratio_mean"] * k])
        sums = part if sums is None else sums + part
    grad_norm = torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)  # free the gradients now, not after the I_k pass and the next generation
    loss_sum, clip_sum, ratio_sum = sums.tolist()  # the one host sync of the update
    return {"loss": loss_sum, "grad_norm": float(grad_norm), "clip_frac": clip_sum / n_tok,
            "ratio_mean": ratio_sum / n_tok}, torch.cat(used_old).cpu()

def policy_update(logprobs: Callable, opt: torch.optim.Optimizer, groups: list[Group], K: int, *, pad_id: int,
                  minibatch_size: int, micro_batch_size: int, eps_low: float, eps_high: float, loss_agg: str, grad_clip: float,
                  unbiased: bool, improvement_clip: float, measure_improvement: bool, improvement_agg: str) -> tuple[dict, torch.Tensor, Rows | None]:
    """Algorithm 1, lines 4-5: minibatch updates, then I_k (Eq. 8) -> (stats, I (K,), rows). pi_old of minibatches 2..
    is one no-grad pass at theta_t; one more at theta_t+1 gives J_GRPO,k(theta_t+1) on the same samples and pi_old."""
    improvement = torch.zeros(K)
    if not groups:  # every prompt was filtered and resampling ran out: no update this step
        return {}, improvement, None
    t0, rows = time.perf_counter(), flatten_groups(groups, unbiased, pad_id)
    minibatches = chunks(list(range(len(rows.prompts))), minibatch_size * len(groups[0].rewards))
    later, old_logp = [i for mb in minibatches[1:] for i in mb], torch.zeros_like(rows.mask)
    old_logp[later] = batch_logprobs(logprobs, rows, later, micro_batch_size)  # none when there is one minibatch
    t1, stats = time.perf_counter(), []
    for j, mb in enumerate(minibatches):
        st, old_logp[mb] = grpo_update(logprobs, opt, rows, mb, None if j == 0 else old_logp[mb], micro_batch_size,
                                       eps_low, eps_high, loss_agg, grad_clip)
        stats.append(st)
    t2 = time.perf_counter()
    if measure_improvement:
        new_logp = batch_logprobs(logprobs, rows, list(range(len(rows.prompts))), micro_batch_size)
        j_after = task_objectives(clipped_surrogate(new_logp, old_logp, rows.adv, eps_low, eps_high), rows.mask, rows.task, K, improvement_agg)
        j_before = task_objectives(rows.adv[:, None].expand_as(rows.mask), rows.mask, rows.task, K, improvement_agg)  # ratio 1: A
        improvement = task_improvement(j_before, j_after, improvement_clip)
    out = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
    out.update(ratio_first_update=stats[0]["ratio_mean"], updates=len(minibatches), seconds_old_logp=t1 - t0,
               seconds_update=t2 - t1, seconds_improvement=time.perf_counter() - t2)
    return out, improvement, rows

def xi_optimizer(xi: torch.Tensor, kind: str, lr: float, weight_decay: float, weighting: str, eta: float) -> torch.optim.Optimizer:
    """The optimizer on xi: AdamW (paper), Adam or SGD. Subroutine 2's eta xi is its weight decay (SGD: none otherwise)."""
    decay = eta if weighting == "reward_l2" else 0.0 if kind == "sgd" else weight_decay
    return dict(adamw=torch.optim.AdamW, adam=torch.optim.Adam, sgd=torch.optim.SGD)[kind]([xi], lr, weight_decay=decay)

def update_task_weights(xi: torch.Tensor, xi_opt: torch.optim.Optimizer, improvement: torch.Tensor, J: torch.Tensor,
                        weighting: str, lam: float) -> None:
    """Subroutine 1, line 5 (or Subroutine 2 on lam J, whose eta xi is xi_opt's weight decay): one step on xi, in place."""
    z = torch.softmax(xi.detach(), dim=0)
    xi.grad = iwu_gradient(z, improvement, J, lam) if weighting == "iwu" else reward_l2_gradient(z, lam * J, xi.detach(), 0.0)
    xi_opt.step()

def update_sec_values(q: np.ndarray, rows: Rows, decay: float) -> np.ndarray:
    """SEC: Q_k <- decay Q_k + (1 - decay) mean |A| of task k's trained responses (0 for a task not in the batch)."""
    progress = [float(rows.adv[rows.task == k].abs().mean()) if (rows.task == k).any() else 0.0 for k in range(len(q))]
    return decay * q + (1 - decay) * np.array(progress)

# --- Training loop (Algorithm 1) -------------------------------------------------------------------------------------
def rollout_round(counts: np.ndarray, data: list[tuple[list, list]], sample: Callable, score: Callable, N: int,
                  filter_mode: str, rng: np.random.Generator, used: list[set]) -> tuple[list[list[Group]], dict[str, Any]]:
    """Alg. 2 lines 5-9, the samplers' sample_round: draw, sample N each, score, filter; stats are from before the filter."""
    t, K, picks = time.perf_counter(), len(data), []
    for k in range(K):  # without replacement within a step (`used`: its earlier rounds), as the released code draws
        free = [i for i in range(len(data[k][0])) if i not in used[k]]
        free = free if len(free) >= counts[k] else list(range(len(data[k][0])))  # a small task set runs out: reuse
        idx = rng.choice(free, size=int(counts[k]), replace=len(free) < counts[k]).tolist()
        used[k].update(idx)
        picks += [(k, i) for i in idx]
    outs = sample([data[k][1][i] for k, i in picks], N)
    rewards = score([data[k][0][i] for k, i in picks], outs)
    survivors, stats = [[] for _ in range(K)], dict(correct=np.zeros(K), total=np.zeros(K), reward=0.0, tokens=0)
    for (k, i), (resp, mask), r in zip(picks, outs, rewards):
        stats["correct"][k] += float((r == 1.0).sum())  # rollouts with reward 1.0, per task
        stats["total"][k] += len(r)
        stats["reward"] += float(r.sum())
        stats["tokens"] += int(mask.sum())               # response tokens up to EOS
        if zero_gradient_keep(r[None], filter_mode)[0]:
            survivors[k].append(Group(k, data[k][1][i], resp, mask, r))
    return survivors, {**stats, "seconds": time.perf_counter() - t}

@dataclass
class LoopState:  # what Algorithm 1 carries from one step to the next besides theta and the optimizers
    xi: torch.Tensor           # (K,) task-weight logits, z = softmax(xi); xi_0 = 0 (uniform)
    rho: np.ndarray            # (K,) filter-rate estimates (Alg. 2)
    J: torch.Tensor            # (K,) last known accuracy per task (kept for tasks not sampled in a step)
    sec_q: np.ndarray          # (K,) SEC learning progress
    step: int = 0              # steps done

def train(cfg: Config, stop: dict[str, int] | None = None) -> dict[str, Any]:
    """Algorithm 1 with cfg's sampler and task weights. Writes out_dir/log.jsonl and checkpoints; -> the last eval."""
    from models import load_model, prompt_style, stop_token_ids, tokenize_tasks
    from tasks import load_tasks
    from verify import score
    validate(cfg)  # every input check comes before the model loads, and a failed start leaves no files
    ckpt, saved = read_checkpoint(cfg.resume) if cfg.resume else ("", {})
    if saved and saved["state"]["step"] >= cfg.steps:
        print(f"{ckpt} is at step {saved['state']['step']} of --steps {cfg.steps}: the run is finished (raise --steps to go on)")
        return {}
    log_path, loaded = prepare_out_dir(cfg.out_dir, cfg.overwrite, ckpt), load_tasks(cfg.tasks, cfg.n_train, cfg.eval_prompts, cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)  # every sampling decision: tasks, prompts, trimming
    model, tokenizer = load_model(ckpt or cfg.model, device, cfg.grad_checkpointing, seed=cfg.seed)
    style = prompt_style(cfg.prompt_style, model, tokenizer)  # auto: the chat template for instruct models, else r1
    pad_id, eos_ids = tokenizer.pad_token_id, stop_token_ids(model, tokenizer, style)
    names, train_sets, test_sets = tokenize_tasks(loaded, tokenizer, cfg.eval_prompts, cfg.max_prompt_len, style)
    K, B, N = len(names), cfg.batch_size, cfg.num_rollouts
    method = next((m for m, f in METHODS.items() if all(getattr(cfg, k) == v for k, v in f.items())), "custom")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    state = LoopState(xi=torch.zeros(K, requires_grad=True), rho=np.zeros(K), J=torch.zeros(K), sec_q=np.zeros(K))
    xi_opt = xi_optimizer(state.xi, cfg.xi_optimizer, cfg.xi_lr, cfg.xi_weight_decay, cfg.weighting, cfg.eta)
    if saved:
        load_checkpoint(ckpt, saved, opt, xi_opt, state, rng, log_path)
    else:
        log(log_path, {"kind": "config", "method": method, **asdict(cfg)})
    sample = functools.partial(generate, model, max_new_tokens=cfg.max_response_len, pad_id=pad_id, eos_ids=eos_ids,
                               temperature=cfg.temperature, top_p=cfg.top_p, gen_batch_size=cfg.gen_batch_size)
    score_ = functools.partial(score, tokenizer=tokenizer, box_rule=cfg.box_rule)
    logprobs = functools.partial(shared_prompt_logprobs, model, pad_id=pad_id, temperature=cfg.temperature)
    print(f"mtgrpo | {method} | {cfg.model} on {device} | {', '.join(names)}\n  B={B} prompts x N={N} | M_os*B="
          f"{int(round(cfg.os_factor * B))} per round | {math.ceil(B / cfg.minibatch_size)} updates/step | {style} prompts | log {log_path}")

    last_eval, stop, t_start, first = {}, stop if stop is not None else {}, time.perf_counter(), state.step
    if first == 0:  # step 0, before any update: every curve and every "start vs end" comes from the log itself
        log(log_path, evaluate(sample, score_, test_sets, names, cfg.eval_k, seed=cfg.seed, step=0))
    for step in range(state.step + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        # 1) task weights z (line 2): IWU's softmax(xi), SEC's Boltzmann, or uniform
        z = task_weights(cfg.weighting, state.xi, state.sec_q, cfg.sec_temperature)
        sample_round = functools.partial(rollout_round, data=train_sets, sample=sample, score=score_, N=N, filter_mode=cfg.filter,
                                         rng=rng, used=[set() for _ in range(K)])
        # 2) the batch (line 3): generate, score and filter through the method's sampler
        if cfg.sampler == "rp":
            batch = rp_sample(z, B, sample_round, state.rho, rng, cfg.os_factor, cfg.max_resample_rounds, cfg.acc_cap,
                              cfg.rho_decay, cfg.inflate)
        else:  # DAPO's dynamic sampling; plain GRPO is one round of B prompts
            os_factor, max_rounds = (cfg.os_factor, cfg.max_resample_rounds) if cfg.sampler == "dynamic" else (1, 0)
            batch = dynamic_sample(z, B, sample_round, state.rho, rng, os_factor, max_rounds, cfg.rho_decay)
        state.rho = batch.rho
        # 3) GRPO updates (line 4) and the improvement I_k (line 5, Eq. 8)
        upd, improvement, rows = policy_update(
            logprobs, opt, batch.groups, K, pad_id=pad_id, minibatch_size=cfg.minibatch_size, micro_batch_size=cfg.micro_batch_size,
            eps_low=cfg.eps_low, eps_high=cfg.eps_high, loss_agg=cfg.loss_agg, grad_clip=cfg.grad_clip,
            unbiased=cfg.adv_std == "unbiased", improvement_clip=cfg.improvement_clip, measure_improvement=cfg.weighting == "iwu",
            improvement_agg=cfg.improvement_agg)
        if cfg.weighting == "sec" and rows is not None:
            state.sec_q = update_sec_values(state.sec_q, rows, cfg.sec_decay)
        # 4) J_k = this step's pre-filter accuracy, then z <- IWU (line 6, Subroutine 1)
        seen = {k: sum(s[k] for s in batch.stats) for k in batch.stats[0]}  # over the step's rounds
        sampled = seen["total"] > 0
        state.J[torch.from_numpy(sampled)] = torch.from_numpy(seen["correct"][sampled] / seen["total"][sampled]).float()
        if cfg.weighting in ("iwu", "reward_l2"):
            update_task_weights(state.xi, xi_opt, improvement, state.J, cfg.weighting, cfg.lam)
        state.step = step
        # 5) log, evaluate, save
        z_next = task_weights(cfg.weighting, state.xi, state.sec_q, cfg.sec_temperature)
        rec = step_record(z, z_next, batch, seen, upd, state, improvement, time.perf_counter() - t0, sec=cfg.weighting == "sec")
        log(log_path, rec)
        print(progress_line(rec, cfg.steps, sampled, (time.perf_counter() - t_start) / (step - first) * (cfg.steps - step)), flush=True)
        if step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0):
            last_eval = evaluate(sample, score_, test_sets, names, cfg.eval_k, seed=cfg.seed + step, step=step)
            log(log_path, last_eval)
        if step == cfg.steps or stop or (cfg.save_every and step % cfg.save_every == 0):
            ckpt = save_checkpoint(cfg.out_dir, model, tokenizer, opt, xi_opt, state, rng, asdict(cfg), log_path, cfg.keep_checkpoints)
        if stop:  # Ctrl-C or SIGTERM (catch_signals): the step is done and saved
            print(f"stopped after step {step}: checkpoint {ckpt}\nresume with: python mtgrpo.py --resume {cfg.out_dir}", flush=True)
            raise SystemExit(128 + stop["signum"])
    print(f"\ndone: {cfg.steps - first} steps in {(time.perf_counter() - t_start) / 60:.1f} min\n{summary(log_path, cfg.eval_k, cfg.eval_prompts)}"
          f"\n  checkpoint {ckpt}; train on: python mtgrpo.py --resume {cfg.out_dir} --steps MORE\n  log {log_path}; plots: "
          f"python bench/plot.py {cfg.out_dir} --out {cfg.out_dir}/plots", flush=True)
    return last_eval

# --- Logging and evaluation (Sec. 6 metrics) -------------------------------------------------------------------------
def log(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")

def step_record(z: np.ndarray, z_next: np.ndarray, batch: SampledBatch, seen: dict, upd: dict, state: LoopState,
                improvement: torch.Tensor, seconds: float, sec: bool) -> dict[str, Any]:
    """One step's JSONL record: z, realized shares, rho, J, I, rounds, prompts generated vs used, timings."""
    used = len(batch.groups)
    return {"kind": "train", "step": state.step, "z": z.tolist(), "z_next": z_next.tolist(),
            "batch_shares": (np.bincount(batch.tasks, minlength=len(z)) / max(used, 1)).tolist(), "batch_groups": used,
            "targets": batch.targets, "rho": batch.rho.tolist(), "J": state.J.tolist(), "I": improvement.tolist(),
            "train_acc": (seen["correct"] / np.maximum(seen["total"], 1)).tolist(), "rounds": batch.rounds,
            "generated": batch.generated, "accepted": batch.accepted, "prompts_generated": int(sum(map(sum, batch.generated))),
            "prompts_used": used, **upd, "reward_mean": seen["reward"] / max(seen["total"].sum(), 1),
            "response_len": seen["tokens"] / max(seen["total"].sum(), 1), "seconds": seconds, "seconds_gen": seen["seconds"],
            **({"sec_q": state.sec_q.tolist()} if sec else {})}

def progress_line(rec: dict[str, Any], steps: int, sampled: np.ndarray, eta: float) -> str:
    acc, fmt = np.array(rec["train_acc"])[sampled], lambda v: "/".join(f"{x:.2f}" for x in v)  # noqa: E731
    return (f"step {rec['step']}/{steps} | {rec['seconds']:.1f}s, eta {time.strftime('%H:%M:%S', time.gmtime(eta))} | reward "
            f"{rec['reward_mean']:.3f} | train acc worst {acc.min() if len(acc) else 0:.2f} avg {acc.mean() if len(acc) else 0:.2f}"
            f" | z {fmt(rec['z'])} | shares {fmt(rec['batch_shares'])} | rounds {rec['rounds']}"
            + (f" | loss {rec['loss']:+.2e}" if "loss" in rec else " | no group survived: no update"))

def summary(log_path: str, k: int, prompts: int) -> str:
    """Each task's test accuracy at the first and the last evaluation of a log, and the noise to read them against:
    the binomial std sqrt(p (1 - p) / (prompts k)) of a mean@k, at its largest over the values shown."""
    evals = [r for r in map(json.loads, open(log_path)) if r["kind"] == "eval"]
    a, b = evals[0], evals[-1]
    rows = [(t, a["acc"][t], b["acc"][t]) for t in b["acc"]] + [("worst task", a["worst"], b["worst"]), ("average", a["avg"], b["avg"])]
    std = max(math.sqrt(p * (1 - p) / (prompts * k)) for _, *ps in rows for p in ps)
    return (f"  test accuracy, mean@{k} over {prompts} prompts per task (noise: binomial std <= {std:.3f})\n  {'':12s} step "
            f"{a['step']:<5d} step {b['step']:<5d} change\n" + "\n".join(f"  {t:12s} {x:10.3f} {y:10.3f} {y - x:+7.3f}" for t, x, y in rows))

def evaluate(sample: Callable, score: Callable, test: list, names: list[str], k: int, seed: int, step: int) -> dict[str, Any]:
    """Sec. 6's metrics -> the eval record: mean@k per task (the fraction correct over its P test prompts x k samples),
    the worst task's (the headline) and their average. Sampled on a forked RNG: evaluating never changes training."""
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(seed)
        acc = {name: float(np.mean([(r == 1.0).double().mean() for r in score(examples, sample(ids, k))]))
               for name, (examples, ids) in zip(names, test)}
    worst, avg = min(acc.values()), sum(acc.values()) / len(acc)
    print(f"eval step {step} | worst {worst:.3f} | avg {avg:.3f} | " + " ".join(f"{t} {v:.3f}" for t, v in acc.items()), flush=True)
    return {"kind": "eval", "step": step, "acc": acc, "worst": worst, "avg": avg}

# --- Machinery: precision, the output directory, checkpoints -----------------------------------------------------------
def autocast(device: torch.device):
    """bf16 autocast on GPU over fp32 master weights; on CPU whatever the caller set (fp32 unless it opened one)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

def prepare_out_dir(out_dir: str, overwrite: bool, resumed: str) -> str:
    """--out-dir, checked before anything loads: writable, holding no other run (unless --overwrite or resumed)."""
    path = os.path.join(out_dir, "log.jsonl")
    same_run = resumed and os.path.realpath(os.path.dirname(os.path.abspath(resumed))) == os.path.realpath(out_dir)
    if os.path.isfile(path) and os.path.getsize(path) and not same_run:
        if not overwrite:
            raise ValueError(f"--out-dir {out_dir} holds another run: continue it (--resume {out_dir}), or --overwrite, or another --out-dir")
        for old in (d for d in os.listdir(out_dir) if re.fullmatch(r"checkpoint-\d+(\.tmp)?", d)):
            shutil.rmtree(os.path.join(out_dir, old))
        os.remove(path)
    try:
        os.makedirs(out_dir, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()
    except OSError as e:
        raise ValueError(f"--out-dir {out_dir!r} is not writable ({e.strerror}); pass a writable directory") from None
    return path

def checkpoints(run_dir: str) -> list[str]:
    """A run's complete checkpoint-STEP directories, oldest first (a write cut short leaves only a .tmp sibling)."""
    names = [d for d in (os.listdir(run_dir) if os.path.isdir(run_dir) else []) if re.fullmatch(r"checkpoint-\d+", d)]
    return [os.path.join(run_dir, d) for d in sorted(names, key=lambda d: int(d.split("-")[1]))]

def save_checkpoint(out_dir: str, model, tokenizer, opt, xi_opt, state: LoopState, rng: np.random.Generator, config: dict,
                    log_path: str, keep: int) -> str:
    """All a resumed run needs, bit for bit. Written aside, synced and renamed: a checkpoint-STEP dir is always whole."""
    path = os.path.join(out_dir, f"checkpoint-{state.step}")
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    rngs = {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state,
            **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {})}
    loop = {"xi": state.xi.detach(), "rho": torch.from_numpy(state.rho), "J": state.J, "sec_q": torch.from_numpy(state.sec_q),
            "step": state.step}  # tensors and plain values only: the file loads with weights_only=True
    torch.save({"config": config, "state": loop, "optimizer": opt.state_dict(), "xi_optimizer": xi_opt.state_dict(), "rng": rngs},
               os.path.join(tmp, "trainer_state.pt"))
    shutil.copy(log_path, os.path.join(tmp, "log.jsonl"))
    for f in [*(os.path.join(tmp, f) for f in os.listdir(tmp)), tmp]:
        fd = os.open(f, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    for old in checkpoints(out_dir)[:-keep]:  # only now that the new one is complete
        shutil.rmtree(old)
    return path

def read_checkpoint(path: str) -> tuple[str, dict[str, Any]]:
    """--resume's checkpoint (a checkpoint-STEP dir, or a run dir's newest) -> (its dir, its state); never runs code."""
    ckpt = path if os.path.isfile(os.path.join(path, "trainer_state.pt")) else (checkpoints(path) or [path])[-1]
    if not os.path.isfile(os.path.join(ckpt, "trainer_state.pt")):
        raise ValueError(f"--resume {path!r} is not a checkpoint, nor a run directory holding one (no trainer_state.pt)")
    try:
        saved = torch.load(os.path.join(ckpt, "trainer_state.pt"), weights_only=True)
        if missing := [f for f in ("config.json", "log.jsonl") if not os.path.isfile(os.path.join(ckpt, f))]:
            raise FileNotFoundError(f"{missing[0]} is missing")
    except Exception as e:  # truncated or zero-byte file, missing pieces, a pickle that would run code
        older = [c for c in checkpoints(os.path.dirname(os.path.abspath(ckpt))) if c != os.path.abspath(ckpt)]
        raise ValueError(f"--resume: {ckpt} is damaged or unsafe to load ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:100]}); "
                         + (f"resume from {older[-1]} instead" if older else "no other checkpoint to resume from")) from None
    return ckpt, saved

def load_checkpoint(ckpt: str, saved: dict[str, Any], opt, xi_opt, state: LoopState, rng: np.random.Generator, log_path: str) -> None:
    """Restore read_checkpoint's trainer state into a fresh run, in place, and copy the checkpoint's log to log_path."""
    opt.load_state_dict(saved["optimizer"])
    xi_opt.load_state_dict(saved["xi_optimizer"])
    state.xi.detach().copy_(saved["state"]["xi"])  # in place: xi_opt holds this tensor
    state.rho, state.sec_q = saved["state"]["rho"].numpy(), saved["state"]["sec_q"].numpy()
    state.J, state.step = saved["state"]["J"], int(saved["state"]["step"])
    rng.bit_generator.state = saved["rng"]["numpy"]
    torch.set_rng_state(saved["rng"]["torch"])
    if "cuda" in saved["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    shutil.copy(os.path.join(ckpt, "log.jsonl"), log_path)  # the log so far; this run appends the rest

# --- Speed-ups: each equals the plain version above it (the tests compare them) and can be dropped ------------------
# GRPO's N rows of a group share one prompt: run it once, in generate() and in the log-prob passes, and let the rows
# continue from its KV cache (the prompt then costs 1/N; N = 72 in Exp. 1). Gradients sum back into the one pass.
def prompt_cache(model, ids: torch.Tensor, att: torch.Tensor, rows: torch.Tensor):
    """U left-padded prompts (U, P), run once -> (a KV cache whose row r holds prompt rows[r], hidden states (U, P, H))."""
    cache = kv_cache(model)
    hidden = model.base_model(input_ids=ids, attention_mask=att, position_ids=(att.cumsum(dim=1) - 1).clamp(min=0),
                              use_cache=True, **{_cache_kwarg(type(model.base_model)): cache}).last_hidden_state
    cache.reorder_cache(rows)  # (U, ...) -> (R, ...), an index_select: gradients sum back over the rows
    return cache, hidden

def shared_prefill(model, ids: torch.Tensor, att: torch.Tensor, rows: torch.Tensor) -> dict[str, Any]:
    """generate()'s cache: of all prompt tokens but the last (generate() runs it) if there is any to share, else empty."""
    share = len(rows) > len(ids) and ids.shape[1] > 1
    return {_cache_kwarg(type(model.base_model)): prompt_cache(model, ids[:, :-1], att[:, :-1], rows)[0] if share else kv_cache(model)}

def shared_prompt_logprobs(model, prompts: list[list[int]], responses: torch.Tensor, pad_id: int,
                           temperature: float = 1.0) -> torch.Tensor:
    """policy_logprobs with each distinct prompt run once. Falls back to it when every prompt is distinct, and
    under gradient checkpointing in train mode, where HF drops the KV cache of checkpointed layers."""
    slot: dict[tuple[int, ...], int] = {}
    row_prompt = [slot.setdefault(tuple(p), len(slot)) for p in prompts]
    if len(slot) == len(prompts) or (model.training and any(getattr(m, "gradient_checkpointing", False) for m in model.modules())):
        return policy_logprobs(model, prompts, responses, pad_id, temperature)
    device = next(model.parameters()).device
    row_prompt = torch.tensor(row_prompt, device=device)                           # (R,)
    ids, att = (t.to(device) for t in left_pad([list(p) for p in slot], pad_id))  # (U, P) distinct prompts
    responses, T = responses.to(device), responses.shape[1]
    with autocast(device):
        cache, prompt_hidden = prompt_cache(model, ids, att, row_prompt)
        hidden = prompt_hidden[row_prompt, -1:]  # (R, 1, H): the last prompt token predicts y_0
        if T > 1:  # y_0..y_{T-2} predict y_1..y_{T-1}; y_t sits at position len(prompt) + t
            attention = torch.cat([att[row_prompt], torch.ones_like(responses[:, 1:])], dim=1)
            positions = att.sum(dim=1)[row_prompt, None] + torch.arange(T - 1, device=device)
            out = model.base_model(input_ids=responses[:, :-1], attention_mask=attention, position_ids=positions,
                                   use_cache=True, **{_cache_kwarg(type(model.base_model)): cache})
            hidden = torch.cat([hidden, out.last_hidden_state], dim=1)  # (R, T, H)
        return token_logprobs(hidden, model.get_output_embeddings().weight, responses, temperature)

@functools.cache  # transformers 5.2x renamed forward's `past_key_values` to `cache`: take whichever this one has
def _cache_kwarg(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"

# --- CLI: every Config field is a flag; --preset and --method fill several at once; explicit flags win ---------------
def validate(cfg: Config) -> None:
    """Reject bad settings with one line naming the flag and the fix (the CLI exits with status 2)."""
    from tasks import check_task_list
    for f in fields(Config):
        flag, v, within, choices = "--" + f.name.replace("_", "-"), getattr(cfg, f.name), f.metadata["within"], f.metadata["choices"]
        if choices and v not in choices:
            raise ValueError(f"{flag} must be one of {', '.join(choices)}, got {v!r}")
        if within:
            lo, hi = (float(x) for x in within[1:-1].split(","))
            if not ((v >= lo if within[0] == "[" else v > lo) and (v <= hi if within[-1] == "]" else v < hi)):
                raise ValueError(f"{flag} must be in {within}, got {v}")
    check_task_list(cfg.tasks)
    if cfg.minibatch_size > cfg.batch_size:
        raise ValueError(f"--minibatch-size {cfg.minibatch_size} is larger than --batch-size {cfg.batch_size}; the paper uses B/4")
    if cfg.weighting == "reward_l2" and cfg.xi_optimizer == "adamw":
        raise ValueError("--weighting reward_l2 puts eta xi on the gradient: pass --xi-optimizer sgd (the paper) or adam (released code)")

def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description="Multi-Task GRPO (arXiv 2602.05547), Algorithm 1 on one device. "
                                "Explicit flags win over --method, which wins over --preset.")
    group = p.add_argument_group("run")
    group.add_argument("--preset", help="tiny (CPU demo; the default with --model tiny), exp1 or exp2 (the paper's, App. E)")
    group.add_argument("--list-tasks", action="store_true", help="print the built-in tasks and exit")
    group.add_argument("--method", help="sets the method group below: mtgrpo (default), grpo, dapo, iwu, rps, sec (Sec. 6)")
    defaults, tiny = Config(), PRESETS["tiny"]
    for f in fields(Config):
        group = p.add_argument_group(f.metadata["group"]) if f.metadata["group"] else group
        default = getattr(defaults, f.name)
        shown = f"default {default}" + (f"; with --model tiny: {tiny[f.name]}" if f.name in tiny else "")
        choices = f"; choices: {', '.join(f.metadata['choices'])}" if f.metadata["choices"] else ""
        kind = dict(action=argparse.BooleanOptionalAction) if isinstance(default, bool) else dict(type=type(default))
        group.add_argument("--" + f.name.replace("_", "-"), **kind, default=argparse.SUPPRESS, help=f"{f.metadata['help']} ({shown}{choices})")
    args = vars(p.parse_args(argv))
    preset, method = args.pop("preset"), args.pop("method")
    if args.pop("list_tasks"):
        from tasks import describe_tasks
        print(describe_tasks())
        raise SystemExit(0)
    if args.get("resume"):  # continue with the checkpoint's config; explicit flags still win
        if preset or method:
            raise ValueError("--preset and --method cannot go with --resume: a resumed run keeps its config (set single flags)")
        ckpt, saved = read_checkpoint(args["resume"])  # the run goes on in the checkpoint's own directory
        return Config(**{**saved["config"], "out_dir": os.path.dirname(os.path.abspath(ckpt)), **args})
    for flag, value, allowed in (("--preset", preset, PRESETS), ("--method", method, METHODS)):
        if value not in (None, *allowed):
            raise ValueError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")
    model = args.get("model", defaults.model)  # the tiny testbed, by name or as a directory its warm start wrote
    if preset is None and (model == "tiny" or os.path.isfile(os.path.join(model, "warm_start.json"))):
        preset = "tiny"
    return Config(**{**asdict(defaults), **PRESETS.get(preset, {}), **METHODS[method or "mtgrpo"], **args})

def catch_signals() -> dict[str, int]:
    """Ctrl-C and SIGTERM: train() saves after the current step and exits 130 / 143; a second one quits at once."""
    stop: dict[str, int] = {}
    def on_signal(signum: int, frame) -> None:
        if stop:
            os._exit(128 + signum)
        stop["signum"] = signum
        print(f"\n{signal.Signals(signum).name}: saving after this step (send it again to quit now)", file=sys.stderr, flush=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    return stop

def main(argv: list[str] | None = None, stop: dict[str, int] | None = None) -> int:
    cfg = None
    try:
        cfg = parse_args(argv)
        train(cfg, stop)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        if cfg and os.path.isdir(cfg.out_dir) and not os.listdir(cfg.out_dir):
            os.rmdir(cfg.out_dir)  # a failed start leaves nothing behind
        return 2
    return 0

if __name__ == "__main__":
    sys.exit(main(stop=catch_signals()))
