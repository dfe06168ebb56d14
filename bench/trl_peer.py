#!/usr/bin/env python
"""Peer benchmark: Hugging Face TRL GRPOTrainer on workload W1, CPU only.

W1 (defined in bench/README.md, "Workload W1"):
  * model: Qwen2 (hidden 128, 2 layers, 4 heads, 2 KV heads, MLP 512, tied embeddings; 505,088 params),
    random init (torch.manual_seed(0)), fp32; character-level tokenizer, 97 tokens: <pad>=0, <|endoftext|>=1,
    then printable ASCII 32..126.
  * per optimizer step: 8 distinct prompts x 8 completions (num_generations=8) = 64 completions, each exactly
    64 new tokens: max_completion_length=64 plus generation_kwargs suppress_tokens=[<pad>, <|endoftext|>] (logits
    set to -inf), so EOS is never sampled and sampling is over the 95 printable characters; temperature 1.0,
    top_p 1.0, top_k 0 (plain multinomial sampling), KV cache on (transformers default), SDPA attention.
  * one generation batch per optimizer step (per_device_train_batch_size=64, gradient_accumulation_steps=1,
    steps_per_generation=1, num_iterations=1), beta=0 (no reference model), lr 1e-6, fp32, no bf16,
    no gradient checkpointing, no vLLM.
  * reward: fraction of 'a' characters in the decoded completion.

Step time is measured by a TrainerCallback: on_step_begin -> on_step_end (perf_counter). That interval covers
everything the Trainer does for one optimizer step: prompt tokenisation, model.generate, reward, advantage
computation, the training forward pass + loss, backward, grad-norm clipping, optimizer.step, LR scheduler step
and zero_grad. It excludes the Trainer's logging after on_step_end and fetching the (string) prompt batch.

Usage:
  /tmp/venv-trl/bin/python bench/trl_peer.py [--steps 6] [--threads 2]     # from the repo root

The last six lines printed are the figures, one per line, as `name value`. bench/trl_w2.py runs W2 through this
file's grpo_config and measure.
"""

import argparse
import os
import resource
import statistics
import sys
import time
import warnings

# No hub access on this machine: make every HF library work offline, quietly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

W1 = dict(
    prompts_per_step=8,
    num_generations=8,
    completion_tokens=64,
    temperature=1.0,
    learning_rate=1e-6,
    beta=0.0,
    model_seed=0,
    prompt_seed=1234,
    train_seed=42,
)

SPECIAL_TOKENS = ["<pad>", "<|endoftext|>"]  # ids 0 and 1


def w1_prompts(n, seed=W1["prompt_seed"]):
    """n distinct prompts like 'Solve: 123+45=' (12-14 characters), deterministic."""
    import random

    rng = random.Random(seed)
    seen, out = set(), []
    while len(out) < n:
        p = f"Solve: {rng.randint(10, 999)}+{rng.randint(1, 99)}="
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def reward_frac_a(completions, **kwargs):
    """Trivial reward: fraction of 'a' characters in each completion string."""
    return [c.count("a") / max(len(c), 1) for c in completions]


def build_model_dir(path, seed=W1["model_seed"]):
    """Build the char-level tokenizer and the tiny random Qwen2 model; save both under `path`."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for code in range(32, 127):  # printable ASCII, space..tilde
        vocab[chr(code)] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    tk.decoder = decoders.Fuse()  # join characters back without separators
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        eos_token="<|endoftext|>",
        unk_token="<pad>",
        padding_side="left",
        model_max_length=512,
    )
    pad_id, eos_id = vocab["<pad>"], vocab["<|endoftext|>"]

    config = Qwen2Config(
        vocab_size=len(vocab),
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
        tie_word_embeddings=True,
        max_position_embeddings=512,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
        use_cache=True,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    n_params = sum(p.numel() for p in model.parameters())
    return n_params


def read_busy_ticks():
    """Busy (non-idle, non-iowait) ticks of all CPUs of this machine, from /proc/stat (USER_HZ)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal
    except (OSError, ValueError):
        return 0


def other_processes_cpu(t_wall, busy0, own0):
    """CPU-seconds burnt by processes other than this one over a window, and as a share of all cores."""
    hz = os.sysconf("SC_CLK_TCK")
    own = sum(os.times()[:2]) - own0
    others = max((read_busy_ticks() - busy0) / hz - own, 0.0)
    return others, others / (t_wall * (os.cpu_count() or 1))


def cpu_calibration_gflops(reps=5, inner=40, n=256):
    """Median GFLOP/s of a fixed fp32 matmul, to spot a slowed-down (busy) host before/after the run."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(5):
        a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(inner):
            a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 * inner / statistics.median(times) / 1e9


class StepTimer:
    """TrainerCallback-compatible: wall time of each optimizer step (on_step_begin -> on_step_end)."""

    def __init__(self):
        from transformers import TrainerCallback

        outer = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                outer._t0 = time.perf_counter()

            def on_pre_optimizer_step(self, args, state, control, **kw):
                outer._t_pre = time.perf_counter()

            def on_optimizer_step(self, args, state, control, **kw):
                outer.optim_times.append(time.perf_counter() - outer._t_pre)
                outer.to_optim.append(outer._t_pre - outer._t0)

            def on_step_end(self, args, state, control, **kw):
                outer.step_times.append(time.perf_counter() - outer._t0)
                if outer.after_step is not None:
                    outer.after_step(state.global_step)

            def on_log(self, args, state, control, logs=None, **kw):
                if logs:
                    outer.logs.append(dict(logs))

        self.step_times, self.logs, self._t0, self.after_step = [], [], None, None
        self.optim_times, self.to_optim, self._t_pre = [], [], None
        self.callback = _CB()


def install_profiling_recorder():
    """Record TRL's own profiling blocks (it times them but only reports to wandb/mlflow/trackio)."""
    from collections import defaultdict

    from trl.extras import profiling

    rec = defaultdict(lambda: defaultdict(float))  # step -> name -> seconds
    orig = profiling.ProfilingContext._log_metrics

    def _log_metrics(self, duration):
        rec[self.step][self.name] += duration
        return orig(self, duration)

    profiling.ProfilingContext._log_metrics = _log_metrics
    return rec


def install_cache_probe(model):
    """Forward pre-hook on the decoder stack: records (input length, past_key_values given?) for each call.
    Removed after the warm-up step so the measured steps carry no hook."""
    calls = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        emb = kwargs.get("inputs_embeds")
        length = ids.shape[1] if ids is not None else (emb.shape[1] if emb is not None else -1)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5.x names it `cache`
        past = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0
        calls.append((length, past))

    handle = model.model.register_forward_pre_hook(hook, with_kwargs=True)
    return calls, handle


def peer_args(doc: str, steps: int, model_dir: str, output_dir: str):
    """The peer scripts' command line: --steps (the first is warm-up), --threads, --model-dir, --output-dir, --quiet."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=steps, help=f"optimizer steps; the first is warm-up (default {steps})")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--model-dir", default=model_dir, help="the model+tokenizer directory")
    ap.add_argument("--output-dir", default=output_dir, help="Trainer output_dir (nothing is saved)")
    ap.add_argument("--quiet", action="store_true", help="do not print per-step lines")
    a = ap.parse_args()
    if a.steps < 2:
        ap.error("--steps must be >= 2 (step 1 is warm-up)")
    return ap, a


def quiet_hf(threads: int) -> None:
    """torch threads set; TRL/transformers warnings shown once each; no progress bars."""
    import datasets
    import torch
    import transformers

    torch.set_num_threads(threads)
    warnings.simplefilter("default")
    transformers.logging.set_verbosity_warning()
    datasets.disable_progress_bars()


def grpo_config(a, workload: dict, suppress_ids: list, **overrides):
    """The GRPOConfig both workloads share (W1 or W2 as `workload`): one generation batch = one optimizer step of
    prompts_per_step x num_generations completions, each exactly completion_tokens long (suppress_ids never sampled),
    plain multinomial sampling, no reference model (beta 0), fp32 on CPU, prompts in dataset order, nothing saved."""
    from trl import GRPOConfig

    P, G, T = workload["prompts_per_step"], workload["num_generations"], workload["completion_tokens"]
    return GRPOConfig(
        output_dir=a.output_dir, use_cpu=True, seed=workload["train_seed"], max_steps=a.steps,
        per_device_train_batch_size=P * G, gradient_accumulation_steps=1, num_generations=G, num_iterations=1,
        max_completion_length=T, generation_kwargs={"suppress_tokens": suppress_ids},  # -> every completion is T long
        temperature=workload["temperature"], top_p=1.0, top_k=0, beta=workload["beta"],
        learning_rate=workload["learning_rate"], bf16=False, fp16=False, gradient_checkpointing=False,
        activation_checkpointing=False,  # transformers 5.x name; setting both avoids a deprecation warning
        use_vllm=False, shuffle_dataset=False, model_init_kwargs={"dtype": "float32"}, logging_steps=1, report_to="none",
        save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, log_completions=False, **overrides)


def measure(trainer, tokens_per_step: int, quiet: bool, **info) -> None:
    """Train on a checked-idle host, timing each optimizer step (StepTimer) and TRL's own profiling blocks; print the
    setup, the KV-cache evidence, per-step lines, the median split, the host-noise probes and the six figures."""
    import torch
    import transformers
    import trl

    timer, prof = StepTimer(), install_profiling_recorder()
    trainer.add_callback(timer.callback)
    m, cfg = trainer.model, trainer.args
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
        "device": str(next(m.parameters()).device),
        "attn_implementation": getattr(m.config, "_attn_implementation", None),
        "optim": str(cfg.optim),
        "loss_type": cfg.loss_type,
        "epsilon": (cfg.epsilon, cfg.epsilon_high),
        "generation_batch_size": cfg.generation_batch_size,
        "steps_per_generation": cfg.steps_per_generation,
        "gen_config": {
            k: getattr(trainer.generation_config, k)
            for k in ("max_new_tokens", "suppress_tokens", "do_sample", "temperature", "top_p", "top_k", "use_cache")
        },
        "model_use_cache": m.config.use_cache,
        "activation_checkpointing": m.is_activation_checkpointing,
        "tokenizer": type(trainer.processing_class).__name__,
        "vocab": len(trainer.processing_class),
        **info,
    }
    print("setup", info, flush=True)

    # Pre-flight: is anything else on this machine using the CPUs? (other jobs wreck 2-thread timings)
    busy0, own0, t0 = read_busy_ticks(), sum(os.times()[:2]), time.perf_counter()
    time.sleep(1.0)
    _, idle_check_share = other_processes_cpu(time.perf_counter() - t0, busy0, own0)
    calib_before = cpu_calibration_gflops()
    busy0, own0 = read_busy_ticks(), sum(os.times()[:2])
    t_train0 = time.perf_counter()
    trainer.train()
    train_wall = time.perf_counter() - t_train0
    others_cpu_s, others_share = other_processes_cpu(train_wall, busy0, own0)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # ru_maxrss is KiB on Linux
    calib_after = cpu_calibration_gflops()

    step_logs = [l for l in timer.logs if "reward" in l or "step_time" in l]
    st = timer.step_times
    measured = st[1:]
    med = statistics.median(measured)

    # KV-cache evidence from the warm-up step's generate: one prefill call, then 1-token calls with a cache.
    gen_calls = probe_calls[:trainer.generation_config.max_new_tokens]
    n1 = sum(1 for length, _ in gen_calls[1:] if length == 1)
    cached = sum(1 for _, past in gen_calls[1:] if past > 0)
    print(
        f"kv_cache_probe prefill_len={gen_calls[0][0] if gen_calls else None} "
        f"decode_calls={len(gen_calls) - 1} one_token_calls={n1} calls_with_nonempty_cache={cached} "
        f"last_call_cache_len={gen_calls[-1][1] if gen_calls else None}",
        flush=True,
    )

    if not quiet:
        names = [
            ("gen", "GRPOTrainer.transformers.generate"),
            ("prep", "GRPOTrainer._prepare_inputs"),
            ("reward", "GRPOTrainer._calculate_rewards"),
            ("loss_fwd", "GRPOTrainer.compute_loss"),
        ]
        for i, t in enumerate(st):
            p = prof.get(i, {})
            parts = " ".join(f"{k}={p.get(n, float('nan')):.3f}" for k, n in names)
            # backward (+ grad-norm clipping) = time up to optimizer.step minus generation/scoring and loss forward
            bwd = timer.to_optim[i] - p.get("GRPOTrainer._prepare_inputs", 0.0) - p.get("GRPOTrainer.compute_loss", 0.0)
            lg = step_logs[i] if i < len(step_logs) else {}
            print(
                f"step {i + 1} seconds={t:.3f} {parts} backward_clip={bwd:.3f} optimizer_step={timer.optim_times[i]:.3f} "
                f"trl_step_time={lg.get('step_time', float('nan')):.3f} "
                f"completion_len_min={lg.get('completions/min_length')} max={lg.get('completions/max_length')} "
                f"reward={lg.get('reward', float('nan')):.4f} grad_norm={lg.get('grad_norm', float('nan')):.4f}"
                + (" (warm-up)" if i == 0 else ""),
                flush=True,
            )
        opt_med = statistics.median(timer.optim_times[1:])
        gen_med = statistics.median(prof[i]["GRPOTrainer.transformers.generate"] for i in range(1, len(st)))
        loss_med = statistics.median(prof[i]["GRPOTrainer.compute_loss"] for i in range(1, len(st)))
        prep_med = statistics.median(prof[i]["GRPOTrainer._prepare_inputs"] for i in range(1, len(st)))
        print(
            f"split_median generate={gen_med:.3f}s ({100 * gen_med / med:.0f}%) "
            f"prepare_inputs_total={prep_med:.3f}s compute_loss(fwd)={loss_med:.3f}s "
            f"optimizer_step={opt_med:.3f}s backward+clip+other={med - prep_med - loss_med - opt_med:.3f}s "
            f"train_wall={train_wall:.2f}s",
            flush=True,
        )
    print(
        f"cpu_calibration_gflops before={calib_before:.1f} after={calib_after:.1f} "
        f"(fp32 256x256 matmul, {torch.get_num_threads()} threads; ~200 on an idle machine with 2 threads)",
        flush=True,
    )
    print(
        f"other_processes_cpu share_before={idle_check_share:.2f} during_train={others_share:.2f} "
        f"({others_cpu_s:.1f} cpu-s) -- share of all cores used by other processes; above ~0.05 the figures "
        f"below are not clean",
        flush=True,
    )

    print(f"trl_version {trl.__version__}")
    print(f"transformers_version {transformers.__version__}")
    print(f"seconds_per_step_median {med:.4f}")
    print(f"seconds_per_step_min {min(measured):.4f}")
    print(f"completion_tokens_per_second {tokens_per_step / med:.1f}")
    print(f"peak_rss_mb {peak_rss_mb:.1f}")
    sys.stdout.flush()


def main():
    _, a = peer_args(__doc__, 6, "/tmp/trl_peer_w1_model", "/tmp/trl_peer_w1_out")
    quiet_hf(a.threads)
    import datasets
    from transformers import PreTrainedTokenizerFast
    from trl import GRPOTrainer

    build_model_dir(a.model_dir)
    # AutoTokenizer/AutoProcessor would NOT give back this tokenizer: transformers 5.x lists model_type "qwen2" in
    # MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS and forces Qwen2Tokenizer (byte-level BPE pipeline, drops spaces).
    # So the tokenizer is loaded by path with the generic fast class and handed to the trainer.
    tokenizer = PreTrainedTokenizerFast.from_pretrained(a.model_dir)
    assert tokenizer.decode(tokenizer("Solve: 12+7=")["input_ids"]) == "Solve: 12+7="
    P, G, T = W1["prompts_per_step"], W1["num_generations"], W1["completion_tokens"]
    cfg = grpo_config(a, W1, [tokenizer.pad_token_id, tokenizer.eos_token_id])
    trainer = GRPOTrainer(
        model=a.model_dir,  # the trainer loads the model by path (AutoModelForCausalLM, fp32)
        reward_funcs=reward_frac_a,
        processing_class=tokenizer,
        args=cfg,
        train_dataset=datasets.Dataset.from_dict({"prompt": w1_prompts(P * a.steps)}),  # step i: prompts[8i:8i+8]
    )
    measure(trainer, P * G * T, a.quiet)


if __name__ == "__main__":
    main()
