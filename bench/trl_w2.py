#!/usr/bin/env python
"""Peer benchmark: Hugging Face TRL GRPOTrainer on workload W2 (real shapes on CPU), and W2's shared definitions.

W2 (defined in bench/README.md, "workload W2"):
  * model: SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers, hidden 576, vocabulary 49,152, tied embeddings;
    134.5M params), the fp32 save_pretrained directory of bench/smollm2.py's `smollm2_dir()`, loaded by path.
  * prompts: Countdown `tasks.load_task("countdown_medium", n_train=..., n_test=200, seed=0)` train split, in
    order, each wrapped by `tasks.make_prompt(ex, "r1")` (117-122 SmolLM2 tokens, no special tokens added);
    step i uses prompts 4i..4i+3.
  * per optimizer step: 4 prompts x 8 completions = 32 completions, each exactly 64 new tokens:
    max_completion_length=64 plus generation_kwargs suppress_tokens = the tokenizer's eos, pad and <|im_end|> ids
    (all id 2 in SmolLM2), so the end of turn is never sampled; temperature 1.0, top_p 1.0, top_k 0, KV cache,
    SDPA attention, the whole step's 32 rows in one generate call.
  * one generation batch per optimizer step (per_device_train_batch_size=32, steps_per_generation=1,
    num_iterations=1), beta=0 (no reference model), clip 0.2 both sides, loss dapo (token mean over the batch),
    AdamW (adamw_torch_fused) lr 1e-6 betas (0.9, 0.999), grad clip 1.0, fp32, no gradient checkpointing, no vLLM.
  * reward: verify.reward, the paper's Countdown reward (1.0 correct, 0.1 a boxed wrong answer, 0.0 no box),
    on the decoded completion. No tie-breaker: an all-zero group has zero advantages, but neither side skips it,
    so the step still runs the full forward, backward, clip and AdamW step (the gradient is then zero).

Step time as in trl_peer.py (a TrainerCallback, on_step_begin -> on_step_end); the host-noise probes are
trl_peer.py's. bench/w2.py runs the same workload with mtgrpo's functions and imports W2, w2_examples,
w2_suppress_ids and reward_countdown from here (this file imports TRL only inside main).

Usage:
  /tmp/venv-trl/bin/python bench/trl_w2.py [--steps 4] [--threads 2]     # from the repo root

The last six lines printed are the figures, one per line, as `name value`.
"""

import argparse
import os
import resource
import statistics
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(0, os.path.join(_HERE, ".."))
import tasks  # noqa: E402  (stdlib only at import)
import verify  # noqa: E402
from smollm2 import CACHE  # noqa: E402
from trl_peer import (StepTimer, cpu_calibration_gflops, install_cache_probe, install_profiling_recorder,  # noqa: E402
                      other_processes_cpu, read_busy_ticks)

W2 = dict(
    task="countdown_medium",
    prompt_style="r1",
    data_seed=0,
    n_test=200,  # load_task draws the test split first; W2's prompts are the train split that follows it
    prompts_per_step=4,
    num_generations=8,
    completion_tokens=64,
    temperature=1.0,
    learning_rate=1e-6,
    beta=0.0,
    clip=0.2,
    grad_clip=1.0,
    train_seed=42,
)
MODEL_DIR = os.path.join(CACHE, "SmolLM2-135M-Instruct")  # bench/smollm2.py's smollm2_dir(), made by `python bench/smollm2.py`


def w2_examples(n):
    """The first n train examples of countdown_medium (seed 0), deterministic on any machine."""
    train, _ = tasks.load_task(W2["task"], n_train=n, n_test=W2["n_test"], seed=W2["data_seed"])
    return train[:n]


def w2_prompts(examples):
    return [tasks.make_prompt(ex, W2["prompt_style"]) for ex in examples]


def w2_suppress_ids(tokenizer):
    """Ids never sampled, so every completion is exactly 64 tokens: eos, pad and <|im_end|> (SmolLM2: [2])."""
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    return sorted(i for i in ids if i is not None and i != tokenizer.unk_token_id)


def reward_countdown(completions, numbers, target, **kwargs):
    """verify.reward on each completion against its prompt's numbers and target (TRL passes the dataset's
    `numbers` and `target` columns, one per completion)."""
    return [verify.reward(c, tasks.Example(W2["task"], "", "", "countdown", {"numbers": list(n), "target": int(t)}))
            for c, n, t in zip(completions, numbers, target)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps; the first is warm-up (default 4)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--model-dir", default=MODEL_DIR, help="SmolLM2-135M-Instruct save_pretrained directory")
    ap.add_argument("--output-dir", default="/tmp/trl_w2_out", help="Trainer output_dir (nothing is saved)")
    ap.add_argument("--quiet", action="store_true", help="do not print per-step lines")
    a = ap.parse_args()
    if a.steps < 2:
        ap.error("--steps must be >= 2 (step 1 is warm-up)")
    if not os.path.isfile(os.path.join(a.model_dir, "config.json")):
        ap.error(f"{a.model_dir} has no config.json: run `python bench/smollm2.py` (in a venv with requirements-real.txt) first")

    import torch

    torch.set_num_threads(a.threads)
    warnings.simplefilter("default")

    import datasets
    import transformers
    import trl
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    transformers.logging.set_verbosity_warning()
    datasets.disable_progress_bars()

    tokenizer = AutoTokenizer.from_pretrained(a.model_dir)
    special_ids = w2_suppress_ids(tokenizer)
    P, G, T = W2["prompts_per_step"], W2["num_generations"], W2["completion_tokens"]
    examples = w2_examples(P * a.steps)
    train_ds = datasets.Dataset.from_dict({
        "prompt": w2_prompts(examples),
        "numbers": [ex.info["numbers"] for ex in examples],
        "target": [ex.info["target"] for ex in examples],
    })

    cfg = GRPOConfig(
        output_dir=a.output_dir,
        use_cpu=True,
        seed=W2["train_seed"],
        max_steps=a.steps,
        per_device_train_batch_size=P * G,  # 32 completions = one generation batch = one optimizer step
        gradient_accumulation_steps=1,
        num_generations=G,
        num_iterations=1,
        max_completion_length=T,
        generation_kwargs={"suppress_tokens": special_ids},  # end of turn never sampled -> every completion is 64
        temperature=W2["temperature"],
        top_p=1.0,
        top_k=0,
        beta=W2["beta"],
        epsilon=W2["clip"],
        max_grad_norm=W2["grad_clip"],
        learning_rate=W2["learning_rate"],
        adam_beta1=0.9,
        adam_beta2=0.999,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        activation_checkpointing=False,
        use_vllm=False,
        shuffle_dataset=False,  # step i uses prompts[4i:4i+4]
        model_init_kwargs={"dtype": "float32"},
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        log_completions=False,
    )

    timer = StepTimer()
    prof = install_profiling_recorder()
    trainer = GRPOTrainer(
        model=a.model_dir,
        reward_funcs=reward_countdown,
        processing_class=tokenizer,
        args=cfg,
        train_dataset=train_ds,
        callbacks=[timer.callback],
    )
    m = trainer.model
    probe_calls, probe_handle = install_cache_probe(m)

    def after_step(global_step):
        if global_step == 1:
            probe_handle.remove()

    timer.after_step = after_step

    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in m.parameters()),
        "dtype": str(next(m.parameters()).dtype),
        "attn_implementation": getattr(m.config, "_attn_implementation", None),
        "optim": str(cfg.optim),
        "loss_type": cfg.loss_type,
        "epsilon": (cfg.epsilon, cfg.epsilon_high),
        "generation_batch_size": cfg.generation_batch_size,
        "gen_config": {
            k: getattr(trainer.generation_config, k)
            for k in ("max_new_tokens", "suppress_tokens", "do_sample", "temperature", "top_p", "top_k", "use_cache")
        },
        "activation_checkpointing": m.is_activation_checkpointing,
        "tokenizer": type(trainer.processing_class).__name__,
    }
    print("setup", info, flush=True)

    busy0, own0, t0 = read_busy_ticks(), sum(os.times()[:2]), time.perf_counter()
    time.sleep(1.0)
    _, idle_check_share = other_processes_cpu(time.perf_counter() - t0, busy0, own0)
    calib_before = cpu_calibration_gflops()
    busy0, own0 = read_busy_ticks(), sum(os.times()[:2])
    t_train0 = time.perf_counter()
    trainer.train()
    train_wall = time.perf_counter() - t_train0
    others_cpu_s, others_share = other_processes_cpu(train_wall, busy0, own0)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    calib_after = cpu_calibration_gflops()

    step_logs = [l for l in timer.logs if "reward" in l or "step_time" in l]
    st = timer.step_times
    measured = st[1:]
    med = statistics.median(measured)

    gen_calls = probe_calls[:T]
    n1 = sum(1 for length, _ in gen_calls[1:] if length == 1)
    print(
        f"kv_cache_probe prefill_len={gen_calls[0][0] if gen_calls else None} "
        f"decode_calls={len(gen_calls) - 1} one_token_calls={n1}",
        flush=True,
    )
    if not a.quiet:
        names = [
            ("gen", "GRPOTrainer.transformers.generate"),
            ("prep", "GRPOTrainer._prepare_inputs"),
            ("loss_fwd", "GRPOTrainer.compute_loss"),
        ]
        for i, t in enumerate(st):
            p = prof.get(i, {})
            parts = " ".join(f"{k}={p.get(n, float('nan')):.3f}" for k, n in names)
            bwd = timer.to_optim[i] - p.get("GRPOTrainer._prepare_inputs", 0.0) - p.get("GRPOTrainer.compute_loss", 0.0)
            lg = step_logs[i] if i < len(step_logs) else {}
            print(
                f"step {i + 1} seconds={t:.3f} {parts} backward_clip={bwd:.3f} optimizer_step={timer.optim_times[i]:.3f} "
                f"completion_len_min={lg.get('completions/min_length')} max={lg.get('completions/max_length')} "
                f"reward={lg.get('reward', float('nan')):.4f} grad_norm={lg.get('grad_norm', float('nan')):.4f}"
                + (" (warm-up)" if i == 0 else ""),
                flush=True,
            )
        gen_med = statistics.median(prof[i]["GRPOTrainer.transformers.generate"] for i in range(1, len(st)))
        print(f"split_median generate={gen_med:.3f}s ({100 * gen_med / med:.0f}%) train_wall={train_wall:.2f}s", flush=True)
    print(f"cpu_calibration_gflops before={calib_before:.1f} after={calib_after:.1f} "
          f"(fp32 256x256 matmul, {torch.get_num_threads()} threads)", flush=True)
    print(f"other_processes_cpu share_before={idle_check_share:.2f} during_train={others_share:.2f} "
          f"({others_cpu_s:.1f} cpu-s) -- share of all cores used by other processes; above ~0.05 the figures "
          f"below are not clean", flush=True)

    print(f"trl_version {trl.__version__}")
    print(f"transformers_version {transformers.__version__}")
    print(f"seconds_per_step_median {med:.4f}")
    print(f"seconds_per_step_min {min(measured):.4f}")
    print(f"completion_tokens_per_second {P * G * T / med:.1f}")
    print(f"peak_rss_mb {peak_rss_mb:.1f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
