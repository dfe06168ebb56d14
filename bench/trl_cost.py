#!/usr/bin/env python
"""What MT-GRPO costs inside TRL: integrations/trl_mtgrpo.py's MTGRPOTrainer against plain GRPOTrainer on workload W1
(bench/README.md: tiny Qwen2, 8 prompts x 8 completions x 64 tokens per step, one optimizer step), one CPU process,
runs alternating between the two (each run its own process, so peak RSS is its own).

MT-GRPO needs tasks: W1's prompts are split in two tasks (alternate rows), both scored by W1's reward (fraction of
'a'). That reward is continuous, so the strict filter (reward == 1.0 counts as correct) would drop every group: the
MT-GRPO side uses the lenient filter, which drops only constant groups. Its sampler generates M_os B prompts in its
first round (--os-factor, paper 3): those extra rollouts are the method's, and are reported apart from its
bookkeeping (sampler, merging, the pi_old pass, the I_k pass, the IWU step), which the issue caps at 15% of a step.
`--os-factor 1` brings the MT-GRPO side near TRL's B prompts (the RP sampler still resamples a task whose first draw
fell short of its target n_k).

    /tmp/venv-trl/bin/python bench/trl_cost.py --runs 3            # from the repo root; --steps 6 --threads 2 default
    /tmp/venv-trl/bin/python bench/trl_cost.py --impl mtgrpo       # one run of one side, its figures only

A step is timed from on_step_begin to on_step_end, the timer registered last so MT-GRPO's end-of-step work (I_k, IWU)
is inside. Step 1 is warm-up. Trust figures only when `other_processes_cpu` is about 0.

--vllm-mock measures what TRL's old-log-prob pass costs the MT-GRPO side when vLLM generates. vLLM is mocked
at GRPOTrainer.vllm_generation as the tests mock it (HF generate on a copy of the weights, synced per step,
returning the sampler's own log-probs), so TRL runs its importance-sampling correction and with it a no-grad
pass over the rows of every round. The reward is binary (1.0 for at least two 'a's, about 15% of W1's random
completions) with the strict filter, so groups get filtered. The pass skips the filter's dropped rows;
--no-filter-skip restores TRL's pass over every row, for comparison.

    python3 bench/trl_cost.py --impl mtgrpo --vllm-mock [--no-filter-skip]
"""

import argparse, os, resource, statistics, subprocess, sys, time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # integrations/, mtgrpo
from trl_peer import W1, build_model_dir, other_processes_cpu, read_busy_ticks, reward_frac_a, w1_prompts  # noqa: E402

P, G, T = W1["prompts_per_step"], W1["num_generations"], W1["completion_tokens"]


def one_run(a) -> None:
    import torch
    torch.set_num_threads(a.threads)
    import datasets
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from integrations.trl_mtgrpo import MTGRPOConfig, MTGRPOTrainer
    datasets.disable_progress_bars()
    build_model_dir(a.model_dir)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(a.model_dir)
    common = dict(output_dir=a.output_dir, use_cpu=True, seed=W1["train_seed"], max_steps=a.steps, per_device_train_batch_size=P * G,
                  gradient_accumulation_steps=1, num_generations=G, max_completion_length=T, temperature=W1["temperature"], top_p=1.0,
                  top_k=0, generation_kwargs={"suppress_tokens": [tokenizer.pad_token_id, tokenizer.eos_token_id]}, beta=W1["beta"],
                  learning_rate=W1["learning_rate"], bf16=False, logging_steps=1, report_to="none", save_strategy="no",
                  disable_tqdm=True, shuffle_dataset=False, model_init_kwargs={"dtype": "float32"}, log_completions=False)
    if a.impl == "plain":
        data = datasets.Dataset.from_dict({"prompt": w1_prompts(P * a.steps)})
        cls, cfg = GRPOTrainer, GRPOConfig(**common)
    else:
        prompts = w1_prompts(P * 40)
        data = datasets.Dataset.from_dict({"prompt": prompts, "task": [f"w1_{i % 2}" for i in range(len(prompts))]})
        method = dict(filter="strict") if a.vllm_mock else dict(filter="lenient")
        cls, cfg = MTGRPOTrainer, MTGRPOConfig(**common, **method, os_factor=a.os_factor)
    reward = reward_two_a if a.vllm_mock else reward_frac_a
    trainer = cls(model=a.model_dir, reward_funcs=reward, processing_class=tokenizer, args=cfg,
                  train_dataset=data)
    pass_seconds = mock_vllm(trainer, tokenizer, a.no_filter_skip) if a.vllm_mock else []
    steps: list[float] = []

    class Timer(TrainerCallback):  # added last: runs after MTGRPOTrainer's end-of-step callback
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            steps.append(time.perf_counter() - self.t0)
    trainer.add_callback(Timer())
    busy0, own0, t0 = read_busy_ticks(), sum(os.times()[:2]), time.perf_counter()
    trainer.train()
    _, others = other_processes_cpu(time.perf_counter() - t0, busy0, own0)
    med = statistics.median(steps[1:])
    print(f"other_processes_cpu {others:.2f}")
    if a.impl == "mtgrpo":
        hist = trainer.mt_history[1:]
        gen = statistics.median(h["seconds_gen"] for h in hist)
        book = statistics.median(h["seconds_sampling"] - h["seconds_gen"] + h["seconds_weights"] for h in hist)
        print(f"seconds_generate_and_score_median {gen:.4f}")
        print(f"seconds_bookkeeping_median {book:.4f}")
        print(f"bookkeeping_share_of_step {book / med:.3f}")
        print(f"prompts_generated_per_step {statistics.median(sum(map(sum, h['generated'])) for h in hist):.0f}")
        if a.vllm_mock:
            print(f"rows_generated_per_step {statistics.median(h['rows_generated'] for h in hist):.0f}")
            print(f"rows_logp_pass_per_step {statistics.median(h['rows_logp_pass'] for h in hist):.0f}")
            print(f"rows_trained_per_step {statistics.median(h['groups_used'] for h in hist) * G:.0f}")
            print(f"seconds_logp_pass_median {statistics.median(pass_seconds[1:]):.4f}")
    print(f"seconds_per_step_median {med:.4f}")
    print(f"peak_rss_mb {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0:.1f}")


def reward_two_a(completions, **kwargs):
    """Binary: 1.0 for a completion with at least two 'a's (about 15% of W1's random completions)."""
    return [1.0 if c.count("a") >= 2 else 0.0 for c in completions]


def mock_vllm(trainer, tokenizer, no_skip: bool) -> list[float]:
    """vLLM colocate mocked at GRPOTrainer.vllm_generation (as test_trl_integration.FakeVLLM): a copy of
    the weights, synced per step, sampling W1's fixed-length completions with HF generate. -> a list that
    collects, per step, the seconds of TRL's no-grad log-prob passes inside the sampler's rounds."""
    import copy
    import torch
    from trl import GRPOTrainer
    from integrations.trl_mtgrpo import MTGRPOTrainer
    suppress = [tokenizer.pad_token_id, tokenizer.eos_token_id]

    class Engine:
        generation_kwargs: dict = {}

        def __init__(self):
            self.model = copy.deepcopy(trainer.model).eval()

        def sync_weights(self):
            self.model.load_state_dict(trainer.model.state_dict())

        def generate(self, prompts, images, num_generations, profiler=None):
            width = max(map(len, prompts))
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + list(p) for p in prompts])
            with torch.no_grad():
                mask = (ids != tokenizer.pad_token_id).long()
                out = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0,
                                          max_new_tokens=T, min_new_tokens=T, suppress_tokens=suppress,
                                          pad_token_id=tokenizer.pad_token_id, output_scores=True,
                                          return_dict_in_generate=True)
            tokens = out.sequences[:, width:]
            # the sampler's own log-probs, as vLLM returns them: the importance-sampling ratio starts near 1
            logps = torch.log_softmax(torch.stack(out.scores, 1).float(), -1).gather(2, tokens[..., None])
            return prompts, tokens.tolist(), logps.tolist(), None

    trainer.use_vllm, trainer.vllm_mode, trainer._last_loaded_step = True, "colocate", -1
    trainer.vllm_generation = Engine()
    if no_skip:  # TRL's order: rewards after the pass, so every row gets it
        MTGRPOTrainer._generate = GRPOTrainer._generate
    seconds: list[float] = []  # one entry per step: its batch's passes
    inner = GRPOTrainer._get_per_token_logps_and_entropies

    def timed(self, *args, **kw):
        t0 = time.perf_counter()
        out = inner(self, *args, **kw)
        if self._rounds is not None and not torch.is_grad_enabled():  # a sampling round's pass
            if getattr(self, "_timed_batch", None) is not self._rounds:  # the step's first
                seconds.append(0.0)
                self._timed_batch = self._rounds
            seconds[-1] += time.perf_counter() - t0
        return out
    GRPOTrainer._get_per_token_logps_and_entropies = timed
    return seconds


def figures(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in (line.split() for line in text.splitlines() if len(line.split()) == 2
                                     and line.split()[0].replace("_", "").isalpha())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", choices=("plain", "mtgrpo"), help="one run of one side (default: --runs of both, alternating)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each side, alternating, who goes first alternating too")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per run; step 1 is warm-up")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--os-factor", type=float, default=3.0, help="M_os of the MT-GRPO side (paper 3; 1 = as many prompts as TRL)")
    ap.add_argument("--vllm-mock", action="store_true", help="MT-GRPO side: vLLM mocked, binary reward, "
                    "strict filter; the old-log-prob pass's rows and seconds (see the docstring)")
    ap.add_argument("--no-filter-skip", action="store_true",
                    help="with --vllm-mock: the pass over every generated row")
    ap.add_argument("--model-dir", default="/tmp/trl_cost_w1_model")
    ap.add_argument("--output-dir", default="/tmp/trl_cost_w1_out")
    a = ap.parse_args()
    if a.steps < 2:
        ap.error("--steps must be >= 2 (step 1 is warm-up)")
    if a.impl:
        return one_run(a)
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "mtgrpo": []}
    for i in range(a.runs):
        for impl in (("plain", "mtgrpo") if i % 2 == 0 else ("mtgrpo", "plain")):
            cmd = [sys.executable, __file__, "--impl", impl, "--steps", str(a.steps), "--threads", str(a.threads),
                   "--os-factor", str(a.os_factor), "--model-dir", a.model_dir, "--output-dir", a.output_dir]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[impl].append(figures(out))
            print(impl, i + 1, runs[impl][-1], flush=True)
    med = {impl: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for impl, rs in runs.items()}
    m, p = med["mtgrpo"], med["plain"]
    print(f"step_time_ratio {m['seconds_per_step_median'] / p['seconds_per_step_median']:.3f}  (mtgrpo {m['seconds_per_step_median']:.3f} s, "
          f"plain {p['seconds_per_step_median']:.3f} s; medians of run medians)")
    print(f"peak_rss_ratio {m['peak_rss_mb'] / p['peak_rss_mb']:.3f}  (mtgrpo {m['peak_rss_mb']:.0f} MB, plain {p['peak_rss_mb']:.0f} MB)")
    print(f"bookkeeping_share_of_step {m['bookkeeping_share_of_step']:.3f}  (target <= 0.15; generate+score "
          f"{m['seconds_generate_and_score_median']:.3f} s for {m['prompts_generated_per_step']:.0f} prompts vs TRL's {P})")


if __name__ == "__main__":
    main()
