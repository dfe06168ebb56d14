"""
Multi-Task GRPO (MT-GRPO; Ramesh et al., arXiv 2602.05547) in one file. GRPO post-trains one policy on K tasks
at once; MT-GRPO adds task weights z = softmax(xi) that move toward tasks scoring low *and* not improving
(IWU, Subroutine 1), and a ratio-preserving sampler (Algorithm 2) so that the batch left after zero-gradient
filtering has proportions z. One step of Algorithm 1, as `train()` runs it (and the TRL integration too):

    z, batch = draw_batch(...)       # lines 2-3: z = softmax(xi); RP_SAMPLER(z, B, N, rho, D_train), Alg. 2
    update_accuracy(...)             # J_k: task k's accuracy over the step's rollouts (the rollouts fix it)
    policy_update(...)               # line 4: GRPO minibatch updates, Eq. 11-13
    I = objective_change(...)        # line 5: I_k = J_GRPO,k(theta_t+1) - J_GRPO,k(theta_t), Eq. 8
    update_weights(...)              # line 6: xi <- xi - beta g(I, J), Subroutine 1

The default is the paper's algorithm; --preset released runs the released code's (README: "Where we differ").
Elsewhere: the model's side (sampling, log-probs, speed-ups) in policy.py; what a run needs but a reader does
not (flags, checkpoints, signals, the log) in support.py; models.py, tasks.py, verify.py. Run it on the CPU
testbed with `python mtgrpo.py --model tiny` (no download), on one GPU with `--model Qwen2.5-0.5B`.
Shapes: B prompts, N rollouts per prompt, R rows (prompts x N), T tokens, H hidden, V vocab, K tasks.
"""

from __future__ import annotations

import functools
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

import policy
import support
import tasks
from support import arg

# --- GRPO (Appendix B, Eq. 11-13) ---------------------------------------------------------------------------
def group_advantages(rewards: torch.Tensor, unbiased: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 11: A_i = (R_i - mean(R)) / (std(R) + eps) within each group, (B, N) -> (B, N). The paper does not
    say which std; unbiased (N - 1) is the released code's and TRL's. [[1, 0]] -> [[0.7071, -0.7071]]."""
    support.check_rewards(rewards, min_rollouts=2)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std(dim=1, keepdim=True, unbiased=unbiased) + eps)

def zero_gradient_keep(rewards: torch.Tensor, mode: str = "strict") -> torch.Tensor:
    """The zero-gradient filter (Sec. 5), (B, N) -> keep (B,): strict (Exp. 1) drops groups with no or only
    correct responses; lenient (Exp. 2) every constant group, all-0.1 too (the released code keeps those;
    their A is 0)."""
    support.check_rewards(rewards)
    if mode == "strict":
        n_correct = (rewards == 1.0).sum(dim=1)
        return (n_correct > 0) & (n_correct < rewards.shape[1])
    if mode == "lenient":
        return (rewards.max(dim=1).values - rewards.min(dim=1).values) > 1e-6
    if mode == "none":
        return torch.ones(rewards.shape[0], dtype=torch.bool, device=rewards.device)
    raise ValueError(f"filter mode must be 'strict', 'lenient' or 'none', got {mode!r}")

def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, eps_low: float,
                      eps_high: float) -> torch.Tensor:
    """Eq. 13 per token, (R, T): min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), r = pi / pi_old, A (R,)."""
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None]
    return torch.minimum(ratio * a, torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * a)

def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
              eps_low: float = 0.2, eps_high: float = 0.28, agg: str = "token_mean",
              normalizer: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """-J_GRPO (Eq. 13, tau = 0 as in the paper: no KL, no reference model) of a (micro-)batch: logp,
    old_logp, mask (R, T); adv (R,). token_mean (DAPO, the paper's runs) divides the token sum by the tokens;
    seq_mean (GRPO) averages per response first. Micro-batches pass their minibatch's count as `normalizer`.
    The stats stay tensors: no GPU sync."""
    support.check_loss_shapes(logp, old_logp, adv, mask)
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
        ratio = torch.exp(logp - old_logp)
        a = adv[:, None]
        n = mask.sum().clamp(min=1.0)
        clipped = ((ratio < 1 - eps_low) & (a < 0)) | ((ratio > 1 + eps_high) & (a > 0))
        return loss, {"clip_frac": (clipped.float() * mask).sum() / n, "ratio_mean": (ratio * mask).sum() / n}

# --- Task weights: I_k (Eq. 8), IWU (Subroutine 1), reward-only + L2 (Subroutine 2), SEC --------------------
def task_objectives(surrogate: torch.Tensor, mask: torch.Tensor, task_ids: torch.Tensor, K: int,
                    agg: str = "mean") -> torch.Tensor:
    """J_GRPO,k: the clipped surrogate (R, T) over task k's tokens -> (K,): a token mean, or each response's
    mean summed ("sum", the released code). At theta_t the ratio is 1 and the surrogate is A, so
    J_GRPO,k(theta_t) needs no forward pass."""
    per_row = (surrogate * mask).sum(dim=1)  # (R,)
    if agg == "sum":
        per_row = per_row / mask.sum(dim=1).clamp(min=1.0)
    num = torch.zeros(K, dtype=per_row.dtype, device=per_row.device).index_add_(0, task_ids, per_row)
    tokens = torch.zeros_like(num).index_add_(0, task_ids, mask.sum(dim=1))
    return num if agg == "sum" else num / tokens.clamp(min=1.0)

def task_improvement(objective_before: torch.Tensor, objective_after: torch.Tensor,
                     clip: float = 0.1) -> torch.Tensor:
    """Eq. 8: I_k = J_GRPO,k(theta_t+1) - J_GRPO,k(theta_t), clipped to [-c, c] (App. E, c = 0.1)."""
    return (objective_after - objective_before).clamp(-clip, clip)

def iwu_gradient(z: torch.Tensor, improvement: torch.Tensor, accuracy: torch.Tensor,
                 lam: float) -> torch.Tensor:
    """Subroutine 1, lines 3-4: s_k = I_k + lam J_k, g_k = z_k (s_k - sum_j z_j s_j), J_k the task's accuracy.
    Descending (line 5) raises tasks below the z-weighted mean of s: low accuracy, little improvement, or
    both. Example: z = [.5, .5], I = 0, J = [0, 1], lam = 1 -> g = [-.25, .25]."""
    support.check_weight_args(z, improvement, accuracy)
    s = improvement + lam * accuracy
    return z * (s - (z * s).sum())

def reward_l2_gradient(z: torch.Tensor, accuracy: torch.Tensor, xi: torch.Tensor, eta: float) -> torch.Tensor:
    """Subroutine 2 (App. F, Eq. 43-44), the ablation: g_k = z_k (J_k - sum_j z_j J_j) + eta xi_k. Accuracy
    alone collapses z onto the current worst task (Fig. 2); eta xi pulls xi back toward uniform."""
    support.check_distribution(z)
    return z * (accuracy - (z * accuracy).sum()) + eta * xi

def sec_distribution(q: np.ndarray, temperature: float = 0.2) -> np.ndarray:
    """SEC baseline: Boltzmann over learning progress Q_k (EMA of the mean |A| of task k's groups), T 0.2."""
    q = np.asarray(q, dtype=np.float64)
    logits = q / temperature - np.max(q) / temperature  # minus the largest: no overflow
    p = np.exp(logits)
    return p / p.sum()

def task_weights(weighting: str, xi: torch.Tensor, sec_q: np.ndarray, sec_temperature: float) -> np.ndarray:
    """The distribution z that prompts are drawn by (Alg. 1 line 2): softmax(xi), SEC's, or uniform. (K,)"""
    if weighting in ("iwu", "reward_l2"):
        z = torch.softmax(xi.detach().double(), dim=0).numpy()
    elif weighting == "sec":
        z = sec_distribution(sec_q, sec_temperature)
    else:
        z = np.full(len(xi), 1.0 / len(xi))
    return z / z.sum()  # exactly a distribution for the multinomial draws

def xi_optimizer(xi: torch.Tensor, kind: str, lr: float, weight_decay: float, weighting: str,
                 eta: float) -> torch.optim.Optimizer:
    """The optimizer on xi: AdamW (paper), Adam or SGD. Subroutine 2's eta xi is its weight decay."""
    if weighting == "reward_l2":
        decay = eta
    else:
        decay = 0.0 if kind == "sgd" else weight_decay
    optimizers = dict(adamw=torch.optim.AdamW, adam=torch.optim.Adam, sgd=torch.optim.SGD)
    return optimizers[kind]([xi], lr, weight_decay=decay)

def update_task_weights(xi: torch.Tensor, xi_opt: torch.optim.Optimizer, improvement: torch.Tensor,
                        accuracy: torch.Tensor, weighting: str, lam: float) -> None:
    """Subroutine 1, line 5: one step on xi, in place. Subroutine 2 (reward_l2) uses J alone, as the paper
    writes it (no lambda); its eta xi is xi_opt's weight decay, so SGD takes xi <- xi - beta (g + eta xi)."""
    z = torch.softmax(xi.detach(), dim=0)
    if weighting == "iwu":
        xi.grad = iwu_gradient(z, improvement, accuracy, lam)
    else:
        xi.grad = reward_l2_gradient(z, accuracy, xi.detach(), 0.0)
    xi_opt.step()

def update_sec_values(q: np.ndarray, adv: torch.Tensor, task: torch.Tensor, decay: float) -> np.ndarray:
    """SEC: Q_k <- decay Q_k + (1 - decay) mean |A| of task k's trained responses, adv and task (R,); a task
    not in the batch counts 0."""
    progress = [float(adv[task == k].abs().mean()) if (task == k).any() else 0.0 for k in range(len(q))]
    return decay * q + (1 - decay) * np.array(progress)

# --- Batch construction: the RP sampler (Algorithm 2) and the baselines' sampler ----------------------------
# Samplers call `sample_round(counts) -> (survivors, stats)`: draw counts[k] prompts of task k, generate N
# rollouts each, score, filter; survivors[k] are task k's groups that passed. Samplers never see a model.
@dataclass
class SampledBatch:
    groups: list[Any]    # the prompt groups to train on (at most B), in random order
    tasks: list[int]     # task index of each group
    targets: list[int]   # n_k ~ Mult(B, z), the wanted post-filter counts (RP sampler; else [])
    rho: np.ndarray      # (K,) filter-rate estimates, updated every round
    generated: list[list[int]] = field(default_factory=list)  # per round: prompts generated per task
    accepted: list[list[int]] = field(default_factory=list)   # per round: prompts surviving the filter
    stats: list[Any] = field(default_factory=list)            # per round: sample_round's stats

    @property
    def rounds(self) -> int:  # generation rounds, the first included
        return len(self.generated)

def update_filter_rates(rho: np.ndarray, generated: np.ndarray, accepted: np.ndarray,
                        decay: float = 0.9) -> np.ndarray:
    """rho_k <- decay rho_k + (1 - decay) (filtered / generated), for every task that generated prompts this
    round (the released code skips tasks with nothing filtered, so their rho never decays: a bug)."""
    rho = rho.copy()
    gen = generated > 0
    rho[gen] = decay * rho[gen] + (1 - decay) * (1.0 - accepted[gen] / generated[gen])
    return np.minimum(rho, 1.0 - 1e-9)  # float rounding must not reach 1: m_k = 1 / (1 - rho_k)

def _generation_round(batch: SampledBatch, sample_round: Callable, counts: np.ndarray,
                      rho_decay: float) -> list[list[Any]]:
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
    """Algorithm 2, the RP sampler: a post-filter batch of B groups whose task shares follow z.
    os_factor = M_os, max_rounds = N_rs (rounds after the first), acc_cap = M_acc; inflate=False: m_k = 1."""
    z, rho = support.check_sampler_args(z, B, rho, os_factor, max_rounds, acc_cap)
    K = len(z)
    n_gen = int(round(os_factor * B))
    n = rng.multinomial(B, z)                                                   # line 1: target counts
    m = 1.0 / np.maximum(1.0 - rho, 1.0 / acc_cap) if inflate else np.ones(K)  # line 2: min(1/(1-rho), M_acc)
    batch = SampledBatch([], [], n.tolist(), rho)
    accepted: list[list[Any]] = [[] for _ in range(K)]
    p = z * m / (z * m).sum()                                                   # line 3: zhat
    while True:
        counts = rng.multinomial(n_gen, p)
        survivors = _generation_round(batch, sample_round, counts, rho_decay)  # lines 4-9 / 15-22
        accepted = [a + s for a, s in zip(accepted, survivors)]
        deficit = np.maximum(n - np.array([len(a) for a in accepted]), 0)      # lines 10-11 / 24
        if deficit.sum() == 0 or batch.rounds > max_rounds:                     # line 13: r <= N_rs
            break
        p = deficit * m / (deficit * m).sum()                                   # line 14: deficiency-aware
    batch.groups, batch.tasks = _trim_to_targets(accepted, n, B, rng)           # lines 27-33
    return batch

def _trim_to_targets(accepted: list[list[Any]], n: np.ndarray, B: int,
                     rng: np.random.Generator) -> tuple[list[Any], list[int]]:
    """Algorithm 2, lines 27-33: at most B accepted -> keep all (a short batch); else at most n_k random
    survivors of task k, filled up to B at random from the rest. Shuffled: each contiguous minibatch of the
    update mixes tasks."""
    pool = [(k, g) for k, groups in enumerate(accepted) for g in groups]
    keep = list(range(len(pool)))
    if len(pool) > B:
        keep, rest, start = [], [], 0
        for k, groups in enumerate(accepted):
            idx = start + rng.permutation(len(groups))
            keep += idx[:n[k]].tolist()
            rest += idx[n[k]:].tolist()
            start += len(groups)
        keep += rng.choice(rest, size=B - len(keep), replace=False).tolist()
    keep = rng.permutation(keep).tolist()
    return [pool[i][1] for i in keep], [pool[i][0] for i in keep]

def dynamic_sample(z: np.ndarray, B: int, sample_round: Callable, rho: np.ndarray, rng: np.random.Generator,
                   os_factor: float = 3, max_rounds: int = 10, rho_decay: float = 0.9) -> SampledBatch:
    """The baselines' sampler (DAPO's): M_os B prompts by z per round until B survive the filter (or N_rs more
    rounds pass); the first B. GRPO: os_factor=1, max_rounds=0, no filter. A task filtered at rate rho_k gets
    a share ~ z_k (1 - rho_k) / sum_j z_j (1 - rho_j), not z_k (Fig. 12)."""
    z, rho = support.check_sampler_args(z, B, rho, os_factor, max_rounds)
    batch = SampledBatch([], [], [], rho)
    kept: list[tuple[int, Any]] = []
    while len(kept) < B and batch.rounds <= max_rounds:
        counts = rng.multinomial(int(round(os_factor * B)), z)
        survivors = _generation_round(batch, sample_round, counts, rho_decay)
        # "The first B" in draw order: i.i.d. draws make it a random permutation of the survivors.
        round_kept = [(k, g) for k in range(len(z)) for g in survivors[k]]
        kept += [round_kept[i] for i in rng.permutation(len(round_kept))]
    batch.groups = [g for _, g in kept[:B]]
    batch.tasks = [k for k, _ in kept[:B]]
    return batch

# --- Rollouts: draw prompts, sample N responses each (policy.py, App. E), score, filter -----------------
@dataclass
class Group:  # one prompt and its N rollouts: the unit the zero-gradient filter keeps or drops
    task: int
    prompt_ids: list[int]
    response: torch.Tensor     # (N, T) sampled token ids, pad after the first EOS
    mask: torch.Tensor         # (N, T) policy.response_mask: up to and including the first EOS
    rewards: torch.Tensor      # (N,) 1.0 / 0.1 / 0.0

def rollout_round(counts: np.ndarray, data: list[tuple[list, list]], sample: Callable, score: Callable,
                  N: int, filter_mode: str, draw: Callable) -> tuple[list[list[Group]], dict[str, Any]]:
    """Alg. 2 lines 5-9, the samplers' sample_round: draw (tasks.prompt_draws), sample N each, score,
    filter. data[k] = (examples, prompt ids) of task k. The stats are from before the filter."""
    t = time.perf_counter()
    K = len(data)
    picks = [(k, i) for k in range(K) for i in draw(k, int(counts[k]), len(data[k][0]))]
    outs = sample([data[k][1][i] for k, i in picks], N)
    rewards = score([data[k][0][i] for k, i in picks], outs)
    survivors: list[list[Group]] = [[] for _ in range(K)]
    stats = dict(correct=np.zeros(K), total=np.zeros(K), reward=0.0, tokens=0)
    for (k, i), (resp, mask), r in zip(picks, outs, rewards):
        stats["correct"][k] += float((r == 1.0).sum())  # rollouts with reward 1.0, per task
        stats["total"][k] += len(r)
        stats["reward"] += float(r.sum())
        stats["tokens"] += int(mask.sum())               # response tokens up to EOS
        if zero_gradient_keep(r[None], filter_mode)[0]:
            survivors[k].append(Group(k, data[k][1][i], resp, mask, r))
    return survivors, {**stats, "seconds": time.perf_counter() - t}

# --- The GRPO update of one step: old log-probs, minibatch updates (Eq. 13), I_k (Eq. 8) --------------------
# These take `logprobs(prompts, responses) -> (R, T)`: policy.policy_logprobs bound to a model, or alike.
@dataclass
class Rows:  # a batch of groups flattened to R = groups x N rows
    prompts: list[list[int]]   # R prompt id lists
    responses: torch.Tensor    # (R, T)
    mask: torch.Tensor         # (R, T)
    adv: torch.Tensor          # (R,) Eq. 11, one per response
    task: torch.Tensor         # (R,) task index

def flatten_groups(groups: list[Group], unbiased: bool, pad_id: int) -> Rows:
    """Each group's N responses as rows, right-padded to the longest T, with their advantages (Eq. 11)."""
    T = max(g.response.shape[1] for g in groups)

    def pad(t: torch.Tensor, value: float) -> torch.Tensor:
        return F.pad(t, (0, T - t.shape[1]), value=value)

    return Rows(prompts=[g.prompt_ids for g in groups for _ in range(len(g.rewards))],
                responses=torch.cat([pad(g.response, pad_id) for g in groups]),
                mask=torch.cat([pad(g.mask, 0.0) for g in groups]),
                adv=group_advantages(torch.stack([g.rewards for g in groups]), unbiased).reshape(-1),
                task=torch.tensor([g.task for g in groups for _ in range(len(g.rewards))]))

def grpo_update(logprobs: Callable, opt: torch.optim.Optimizer, rows: Rows, idx: list[int],
                old_logp: torch.Tensor | None, micro_batch_size: int = 8, eps_low: float = 0.2,
                eps_high: float = 0.28, loss_agg: str = "token_mean",
                grad_clip: float = 1.0) -> tuple[dict[str, float], torch.Tensor]:
    """One optimizer step on minibatch idx (Eq. 13), over micro-batches. old_logp (len(idx), T), or None while
    theta = theta_old (the first minibatch): then this forward's own log-probs, detached, are pi_old.
    -> (stats, this forward's log-probs (len(idx), T), detached, on its device)."""
    T = rows.responses.shape[1]
    forward = []
    sums = None
    # token_mean divides by the tokens of the whole minibatch, not of each micro-batch (tested: split == full)
    n_tok = max(float(rows.mask[idx].sum()), 1.0)
    normalizer = n_tok if loss_agg == "token_mean" else float(len(idx))
    for j, ix in enumerate(policy.chunks(idx, micro_batch_size)):
        t = policy.used_len(rows.mask[ix])
        start = j * micro_batch_size
        logp = logprobs([rows.prompts[i] for i in ix], rows.responses[ix, :t])
        old = logp.detach() if old_logp is None else old_logp[start:start + len(ix), :t].to(logp.device)
        forward.append(F.pad(logp.detach().float(), (0, T - t)))
        mask = rows.mask[ix, :t].to(logp.device)
        loss, st = grpo_loss(logp, old, rows.adv[ix].to(logp.device), mask, eps_low, eps_high, agg=loss_agg,
                             normalizer=normalizer)
        loss.backward()
        k = float(rows.mask[ix, :t].sum())  # host-side mask, no sync: stats stay on the device until the end
        part = torch.stack([loss.detach().float(), st["clip_frac"] * k, st["ratio_mean"] * k])
        sums = part if sums is None else sums + part
    grad_norm = torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)  # free the gradients now, not after the I_k pass and the next generation
    loss_sum, clip_sum, ratio_sum = sums.tolist()  # the one host sync of the update
    stats = {"loss": loss_sum, "grad_norm": float(grad_norm), "clip_frac": clip_sum / n_tok,
             "ratio_mean": ratio_sum / n_tok}
    return stats, torch.cat(forward)  # stays on its device: no host copy

def minibatches(rows: Rows, N: int, cfg: Config) -> list[list[int]]:
    """The update's minibatches of cfg.minibatch_size groups (N rows each), in batch order."""
    return policy.chunks(list(range(len(rows.prompts))), cfg.minibatch_size * N)

def policy_update(logprobs: Callable, opt: torch.optim.Optimizer, rows: Rows, N: int, cfg: Config,
                  after_minibatch: Callable | None = None) -> tuple[dict[str, float], torch.Tensor]:
    """Algorithm 1, line 4: one optimizer step per minibatch of cfg.minibatch_size groups (the paper: 4 per
    step). pi_old of minibatches 2.. is a no-grad pass at theta_t over the same micro-batches as the update's
    forward, so that at theta_t their ratio is exactly 1 in any precision. after_minibatch(mb, log-probs of
    its forward, its pi_old) runs after each step (the released code's IWU). -> (stats, pi_old (R, T))."""
    t0 = time.perf_counter()
    parts = minibatches(rows, N, cfg)
    old_logp = torch.zeros_like(rows.mask)
    for mb in parts[1:]:  # none with one minibatch: its own forward is pi_old
        old_logp[mb] = policy.batch_logprobs(logprobs, rows, mb, cfg.micro_batch_size)
    t1 = time.perf_counter()
    stats = []
    for j, mb in enumerate(parts):
        old = None if j == 0 else old_logp[mb]  # None: theta = theta_old, its forward is its own pi_old
        st, logp = grpo_update(logprobs, opt, rows, mb, old, cfg.micro_batch_size, cfg.eps_low, cfg.eps_high,
                               cfg.loss_agg, cfg.grad_clip)
        if j == 0:
            old_logp[mb] = logp.cpu()
        stats.append(st)
        if after_minibatch is not None:
            after_minibatch(mb, logp, old_logp[mb])
    out = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
    out.update(ratio_first_update=stats[0]["ratio_mean"], updates=len(parts), seconds_old_logp=t1 - t0,
               seconds_update=time.perf_counter() - t1)
    return out, old_logp

def objective_change(logprobs: Callable, rows: Rows, old_logp: torch.Tensor, K: int, N: int,
                     cfg: Config) -> torch.Tensor:
    """Algorithm 1, line 5, Eq. 8: I_k = J_GRPO,k(theta_t+1) - J_GRPO,k(theta_t) on this step's samples and
    pi_old, clipped to [-c, c]. One no-grad pass at theta_t+1, in the update's micro-batches; at theta_t the
    surrogate is A (ratio 1), so the "before" value needs no pass."""
    new_logp = torch.cat([policy.batch_logprobs(logprobs, rows, mb, cfg.micro_batch_size)
                          for mb in minibatches(rows, N, cfg)])
    surrogate = clipped_surrogate(new_logp, old_logp, rows.adv, cfg.eps_low, cfg.eps_high)
    after = task_objectives(surrogate, rows.mask, rows.task, K, cfg.improvement_agg)
    at_theta_t = rows.adv[:, None].expand_as(rows.mask)
    before = task_objectives(at_theta_t, rows.mask, rows.task, K, cfg.improvement_agg)
    return task_improvement(before, after, cfg.improvement_clip)

def minibatch_iwu(logprobs: Callable, rows: Rows, K: int, cfg: Config, state: LoopState,
                  improvement: torch.Tensor) -> Callable:
    """The released code's IWU (--iwu-every minibatch): after each minibatch's update, I_k on that minibatch's
    responses (before: the surrogate of its training forward at theta_j; after: a no-grad pass at theta_j+1),
    then one step on xi. The passes cover each row once: as many rows as the per-step pass. Adds each I_k into
    `improvement` (K,), for the log."""
    def after_minibatch(mb: list[int], logp: torch.Tensor, old_logp: torch.Tensor) -> None:
        new_logp = policy.batch_logprobs(logprobs, rows, mb, cfg.micro_batch_size)
        adv, mask, task = rows.adv[mb], rows.mask[mb], rows.task[mb]
        surrogate_before = clipped_surrogate(logp.cpu(), old_logp, adv, cfg.eps_low, cfg.eps_high)
        surrogate_after = clipped_surrogate(new_logp, old_logp, adv, cfg.eps_low, cfg.eps_high)
        before = task_objectives(surrogate_before, mask, task, K, cfg.improvement_agg)
        after = task_objectives(surrogate_after, mask, task, K, cfg.improvement_agg)
        minibatch_improvement = task_improvement(before, after, cfg.improvement_clip)
        update_task_weights(state.xi, state.xi_opt, minibatch_improvement, state.J, cfg.weighting, cfg.lam)
        improvement.add_(minibatch_improvement)
    return after_minibatch

# --- One step of Algorithm 1, shared by train() below and integrations/trl_mtgrpo.py ------------------------
# They read their settings from `cfg`: this file's Config, or the TRL integration's (the same field names).
@dataclass
class LoopState:  # what Algorithm 1 carries from one step to the next besides theta and its optimizer
    xi: torch.Tensor                # (K,) task-weight logits, z = softmax(xi); xi_0 = 0 (uniform)
    xi_opt: torch.optim.Optimizer   # the step on xi (Subroutine 1, line 5)
    rho: np.ndarray                 # (K,) filter-rate estimates (Alg. 2)
    J: torch.Tensor                 # (K,) last known accuracy per task (kept for tasks not sampled in a step)
    sec_q: np.ndarray               # (K,) SEC's learning progress
    rng: np.random.Generator        # every sampling decision: tasks, prompts, trimming
    pools: list[list[int]] | None   # per task, the prompts left to draw (--prompt-pools, the released code)
    step: int = 0                   # steps done. support.loop_state_dict saves it all, for both trainers

def start_state(K: int, cfg: Config, seed: int) -> LoopState:
    """Step 0: xi = 0 (z uniform), rho = 0, J = 0, Q = 0, the sampler's RNG seeded, prompt pools empty."""
    xi = torch.zeros(K, requires_grad=True)
    xi_opt = xi_optimizer(xi, cfg.xi_optimizer, cfg.xi_lr, cfg.xi_weight_decay, cfg.weighting, cfg.eta)
    pools = [[] for _ in range(K)] if cfg.prompt_pools else None
    return LoopState(xi, xi_opt, np.zeros(K), torch.zeros(K), np.zeros(K), np.random.default_rng(seed), pools)

def draw_batch(cfg: Config, state: LoopState, B: int,
               sample_round: Callable) -> tuple[np.ndarray, SampledBatch]:
    """Algorithm 1, lines 2-3: the task weights z, then the batch through the method's sampler: the RP
    sampler, DAPO's dynamic sampling, or plain GRPO's one round of B prompts. Updates state.rho."""
    z = task_weights(cfg.weighting, state.xi, state.sec_q, cfg.sec_temperature)
    if cfg.sampler == "rp":
        batch = rp_sample(z, B, sample_round, state.rho, state.rng, cfg.os_factor, cfg.max_resample_rounds,
                          cfg.acc_cap, cfg.rho_decay, cfg.inflate)
    elif cfg.sampler == "dynamic":
        batch = dynamic_sample(z, B, sample_round, state.rho, state.rng, cfg.os_factor,
                               cfg.max_resample_rounds, cfg.rho_decay)
    else:
        batch = dynamic_sample(z, B, sample_round, state.rho, state.rng, 1, 0, cfg.rho_decay)
    state.rho = batch.rho
    return z, batch

def step_totals(batch: SampledBatch) -> dict[str, Any]:
    """rollout_round's stats summed over the step's rounds: per-task correct and total rollouts, before the
    filter (J_k counts every rollout of the step, not only the groups that were trained on)."""
    return {key: sum(s[key] for s in batch.stats) for key in batch.stats[0]}

def update_accuracy(cfg: Config, state: LoopState, batch: SampledBatch) -> None:
    """J_k, Subroutine 1's reward level: the accuracy of task k's rollouts this step, before the filter (a
    task not sampled keeps its last J). With cfg.accuracy_decay d > 0 (the released code: 0.5), an EMA
    J_k <- d J_k + (1 - d) acc_k over every generation round of the step."""
    rounds = batch.stats if cfg.accuracy_decay > 0 else [step_totals(batch)]
    for totals in rounds:
        sampled = torch.from_numpy(totals["total"] > 0)
        accuracy = torch.from_numpy(totals["correct"][sampled] / totals["total"][sampled]).float()
        if cfg.accuracy_decay > 0:
            accuracy = cfg.accuracy_decay * state.J[sampled] + (1 - cfg.accuracy_decay) * accuracy
        state.J[sampled] = accuracy

def update_weights(cfg: Config, state: LoopState, trained: list[Group], improvement: torch.Tensor) -> None:
    """Algorithm 1, line 6: one step on xi from I and J (Subroutine 1 or 2), or SEC's values from the trained
    groups' advantages. With --iwu-every minibatch the xi steps came during the update (minibatch_iwu)."""
    if cfg.weighting == "sec" and trained:
        rewards = torch.stack([g.rewards for g in trained])
        adv = group_advantages(rewards, cfg.adv_std == "unbiased").reshape(-1)
        task = torch.tensor([g.task for g in trained]).repeat_interleave(rewards.shape[1])
        state.sec_q = update_sec_values(state.sec_q, adv, task, cfg.sec_decay)
    stepped = cfg.weighting == "iwu" and cfg.iwu_every == "minibatch"  # already, after each minibatch
    if cfg.weighting in ("iwu", "reward_l2") and not stepped:
        update_task_weights(state.xi, state.xi_opt, improvement, state.J, cfg.weighting, cfg.lam)
    state.step += 1

# --- The run: Config (the paper's values, App. E), the loop (Algorithm 1), the entry point ------------------
@dataclass
class Config:
    # run
    model: str = arg("tiny", "hub name (Qwen2.5-0.5B: Qwen/Qwen2.5-0.5B), local dir, or tiny (CPU testbed)")
    tasks: str = arg("countdown_medium,zebra_medium,arc1d_medium", "task names or files, comma-separated")
    steps: int = arg(200, "training steps (paper: 720)")
    seed: int = arg(0, "fixes the run: tiny model init, data, every sampling decision")
    out_dir: str = arg("out", "where log.jsonl and checkpoint-STEP/ go")
    resume: str = arg("", "a run dir (its newest checkpoint) or a checkpoint-STEP dir; its config comes back")
    overwrite: bool = arg(False, "clear another run's log and checkpoints from --out-dir instead of refusing")
    save_every: int = arg(0, "checkpoint every this many steps (0: only at the end and on Ctrl-C / SIGTERM)")
    keep_checkpoints: int = arg(2, "complete checkpoints kept; older ones go once a new one is complete")
    eval_every: int = arg(25, "evaluate at step 0 and every this many steps (0: at step 0 and the end only)")
    eval_k: int = arg(8, "samples per test prompt for mean@k (paper: 8)")
    eval_prompts: int = arg(200, "test prompts per task (paper: 200)")
    n_train: int = arg(1000, "train prompts per task (paper: 1000; released data: 10000)")
    prompt_style: str = arg("auto", "r1: the paper's wrapper; chat: template; auto: chat for instruct models")
    box_rule: str = arg("last", "the last \\boxed{}, or the last on the last line (released code)")
    report_to: str = arg("", "also log to tensorboard, wandb, trackio, comma-separated (trackers.py)")
    # method (Sec. 6): --method sets these four
    sampler: str = arg("rp", "RP sampler (Alg. 2), DAPO's, or one round")
    weighting: str = arg("iwu", "task weights: Subroutine 1, Subroutine 2, SEC, uniform")
    filter: str = arg("strict", "zero-gradient filter (Exp. 1: strict, Exp. 2: lenient)")
    eps_high: float = arg(0.28, "upper clip of Eq. 13: 0.28 clip-higher (DAPO, MT-GRPO), 0.2 (GRPO)")
    # rollouts
    batch_size: int = arg(16, "B: prompts per step after filtering (Exp. 1: 32, Exp. 2: 256)")
    num_rollouts: int = arg(8, "N: responses per prompt (Exp. 1: 72, Exp. 2: 8)")
    max_prompt_len: int = arg(1024, "longer prompts are dropped at load, loudly (paper: 1024)")
    max_response_len: int = arg(1024, "new tokens per response (paper: 4096)")
    temperature: float = arg(1.0, "sampling temperature; log-probs use the same (paper: 1.0)")
    top_p: float = arg(1.0, "nucleus sampling (paper: 1.0)")
    gen_batch_size: int = arg(384, "rows (prompts x N) per generate() call; lower it if the KV cache is big")
    share_prompts: bool = arg(True, "run a prompt once for its N rows (policy.py); off: the plain code")
    # update
    minibatch_size: int = arg(4, "prompts per optimizer step (paper: B/4, i.e. 4 updates per step)")
    micro_batch_size: int = arg(8, "rows per forward/backward; gradients accumulate over a minibatch")
    lr: float = arg(1e-6, "policy AdamW learning rate (paper: 1e-6)")
    beta1: float = arg(0.9, "policy AdamW beta1 (paper: 0.9)")
    beta2: float = arg(0.99, "policy AdamW beta2 (paper: 0.99; released code: 0.999)")
    weight_decay: float = arg(0.0, "policy AdamW weight decay (paper: not stated; released code: 0.01)")
    grad_clip: float = arg(1.0, "gradient-norm clip (paper: 1.0)")
    eps_low: float = arg(0.2, "lower clip of Eq. 13 (paper: 0.2)")
    loss_agg: str = arg("token_mean", "token_mean (DAPO, the paper's runs) or seq_mean (GRPO)")
    adv_std: str = arg("unbiased", "std of Eq. 11 (unbiased: released code, TRL)")
    grad_checkpointing: bool = arg(False, "recompute activations in backward: less memory, ~30% slower")
    # task weights (Subroutine 1)
    lam: float = arg(0.2, "lambda of s = I + lambda J (Exp. 1: 0.2, Exp. 2: 0.1-1.2)")
    eta: float = arg(0.0, "L2 strength of reward_l2 (paper: 1e-5, 5e-4, 1e-2)")
    xi_optimizer: str = arg("adamw", "on xi: adamw (paper), sgd (xi - beta g), adam (released Subroutine 2)")
    xi_lr: float = arg(0.025, "beta, the step size on xi (paper: AdamW lr 0.025)")
    xi_weight_decay: float = arg(1e-5, "AdamW weight decay on xi (Exp. 1: 1e-5, Exp. 2: 1e-4)")
    improvement_clip: float = arg(0.1, "c: I_k is clipped to [-c, c] (Exp. 1: 0.1, Exp. 2: 0.2)")
    improvement_agg: str = arg("mean", "I_k a token mean (paper) or a sum over responses (released code)")
    iwu_every: str = arg("step", "an IWU step per training step (paper) or per minibatch (released code)")
    accuracy_decay: float = arg(0.0, "J_k: 0 = this step's accuracy (paper); d > 0: an EMA per round "
                                "(released code: 0.5)")
    # RP sampler (Algorithm 2)
    os_factor: float = arg(3.0, "M_os: a round generates M_os B prompts (paper: 3)")
    max_resample_rounds: int = arg(10, "N_rs: rounds after the first (Exp. 1: 10, Exp. 2: 2); DAPO's too")
    acc_cap: float = arg(5.0, "M_acc: cap of the inflation m_k = 1/(1 - rho_k) (paper: 5)")
    rho_decay: float = arg(0.9, "EMA decay of the filter-rate estimates rho")
    inflate: bool = arg(True, "acceptance-aware inflation m_k (false: m_k = 1, the Fig. 16 ablation)")
    prompt_pools: bool = arg(False, "draw prompts without replacement across steps (released code)")
    # SEC (Chen et al. 2025), a baseline
    sec_temperature: float = arg(0.2, "Boltzmann temperature over learning progress (SEC: 0.2)")
    sec_decay: float = arg(0.5, "EMA decay of SEC's mean |advantage| per task")

METHODS: dict[str, dict[str, Any]] = {  # Sec. 6: each method as Config fields
    "mtgrpo": dict(sampler="rp", weighting="iwu", eps_high=0.28),
    "grpo":   dict(sampler="grpo", weighting="uniform", filter="none", eps_high=0.2),
    "dapo":   dict(sampler="dynamic", weighting="uniform", eps_high=0.28),
    "iwu":    dict(sampler="dynamic", weighting="iwu", eps_high=0.28),  # IWU only: no ratio preservation
    "rps":    dict(sampler="rp", weighting="uniform", eps_high=0.28),   # RP sampler only: z uniform
    "sec":    dict(sampler="dynamic", weighting="sec", eps_high=0.28),
}

PRESETS: dict[str, dict[str, Any]] = {  # tiny: the CPU testbed (default with --model tiny); exp1/2: App. E
    "tiny": dict(tasks="toy_copy,toy_next,toy_first", steps=100, eval_every=20, eval_k=8, eval_prompts=200,
                 n_train=1000, batch_size=16, num_rollouts=8, max_prompt_len=32, max_response_len=4,
                 gen_batch_size=512, minibatch_size=16, micro_batch_size=128, lr=1e-3, max_resample_rounds=3),
    "exp1": dict(tasks="countdown_medium,zebra_medium,arc1d_medium", steps=720, batch_size=32,
                 num_rollouts=72, minibatch_size=8, max_prompt_len=1024, max_response_len=4096,
                 filter="strict", lam=0.2, max_resample_rounds=10, xi_weight_decay=1e-5,
                 improvement_clip=0.1, prompt_style="r1"),
    "exp2": dict(tasks=",".join(f"{t}_{d}" for t in ("countdown", "zebra", "arc1d")
                                for d in ("easy", "medium", "hard")),
                 steps=720, batch_size=256, num_rollouts=8, minibatch_size=64, max_prompt_len=1024,
                 max_response_len=4096, filter="lenient", lam=1.2, max_resample_rounds=2,
                 xi_weight_decay=1e-4, improvement_clip=0.2, prompt_style="r1"),
    # the released code's Exp. 1 algorithm (rsshyam/MT-GRPO), on top of another preset: --preset tiny,released
    "released": dict(iwu_every="minibatch", improvement_agg="sum", xi_optimizer="adam", accuracy_decay=0.5,
                     prompt_pools=True, inflate=False),
}

def train(cfg: Config, stop: dict[str, int] | None = None) -> dict[str, Any]:
    """Algorithm 1 with cfg's sampler and task weights. Writes out_dir/log.jsonl and checkpoints; -> the last
    eval record. `stop` is set by support.catch_signals on Ctrl-C / SIGTERM: save after this step and exit."""
    from verify import score
    run = support.start_run(cfg)  # checks, resume, out dir, tasks, model, tokenizer, prompt style, stop ids
    if run is None:  # resumed at --steps already
        return {}
    pad_id = run.tokenizer.pad_token_id
    K, B, N = len(run.names), cfg.batch_size, cfg.num_rollouts
    opt = torch.optim.AdamW(run.model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            weight_decay=cfg.weight_decay)
    state = start_state(K, cfg, cfg.seed)
    log = run.begin(opt, state, METHODS)  # a resumed run's optimizer, loop state and log come back first
    sample = functools.partial(policy.generate, run.model, max_new_tokens=cfg.max_response_len,
                               pad_id=pad_id, eos_ids=run.eos_ids, temperature=cfg.temperature,
                               top_p=cfg.top_p, gen_batch_size=cfg.gen_batch_size,
                               share_prompts=cfg.share_prompts)
    score_rollouts = functools.partial(score, tokenizer=run.tokenizer, box_rule=cfg.box_rule)
    logprobs = functools.partial(policy.policy_logprobs, run.model, pad_id=pad_id,
                                 temperature=cfg.temperature, share_prompts=cfg.share_prompts)
    evaluate_at = functools.partial(support.evaluate, sample, score_rollouts, run.test_sets, run.names,
                                    cfg.eval_k)

    last_eval = {}
    if state.step == 0:  # step 0, before any update: every "start vs end" comes from the log itself
        log(evaluate_at(cfg.seed, step=0))
    for step in range(state.step + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        draw = tasks.prompt_draws(state.rng, K, state.pools, refill_below=int(round(cfg.os_factor * B)))
        sample_round = functools.partial(rollout_round, data=run.train_sets, sample=sample,
                                         score=score_rollouts, N=N, filter_mode=cfg.filter, draw=draw)
        # lines 2-3: task weights z, then generate, score and filter through the method's sampler
        z, batch = draw_batch(cfg, state, B, sample_round)
        update_accuracy(cfg, state, batch)  # J_k of line 6: the rollouts fix it
        upd = {}
        improvement = torch.zeros(K)
        if batch.groups:  # else every prompt was filtered and resampling ran out: no update this step
            rows = flatten_groups(batch.groups, cfg.adv_std == "unbiased", pad_id)
            per_minibatch = cfg.weighting == "iwu" and cfg.iwu_every == "minibatch"
            hook = minibatch_iwu(logprobs, rows, K, cfg, state, improvement) if per_minibatch else None
            # line 4: the GRPO minibatch updates (Eq. 11-13)
            upd, old_logp = policy_update(logprobs, opt, rows, N, cfg, hook)
            # line 5: I_k, the change of each task's GRPO objective over the update (Eq. 8)
            t1 = time.perf_counter()
            if cfg.weighting == "iwu" and not per_minibatch:
                improvement = objective_change(logprobs, rows, old_logp, K, N, cfg)
            upd["seconds_improvement"] = time.perf_counter() - t1
        # line 6: z <- IWU (Subroutine 1) from I and J
        update_weights(cfg, state, batch.groups, improvement)
        # log, evaluate, save
        z_next = task_weights(cfg.weighting, state.xi, state.sec_q, cfg.sec_temperature)
        totals = step_totals(batch)
        rec = support.step_record(z, z_next, batch, totals, upd, state, improvement, time.perf_counter() - t0,
                                  sec=cfg.weighting == "sec")
        run.log_step(rec, totals["total"] > 0)  # log.jsonl, --report-to's trackers, the progress line
        if step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0):
            last_eval = evaluate_at(cfg.seed + step, step)
            log(last_eval)
        run.save(opt, state, stop)  # a checkpoint when due; after Ctrl-C / SIGTERM, one more and exit
    run.done()
    return last_eval

def parse_args(argv: list[str] | None = None) -> Config:
    """Flags -> Config: defaults, then --preset, then --method, then explicit flags (support.parse_args)."""
    return support.parse_args(Config, PRESETS, METHODS, argv)

def main(argv: list[str] | None = None, stop: dict[str, int] | None = None) -> int:
    """python mtgrpo.py ...: bad input exits 2 with one line naming the flag and the fix."""
    try:
        train(parse_args(argv), stop)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

if __name__ == "__main__":
    sys.exit(main(stop=support.catch_signals()))
