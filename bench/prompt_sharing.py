"""What sharing each prompt's KV cache over its N rollouts buys, on the paper's task prompts.

GRPO scores N responses per prompt. Run row by row, every prompt token is computed N times: in the
generate() prefill (HF's num_return_sequences copies the prompt N times) and in every log-prob pass.
`policy.generate` and `policy.policy_logprobs` (policy.py) run each distinct prompt once and let its rows
attend to its cache. This script times both ways in the same run, alternating, on the tiny Qwen2 of
`models.build_tiny_model` (character tokens, so the r1 prompts are long: ~460 tokens for Countdown, ~1,400 for
Zebra, ~800 for ARC-1D), N = 8, 8 prompts, responses of --response-len tokens:

  - generation: `policy.generate` vs HF generate() with num_return_sequences=N (same sampling settings;
    <pad> and EOS suppressed on both sides, so every response has --response-len tokens);
  - update: forward + backward over micro-batches of 8 rows (one group each), of
    `policy.policy_logprobs` vs the row-by-row `policy_logprobs(share_prompts=False)`.

    python3 bench/prompt_sharing.py             # --response-len 128 --repeats 3 --threads 2

Prints one line per task and phase: median seconds of each way and their ratio (shared / row by row).
"""

import argparse
import functools
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import mtgrpo as M  # noqa: E402
import policy  # noqa: E402
from common import suppress_tokens  # noqa: E402
from models import build_tiny_model, left_pad, load_model  # noqa: E402
from tasks import load_task, make_prompt  # noqa: E402

N, PROMPTS, MICRO = 8, 8, 8


def timed_alternately(first, second, repeats: int) -> tuple[float, float]:
    """Median seconds of each of two functions, run in turn (ABAB...) after one warm-up each, so drift of
    a busy host hits both alike."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((first, times[0]), (second, times[1])):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="countdown_medium,zebra_medium,arc1d_medium")
    ap.add_argument("--response-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per way, alternating (median); one warm-up each")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, tok = load_model(build_tiny_model("/tmp/mtgrpo_tiny_model"), torch.device("cpu"))
    # The tiny model says 512 positions (workload W1's shape, bench/README.md), but RoPE has no position
    # table: longer prompts compute the same way, and raising the label only silences generate()'s length
    # reminder.
    model.config.max_position_embeddings = tok.model_max_length = 4096
    pad, T = tok.pad_token_id, a.response_len
    print(f"tiny Qwen2, {torch.get_num_threads()} threads, {PROMPTS} prompts x N={N}, {T}-token responses, "
          f"median of {a.repeats}")

    for task in a.tasks.split(","):
        train, _ = load_task(task, n_train=PROMPTS, n_test=1)
        prompts = [tok(make_prompt(ex, "r1"), add_special_tokens=False)["input_ids"] for ex in train]
        P = round(statistics.mean(len(p) for p in prompts))

        def gen_shared():
            with suppress_tokens(model, [pad, tok.eos_token_id]):
                policy.generate(model, prompts, N, max_new_tokens=T, pad_id=pad, eos_ids=[tok.eos_token_id],
                           temperature=1.0, top_p=1.0, gen_batch_size=PROMPTS * N)

        def gen_rows():  # the peer: HF generate's own num_return_sequences
            ids, att = left_pad(prompts, pad)
            model.eval()
            with torch.inference_mode():
                model.generate(input_ids=ids, attention_mask=att, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                               num_return_sequences=N, max_new_tokens=T, pad_token_id=pad, eos_token_id=[tok.eos_token_id],
                               suppress_tokens=[pad, tok.eos_token_id])
            model.train()

        rows = [p for p in prompts for _ in range(N)]
        responses = torch.randint(2, len(tok), (len(rows), T), generator=torch.Generator().manual_seed(0))

        def update(share: bool):
            logprobs = functools.partial(policy.policy_logprobs, share_prompts=share)
            model.zero_grad(set_to_none=True)
            for i in range(0, len(rows), MICRO):
                logprobs(model, rows[i:i + MICRO], responses[i:i + MICRO], pad, 1.0).sum().backward()

        for phase, shared, row_by_row in (("generation", gen_shared, gen_rows),
                                          ("update", lambda: update(True), lambda: update(False))):
            s, r = timed_alternately(shared, row_by_row, a.repeats)
            print(f"{task:18s} prompt ~{P:5d} tokens | {phase:10s} | shared {s:6.3f}s | row by row {r:6.3f}s "
                  f"| ratio {s / r:.2f}", flush=True)


if __name__ == "__main__":
    main()
