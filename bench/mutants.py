"""
How strong is the test suite? Apply single-point bugs ("mutants") to the method (mtgrpo.py; the log-probs
and response mask in policy.py; the prompt draws in tasks.py), one at a time, and run the tests against each:
a mutant the tests still pass on has "survived", and names a gap.

Each mutant replaces one exact piece of text (it must occur once in those files; a mutant whose text is gone is
reported STALE, so the list keeps up with the code). The copy under test lives in a temporary directory:
the working tree is never touched.

    python bench/mutants.py                    # every mutant against test_mtgrpo.py (~10-20 min on 2 cores)
    python bench/mutants.py --only uncapped    # mutants whose name contains a word
    python bench/mutants.py --list             # the mutants, not run
Prints one line per mutant (KILLED by which test, SURVIVED, STALE) and the counts; exits 1 if any survived.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

METHOD_FILES = ("mtgrpo.py", "policy.py", "tasks.py")  # the method; its log-probs and mask; prompt draws

MUTANTS = [  # (name, text in one of METHOD_FILES, its mutation)
    ("advantage_no_centering", "centred = rewards - rewards.mean(dim=1, keepdim=True)", "centred = rewards"),
    ("advantage_std_flipped", "keepdim=True, unbiased=unbiased)", "keepdim=True, unbiased=not unbiased)"),
    ("strict_keeps_all_wrong", "return (n_correct > 0) & (n_correct < rewards.shape[1])", "return n_correct < rewards.shape[1]"),
    ("lenient_keeps_constant", "rewards.min(dim=1).values) > 1e-6", "rewards.min(dim=1).values) >= 0"),
    ("mask_drops_first_eos", "torch.cumsum(is_eos, dim=1) - is_eos == 0", "torch.cumsum(is_eos, dim=1) == 0"),
    ("logprobs_times_temperature", "weight.to(dtype).T / temperature", "weight.to(dtype).T * temperature"),
    ("surrogate_max_not_min", "return torch.minimum(ratio * a, torch.clamp(", "return torch.maximum(ratio * a, torch.clamp("),
    ("clip_high_uses_eps_low", "torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * a)", "torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_low) * a)"),
    ("loss_sign_flipped", "loss = -total / max(float(count), 1.0)", "loss = total / max(float(count), 1.0)"),
    ("loss_ignores_normalizer", "count = mask.sum() if normalizer is None else normalizer", "count = mask.sum()"),
    ("objective_sum_not_mean", "return num if agg == \"sum\" else num / tokens.clamp(min=1.0)", "return num"),
    ("improvement_reversed", "return (objective_after - objective_before).clamp(-clip, clip)",
     "return (objective_before - objective_after).clamp(-clip, clip)"),
    ("improvement_unclipped", "return (objective_after - objective_before).clamp(-clip, clip)",
     "return objective_after - objective_before"),
    ("iwu_minus_lambda", "s = improvement + lam * accuracy", "s = improvement - lam * accuracy"),
    ("iwu_unweighted_mean", "return z * (s - (z * s).sum())", "return z * (s - s.mean())"),
    ("l2_term_sign", "return z * (accuracy - (z * accuracy).sum()) + eta * xi",
     "return z * (accuracy - (z * accuracy).sum()) - eta * xi"),
    ("rho_ema_swapped", "rho[gen] = decay * rho[gen] + (1 - decay) *", "rho[gen] = (1 - decay) * rho[gen] + decay *"),
    ("inflation_uncapped", "m = 1.0 / np.maximum(1.0 - rho, 1.0 / acc_cap) if inflate", "m = 1.0 / (1.0 - rho) if inflate"),
    ("resample_ignores_deficit", "p = deficit * m / (deficit * m).sum()", "p = z * m / (z * m).sum()"),
    ("trim_sorted_by_task", "keep = rng.permutation(keep).tolist()", "keep = sorted(keep)"),
    ("trim_one_over_target", "keep += idx[:n[k]].tolist()\n            rest += idx[n[k]:].tolist()",
     "keep += idx[:n[k] + 1].tolist()\n            rest += idx[n[k] + 1:].tolist()"),
    ("dynamic_keeps_all", "batch.groups = [g for _, g in kept[:B]]\n    batch.tasks = [k for k, _ in kept[:B]]",
     "batch.groups = [g for _, g in kept]\n    batch.tasks = [k for k, _ in kept]"),
    ("micro_batch_own_normalizer", "normalizer=normalizer)", "normalizer=None)"),
    ("stale_pi_old", "old = None if j == 0 else old_logp[mb]", "old = None"),
    ("xi_adamw_ascends", "[kind]([xi], lr, weight_decay=decay)", "[kind]([xi], lr, weight_decay=decay, maximize=True)"),
    # fidelity (issue 21): Eq. 8's sign in the step, J from every rollout, the released pieces, precision
    ("improvement_sign_in_step", "return task_improvement(before, after, cfg.improvement_clip)",
     "return task_improvement(after, before, cfg.improvement_clip)"),
    ("accuracy_from_survivors", "rounds = batch.stats if cfg.accuracy_decay > 0 else [step_totals(batch)]",
     "rounds = batch.stats if cfg.accuracy_decay > 0 else [dict(correct=np.bincount(batch.tasks, "
     "[float((g.rewards == 1.0).sum()) for g in batch.groups], len(state.J)), total=np.bincount(batch.tasks, "
     "[float(len(g.rewards)) for g in batch.groups], len(state.J)))]"),
    ("accuracy_ema_swapped", "cfg.accuracy_decay * state.J[sampled] + (1 - cfg.accuracy_decay) * accuracy",
     "(1 - cfg.accuracy_decay) * state.J[sampled] + cfg.accuracy_decay * accuracy"),
    ("pool_refill_drops_rest", "pools[k] += rng.permutation(size).tolist()", "pools[k] = rng.permutation(size).tolist()"),
    ("minibatch_iwu_reversed", "minibatch_improvement = task_improvement(before, after, cfg.improvement_clip)",
     "minibatch_improvement = task_improvement(after, before, cfg.improvement_clip)"),
    ("subroutine2_with_lambda", "xi.grad = reward_l2_gradient(z, accuracy, xi.detach(), 0.0)",
     "xi.grad = reward_l2_gradient(z, lam * accuracy, xi.detach(), 0.0)"),
    ("bf16_lm_head", "with torch.autocast(h_c.device.type, enabled=False):", "with contextlib.nullcontext():"),
    ("pi_old_across_minibatches", "    for mb in parts[1:]:  # none with one minibatch: its own forward is pi_old\n"
     "        old_logp[mb] = policy.batch_logprobs(logprobs, rows, mb, cfg.micro_batch_size)",
     "    later = [i for mb in parts[1:] for i in mb]\n"
     "    old_logp[later] = policy.batch_logprobs(logprobs, rows, later, cfg.micro_batch_size)"),
    ("sec_times_temperature", "logits = q / temperature - np.max(q) / temperature",
     "logits = q * temperature - np.max(q) * temperature"),
]


def run(name: str, old: str, new: str, tests: list[str], timeout: int) -> tuple[str, str, float]:
    """-> (KILLED | SURVIVED | STALE | TIMEOUT, the first failing test, seconds)."""
    sources = {f: open(os.path.join(ROOT, f)).read() for f in METHOD_FILES}
    found = [f for f, text in sources.items() for _ in range(text.count(old))]
    if len(found) != 1:
        return "STALE", f"its text occurs {len(found)} times in {' + '.join(METHOD_FILES)}", 0.0
    with tempfile.TemporaryDirectory() as d:
        for item in ("models.py", "example.py", "verify.py", "support.py", "test_mtgrpo.py", "test_tasks.py",
                     "test_fidelity.py", "bench", "README.md"):
            src = os.path.join(ROOT, item)
            (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(d, item))
        for f, text in sources.items():
            with open(os.path.join(d, f), "w") as out:
                out.write(text.replace(old, new) if f == found[0] else text)
        t = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests], cwd=d,
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "TIMEOUT", f"over {timeout} s", time.perf_counter() - t
        failed = re.findall(r"^FAILED (\S+)", p.stdout, re.M)
        verdict = "SURVIVED" if p.returncode == 0 else "KILLED"
        return verdict, (failed[0] if failed else p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""), time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--only", default="", help="run the mutants whose name contains this")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--tests", nargs="*", default=["test_mtgrpo.py", "test_fidelity.py"],
                    help="pytest arguments (default: test_mtgrpo.py test_fidelity.py)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per mutant")
    a = ap.parse_args()
    chosen = [m for m in MUTANTS if a.only in m[0]]
    if a.list:
        for name, old, new in chosen:
            print(f"{name:28s} {old!r} -> {new!r}")
        return 0
    counts: dict[str, int] = {}
    for name, old, new in chosen:
        verdict, detail, seconds = run(name, old, new, a.tests, a.timeout)
        counts[verdict] = counts.get(verdict, 0) + 1
        print(f"{verdict:8s} {name:28s} {seconds:6.1f} s  {detail}", flush=True)
    print(" | ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f" | of {len(chosen)} mutants")
    return 1 if counts.get("SURVIVED") else 0


if __name__ == "__main__":
    sys.exit(main())
