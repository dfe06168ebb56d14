"""Workload W2 (defined in bench/README.md; real shapes on CPU) run by OUR trainer's functions, for the
side-by-side with TRL's GRPOTrainer (bench/trl_w2.py).

W2: SmolLM2-135M-Instruct, fp32 (bench/smollm2.py's directory, `tasks.load_model`), on Countdown r1 prompts
(countdown_medium train split, seed 0; step i uses prompts 4i..4i+3) x 8 completions of exactly 64 tokens (eos,
pad and <|im_end|> suppressed: bench/common.py's suppress_tokens), temperature 1.0, top_p 1.0; reward =
verify.reward (1.0 / 0.1 / 0.0, no tie-breaker); group advantages; one optimizer step on one minibatch of 32
rows (no old-logprob pass, KL 0), clip 0.2 both sides, token mean, AdamW lr 1e-6 betas (0.9, 0.999) (fused if
this torch has it), grad clip 1.0. W2's constants, prompts, suppressed ids and reward come from trl_w2.py, the
host-noise probes from trl_peer.py, so both sides use the same definitions.

A step is timed as in w1.py: tokenise, `mtgrpo.generate`, decode + reward, `mtgrpo.flatten_groups`,
`mtgrpo.grpo_update` (micro-batches of 8 rows, one prompt each, whose prompt is run once:
`shared_prompt_logprobs`). Step 1 is warm-up. Differences from TRL's step: no LR scheduler; std + 1e-6 (TRL
1e-4); each prompt is prefilled once for its 8 rollouts and its 8 log-prob rows (TRL runs all 32 rows' prompts).

    python3 bench/w2.py                  # --steps 4 --threads 2 are the defaults

The last six lines are the figures, `name value`, in trl_w2.py's order (`impl` in place of `trl_version`).
Trust them only when `other_processes_cpu during_train` is about 0.
"""

import argparse
import functools
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import mtgrpo as M  # noqa: E402
from common import suppress_tokens  # noqa: E402
from tasks import load_model, stop_token_ids  # noqa: E402
from trl_peer import cpu_calibration_gflops, other_processes_cpu, read_busy_ticks  # noqa: E402
from trl_w2 import MODEL_DIR, W2, reward_countdown, w2_examples, w2_prompts, w2_suppress_ids  # noqa: E402

PROMPTS, ROLLOUTS, TOKENS = W2["prompts_per_step"], W2["num_generations"], W2["completion_tokens"]  # 4 x 8 x 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps; the first is warm-up")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--model-dir", default=MODEL_DIR, help="SmolLM2-135M-Instruct save_pretrained directory")
    ap.add_argument("--micro-batch-size", type=int, default=M.Config.micro_batch_size,
                    help="rows per forward/backward (default: the trainer's, 8; 32 = one pass as TRL; same gradient)")
    ap.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward")
    a = ap.parse_args()
    if a.steps < 2:
        ap.error("--steps must be >= 2 (step 1 is warm-up)")
    if not os.path.isfile(os.path.join(a.model_dir, "config.json")):
        ap.error(f"{a.model_dir} has no config.json: run `python bench/smollm2.py` (with requirements-real.txt) first")
    torch.set_num_threads(a.threads)
    import transformers

    model, tok = load_model(a.model_dir, torch.device("cpu"), a.grad_checkpointing)
    pad_id, eos_ids, suppress = tok.pad_token_id, stop_token_ids(model, tok), w2_suppress_ids(tok)
    cfg = M.Config(batch_size=PROMPTS, num_rollouts=ROLLOUTS, max_response_len=TOKENS, temperature=W2["temperature"],
                   top_p=1.0, gen_batch_size=PROMPTS * ROLLOUTS, minibatch_size=PROMPTS, micro_batch_size=a.micro_batch_size,
                   lr=W2["learning_rate"], grad_clip=W2["grad_clip"], eps_low=W2["clip"], eps_high=W2["clip"],
                   loss_agg="token_mean")
    adamw = dict(lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.0)   # TRL's adamw_torch_fused defaults
    try:
        opt = torch.optim.AdamW(model.parameters(), **adamw, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(model.parameters(), **adamw)
    examples = w2_examples(PROMPTS * a.steps)
    prompts = w2_prompts(examples)
    logprobs = functools.partial(M.shared_prompt_logprobs, model, pad_id=pad_id, temperature=cfg.temperature)
    torch.manual_seed(W2["train_seed"])
    print(f"setup | params {sum(p.numel() for p in model.parameters()):,} | threads {torch.get_num_threads()} "
          f"| fused AdamW {opt.defaults.get('fused')} | stop ids {eos_ids} | suppressed {suppress} "
          f"| micro-batch {cfg.micro_batch_size} rows | grad checkpointing {a.grad_checkpointing} "
          f"| {PROMPTS} prompts x {ROLLOUTS} x {TOKENS} tokens/step", flush=True)

    t, busy, own = time.perf_counter(), read_busy_ticks(), sum(os.times()[:2])
    time.sleep(1.0)
    share_before = other_processes_cpu(time.perf_counter() - t, busy, own)[1]
    gflops_before = cpu_calibration_gflops()
    t_run, busy, own = time.perf_counter(), read_busy_ticks(), sum(os.times()[:2])
    times, splits = [], []
    for step in range(a.steps):
        t0 = time.perf_counter()
        sl = slice(step * PROMPTS, (step + 1) * PROMPTS)
        ids = tok(prompts[sl], add_special_tokens=False)["input_ids"]
        with suppress_tokens(model, suppress):  # every completion is exactly TOKENS long
            outs = M.generate(model, ids, ROLLOUTS, max_new_tokens=TOKENS, pad_id=pad_id, eos_ids=eos_ids,
                              temperature=cfg.temperature, top_p=cfg.top_p, gen_batch_size=cfg.gen_batch_size)
        t1 = time.perf_counter()
        groups = []
        for ex, p, (resp, mask) in zip(examples[sl], ids, outs):
            texts = tok.batch_decode([r[m.bool()] for r, m in zip(resp, mask)], skip_special_tokens=True)
            n, tg = ex.info["numbers"], ex.info["target"]
            rewards = torch.tensor(reward_countdown(texts, [n] * len(texts), [tg] * len(texts)))
            groups.append(M.Group(0, p, resp, mask, rewards))
        rows = M.flatten_groups(groups, unbiased=True, pad_id=pad_id)  # Eq. 11 advantages, (32,)
        t2 = time.perf_counter()
        st, _ = M.grpo_update(logprobs, opt, rows, list(range(len(rows.prompts))), None, cfg.micro_batch_size,
                              cfg.eps_low, cfg.eps_high, cfg.loss_agg, cfg.grad_clip)
        t3 = time.perf_counter()
        assert rows.responses.shape == (PROMPTS * ROLLOUTS, TOKENS) and bool(rows.mask.all())
        times.append(t3 - t0)
        splits.append((t1 - t0, t2 - t1, t3 - t2))
        r = torch.cat([g.rewards for g in groups])
        print(f"step {step + 1} | {t3 - t0:.3f}s | generate {t1 - t0:.3f} | score {t2 - t1:.3f} | update {t3 - t2:.3f} "
              f"| prompt_len {min(map(len, ids))}-{max(map(len, ids))} | reward {r.mean():.4f} "
              f"(1.0: {int((r == 1).sum())}, 0.1: {int((r == 0.1).sum())}) "
              f"| grad_norm {st['grad_norm']:.4f}" + (" (warm-up)" if step == 0 else ""), flush=True)
    share_during = other_processes_cpu(time.perf_counter() - t_run, busy, own)[1]
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
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
    print(f"completion_tokens_per_second {PROMPTS * ROLLOUTS * TOKENS / med:.1f}")
    print(f"peak_rss_mb {peak_rss_mb:.1f}")


if __name__ == "__main__":
    main()
