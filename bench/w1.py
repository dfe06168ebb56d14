"""Workload W1 (defined in bench/README.md) run by OUR trainer's functions, for the side-by-side with
TRL's GRPOTrainer (bench/trl_peer.py).

W1: the tiny Qwen2 (505,088 params, fp32, char-level tokenizer without '\\n') from
`models.build_tiny_model(newline=False, seed=0)`, the same weights trl_peer builds. Each step: 8 prompts
"Solve: a+b=" (step i uses prompts 8i..8i+7) x 8 completions of exactly 64 tokens (<pad> and EOS
suppressed: bench/common.py's suppress_tokens), temperature 1.0, top_p 1.0; reward = fraction of 'a'
characters; group advantages; one optimizer step on one minibatch of 64 rows (no old-logprob pass, KL 0),
AdamW lr 1e-6 with betas (0.9, 0.999) (TRL's adamw_torch_fused; fused if this torch has it), grad clip
1.0. The prompts, reward, seeds and host-noise probes are imported from trl_peer.py, so both sides use
the same definitions.

A step is timed from prompt tokenisation to the end of optimizer.step: tokenise, `policy.generate`,
decode + reward, `mtgrpo.flatten_groups` (advantages), `mtgrpo.grpo_update` (forward + loss, backward,
clip, step, zero_grad). Step 1 is warm-up and left out of the median and min. Differences from TRL's
step: no LR scheduler (TRL: linear decay, a few microseconds); advantages divide by std + 1e-6 (the
paper's Eq. 11; TRL adds 1e-4); eps_high = eps_low = 0.2 as TRL.

    python3 bench/w1.py                  # --steps 6 --threads 2 are the defaults

bench/w2.py runs W2 through this file's `measure`.

The last six lines are the figures, `name value`, in trl_peer.py's order (`impl` in place of
`trl_version`). Trust them only when `other_processes_cpu during_train` is about 0.
"""

import argparse
import functools
import os
import resource
import statistics
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import mtgrpo as M  # noqa: E402
import policy  # noqa: E402
from common import suppress_tokens  # noqa: E402
from models import build_tiny_model, load_model, stop_token_ids  # noqa: E402
# W1's prompts, reward and the host-noise probes come from the peer script itself (bench/trl_peer.py; it
# imports TRL only inside its main): one definition for both sides
from trl_peer import (W1, cpu_calibration_gflops, other_processes_cpu, read_busy_ticks,  # noqa: E402
                      reward_frac_a, w1_prompts)


def ours_args(doc: str, steps: int, model_dir: str, per_step_rows: int):
    """Our side's command line: --steps (the first is warm-up), --threads, --model-dir, --micro-batch-size,
    --grad-checkpointing."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--steps", type=int, default=steps, help="optimizer steps; the first is warm-up")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--model-dir", default=model_dir, help="the model+tokenizer directory")
    ap.add_argument("--micro-batch-size", type=int, default=M.Config.micro_batch_size,
                    help=f"rows per forward/backward (default: the trainer's, 8; {per_step_rows} = one pass as TRL; same gradient)")
    ap.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward")
    a = ap.parse_args()
    if a.steps < 2:
        ap.error("--steps must be >= 2 (step 1 is warm-up)")
    torch.set_num_threads(a.threads)
    return ap, a


def measure(a, model, tok, workload: dict, prompts: list[str], reward: Callable[[int, list[str]], list[float]],
            suppress: list[int], clip: float = 0.2, grad_clip: float = 1.0) -> None:
    """Time a.steps steps of W1 or W2 (`workload`) with mtgrpo's functions on a checked-idle host and print the step
    lines, the median split, the host-noise probes and the six figures. reward(j, texts) scores prompt j's texts."""
    import transformers

    P, N, T = workload["prompts_per_step"], workload["num_generations"], workload["completion_tokens"]
    pad_id, eos_ids = tok.pad_token_id, stop_token_ids(model, tok)
    cfg = M.Config(batch_size=P, num_rollouts=N, max_response_len=T, temperature=workload["temperature"], top_p=1.0,
                   gen_batch_size=P * N, minibatch_size=P, micro_batch_size=a.micro_batch_size,
                   lr=workload["learning_rate"], grad_clip=grad_clip, eps_low=clip, eps_high=clip, loss_agg="token_mean")
    adamw = dict(lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.0)   # TRL's adamw_torch_fused defaults
    try:
        opt = torch.optim.AdamW(model.parameters(), **adamw, fused=True)
    except (RuntimeError, TypeError):  # no fused kernel in this torch
        opt = torch.optim.AdamW(model.parameters(), **adamw)
    logprobs = functools.partial(policy.policy_logprobs, model, pad_id=pad_id, temperature=cfg.temperature)
    torch.manual_seed(workload["train_seed"])
    print(f"setup | params {sum(p.numel() for p in model.parameters()):,} | threads {torch.get_num_threads()} "
          f"| fused AdamW {opt.defaults.get('fused')} | stop ids {eos_ids} | suppressed {suppress} "
          f"| micro-batch {cfg.micro_batch_size} rows | grad checkpointing {a.grad_checkpointing} "
          f"| {P} prompts x {N} x {T} tokens/step", flush=True)

    t, busy, own = time.perf_counter(), read_busy_ticks(), sum(os.times()[:2])
    time.sleep(1.0)
    share_before = other_processes_cpu(time.perf_counter() - t, busy, own)[1]
    gflops_before = cpu_calibration_gflops()
    t_run, busy, own = time.perf_counter(), read_busy_ticks(), sum(os.times()[:2])
    times, splits = [], []
    for step in range(a.steps):
        t0 = time.perf_counter()
        js = range(step * P, (step + 1) * P)
        ids = tok([prompts[j] for j in js], add_special_tokens=False)["input_ids"]
        with suppress_tokens(model, suppress):  # every completion is exactly T long
            outs = policy.generate(model, ids, N, max_new_tokens=T, pad_id=pad_id, eos_ids=eos_ids,
                              temperature=cfg.temperature, top_p=cfg.top_p, gen_batch_size=cfg.gen_batch_size)
        t1 = time.perf_counter()
        groups = []
        for j, p, (resp, mask) in zip(js, ids, outs):
            texts = tok.batch_decode([r[m.bool()] for r, m in zip(resp, mask)], skip_special_tokens=True)
            groups.append(M.Group(0, p, resp, mask, torch.tensor(reward(j, texts))))
        rows = M.flatten_groups(groups, unbiased=True, pad_id=pad_id)  # Eq. 11 advantages, (P * N,)
        t2 = time.perf_counter()
        st, _ = M.grpo_update(logprobs, opt, rows, list(range(len(rows.prompts))), None, cfg.micro_batch_size,
                              cfg.eps_low, cfg.eps_high, cfg.loss_agg, cfg.grad_clip)
        t3 = time.perf_counter()
        assert rows.responses.shape == (P * N, T) and bool(rows.mask.all())
        times.append(t3 - t0)
        splits.append((t1 - t0, t2 - t1, t3 - t2))
        r = torch.cat([g.rewards for g in groups])
        print(f"step {step + 1} | {t3 - t0:.3f}s | generate {t1 - t0:.3f} | score {t2 - t1:.3f} | update {t3 - t2:.3f} "
              f"| prompt_len {min(map(len, ids))}-{max(map(len, ids))} | reward {r.mean():.4f} (nonzero {int((r != 0).sum())}) "
              f"| grad_norm {st['grad_norm']:.4f}" + (" (warm-up)" if step == 0 else ""), flush=True)
    share_during = other_processes_cpu(time.perf_counter() - t_run, busy, own)[1]
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    gflops_after = cpu_calibration_gflops()

    measured = times[1:]
    med = statistics.median(measured)
    g, s, u = (statistics.median(x[i] for x in splits[1:]) for i in range(3))
    print(f"split_median generate={g:.3f}s ({100 * g / med:.0f}%) score={s:.3f}s update={u:.3f}s")
    print(f"cpu_calibration_gflops before={gflops_before:.1f} after={gflops_after:.1f} "
          f"(fp32 256x256 matmul, {torch.get_num_threads()} threads)")
    print(f"other_processes_cpu share_before={share_before:.2f} during_train={share_during:.2f} "
          f"(share of all cores; above ~0.05 the figures are not clean)")
    print("impl mtgrpo")
    print(f"transformers_version {transformers.__version__}")
    print(f"seconds_per_step_median {med:.4f}")
    print(f"seconds_per_step_min {min(measured):.4f}")
    print(f"completion_tokens_per_second {P * N * T / med:.1f}")
    print(f"peak_rss_mb {peak_rss_mb:.1f}")


def main() -> None:
    P, N = W1["prompts_per_step"], W1["num_generations"]
    _, a = ours_args(__doc__, 6, "/tmp/mtgrpo_w1_model", P * N)
    model, tok = load_model(build_tiny_model(a.model_dir, newline=False, seed=W1["model_seed"]), torch.device("cpu"),
                            a.grad_checkpointing)
    measure(a, model, tok, W1, w1_prompts(P * a.steps), lambda j, texts: reward_frac_a(texts),
            [tok.pad_token_id, tok.eos_token_id])


if __name__ == "__main__":
    main()
