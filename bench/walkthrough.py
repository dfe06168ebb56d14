"""One MT-GRPO step, worked: every quantity of Algorithm 1 in its order, on the CPU testbed (the warm-started
tiny model, the tiny preset with B = 16 prompts, N = 8 rollouts and 4 minibatches of 4 prompts).

It runs the trainer's own step functions (mtgrpo.draw_batch, policy_update, objective_change, update_weights)
and only listens in: it wraps sample_round and grpo_update to print what passes through them. Two quiet steps
come first, so that the filter rates rho (hence the inflation m) and the task weights z are no longer at their
starting values. README.md's "One step, worked" shows this script's output, and a test checks that it still
prints exactly that.

    python3 bench/walkthrough.py          # ~20 s on 2 cores once the tiny model's warm start is cached
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import mtgrpo as M  # noqa: E402
import policy  # noqa: E402
from models import load_model, prompt_style, stop_token_ids, tokenize_tasks  # noqa: E402
import tasks  # noqa: E402
from tasks import load_tasks  # noqa: E402
from verify import score  # noqa: E402

QUIET_STEPS = 2


def fmt(values) -> str:
    return "[" + ", ".join(f"{float(v):.3f}" for v in values) + "]"


def main() -> None:
    torch.set_num_threads(1)  # float sums depend on the thread count: one thread, one answer on this machine
    cfg = M.Config(**{**M.PRESETS["tiny"], "minibatch_size": 4, "n_train": 200})
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model("tiny", seed=cfg.seed)
    pad_id = tokenizer.pad_token_id
    style = prompt_style(cfg.prompt_style, model, tokenizer)
    eos_ids = stop_token_ids(model, tokenizer, style)
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the loaders' progress lines
        loaded = load_tasks(cfg.tasks, cfg.n_train, 8, cfg.seed)
        names, train_sets, _ = tokenize_tasks(loaded, tokenizer, 8, cfg.max_prompt_len, style)
    K, B, N = len(names), cfg.batch_size, cfg.num_rollouts
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    state = M.start_state(K, cfg, cfg.seed)
    sample = functools.partial(policy.generate, model, max_new_tokens=cfg.max_response_len, pad_id=pad_id,
                               eos_ids=eos_ids, gen_batch_size=cfg.gen_batch_size)
    score_rollouts = functools.partial(score, tokenizer=tokenizer)
    logprobs = functools.partial(policy.policy_logprobs, model, pad_id=pad_id)
    talk = {"on": False}

    def sample_round(counts: np.ndarray):
        survivors, stats = M.rollout_round(counts, train_sets, sample, score_rollouts, N, cfg.filter,
                                           sample_round.draw)
        if talk["on"]:
            kept = [len(s) for s in survivors]
            print(f"  round: draws {counts.tolist()} -> survivors {kept}")
        return survivors, stats

    def grpo_update(*args, **kwargs):
        stats, logp = plain_update(*args, **kwargs)
        if talk["on"]:
            print(f"  minibatch of {len(args[3]) // N} groups: loss {stats['loss']:+.4f}, "
                  f"grad norm {stats['grad_norm']:.3f}, ratio mean {stats['ratio_mean']:.4f}")
        return stats, logp

    plain_update = M.grpo_update
    M.grpo_update = grpo_update  # policy_update calls the module's grpo_update: this one listens in
    for step in range(1, QUIET_STEPS + 2):
        talk["on"] = step == QUIET_STEPS + 1
        if talk["on"]:
            print(f"MT-GRPO step {step} on the testbed ({', '.join(names)}); B = {B}, N = {N}, "
                  f"lambda = {cfg.lam}, after {QUIET_STEPS} quiet steps")
            z = M.task_weights(cfg.weighting, state.xi, state.sec_q, cfg.sec_temperature)
            m = 1.0 / np.maximum(1.0 - state.rho, 1.0 / cfg.acc_cap)
            print(f"line 2  z = softmax(xi) = {fmt(z)}   (xi = {fmt(state.xi.detach())})")
            print(f"Alg. 2  rho (filter rates) = {fmt(state.rho)}")
            print(f"        inflation m = min(1/(1-rho), M_acc) = {fmt(m)}")
            print(f"line 3  RP sampler (Algorithm 2), M_os B = {int(cfg.os_factor * B)} prompts per round:")
        sample_round.draw = tasks.step_draws(state.rng, K)
        z, batch = M.draw_batch(cfg, state, B, sample_round)
        M.update_accuracy(cfg, state, batch)
        rows = M.flatten_groups(batch.groups, cfg.adv_std == "unbiased", pad_id)
        if talk["on"]:
            print(f"  targets n ~ Mult(B, z) = {batch.targets}; rho after the rounds = {fmt(batch.rho)}")
            counts = np.bincount(batch.tasks, minlength=K)
            shares = counts / len(batch.groups)
            print(f"  trimmed to B: counts {counts.tolist()}, realized shares {fmt(shares)}")
            group = batch.groups[0]
            adv = M.group_advantages(group.rewards[None], cfg.adv_std == "unbiased")[0]
            print(f"  one group ({names[group.task]}): rewards {fmt(group.rewards)}")
            print(f"                  advantages (Eq. 11) {fmt(adv)}")
            print("line 4  GRPO updates (Eq. 13), one optimizer step per minibatch:")
        upd, old_logp = M.policy_update(logprobs, opt, rows, N, cfg)
        improvement = M.objective_change(logprobs, rows, old_logp, K, N, cfg)
        if talk["on"]:
            print(f"line 5  I_k = J_GRPO,k(theta_t+1) - J_GRPO,k(theta_t), clipped (Eq. 8) = "
                  f"{fmt(improvement)}")
            print(f"line 6  J_k = this step's accuracy, before the filter = {fmt(state.J)}")
            g = M.iwu_gradient(torch.from_numpy(z).float(), improvement, state.J, cfg.lam)
            print(f"        IWU gradient g_k = z_k (s_k - z.s), s = I + lambda J (Subroutine 1) = {fmt(g)}")
        M.update_weights(cfg, state, batch.groups, improvement)
        if talk["on"]:
            z_next = M.task_weights(cfg.weighting, state.xi, state.sec_q, cfg.sec_temperature)
            print(f"        xi <- AdamW step on g = {fmt(state.xi.detach())}; new z = {fmt(z_next)}")
    M.grpo_update = plain_update


if __name__ == "__main__":
    main()
