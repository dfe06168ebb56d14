"""How far bf16 autocast moves the trainer's log-probs from fp32, before and after the fp32 lm_head.

Before (the code up to the fidelity change): under autocast `token_logprobs` formed hidden @ W.T in bf16 and
cast the logits to fp32 afterwards. After: the product and the log-softmax run in fp32 (autocast off for that
chunk); only the transformer body stays in bf16. Each model samples its own responses in fp32 (temperature 1,
32 tokens, a fixed seed); the log-probs of those tokens are then computed in fp32, and under CPU bf16 autocast
both ways. Prints max and mean |delta log p| in nats per response token (masked after EOS).

    python bench/logprob_precision.py            # the tiny testbed model and SmolLM2-135M-Instruct (~1 min)
    python bench/logprob_precision.py --cost     # what the fp32 head costs on W2's shapes (~3 min)

--cost times the update's log-prob work at workload W2's shapes (bench/README.md: SmolLM2-135M, 4 Countdown
prompts x 8 rows, 64-token responses, micro-batches of 8 rows, each prompt run once): a forward and backward
of every micro-batch under CPU bf16 autocast, with the bf16 head and with the fp32 head, alternating, 5 times
each after one warm-up of each. It prints each side's median seconds and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from unittest import mock

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
import models  # noqa: E402
import mtgrpo as M  # noqa: E402
import policy  # noqa: E402
from smollm2 import smollm2_dir  # noqa: E402
from tasks import load_task, make_prompt  # noqa: E402


def bf16_head_logprobs(hidden, weight, tokens, temperature=1.0, chunk_size=2048):
    """The replaced computation: the lm_head product in the autocast dtype, cast to fp32 after."""
    R, T, H = hidden.shape
    logits = (hidden.reshape(R * T, H) @ weight.T).float() / temperature
    out = logits.gather(1, tokens.reshape(R * T)[:, None]).squeeze(1) - torch.logsumexp(logits, dim=1)
    return out.reshape(R, T)


def measure(name: str, model, tok, prompts: list[list[int]], n: int) -> None:
    torch.manual_seed(0)
    stop = models.stop_token_ids(model, tok, models.prompt_style("auto", model, tok))
    outs = policy.generate(model, prompts, n, max_new_tokens=32, pad_id=tok.pad_token_id, eos_ids=stop)
    rows = [p for p in prompts for _ in range(n)]
    T = max(r.shape[1] for r, _ in outs)
    pad = torch.nn.functional.pad
    resp = torch.cat([pad(r, (0, T - r.shape[1]), value=tok.pad_token_id) for r, _ in outs])
    mask = torch.cat([torch.nn.functional.pad(m, (0, T - m.shape[1])) for _, m in outs])
    with torch.no_grad():
        ref = policy.policy_logprobs(model, rows, resp, tok.pad_token_id)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            after = policy.policy_logprobs(model, rows, resp, tok.pad_token_id)
            with mock.patch.object(policy, "token_logprobs", bf16_head_logprobs):
                before = policy.policy_logprobs(model, rows, resp, tok.pad_token_id)
    tokens = int(mask.sum())
    for label, lp in (("bf16 lm_head (before)", before), ("fp32 lm_head (after)", after)):
        err = (lp - ref).abs() * mask
        print(f"{name:10s} {label:22s} max {float(err.max()):.4f}  mean {float(err.sum()) / tokens:.5f} nats "
              f"per token ({tokens} tokens)", flush=True)


def cost() -> None:
    """The fp32 head's cost on W2's shapes: bf16 and fp32 heads alternately, forward + backward."""
    from trl_w2 import W2, w2_examples, w2_prompts
    model, tok = models.load_model(smollm2_dir())
    P, N, T = W2["prompts_per_step"], W2["num_generations"], 64
    prompts = [tok(text, add_special_tokens=False)["input_ids"] for text in w2_prompts(w2_examples(P))]
    rows = [p for p in prompts for _ in range(N)]
    responses = torch.randint(3, len(tok) - 10, (len(rows), T), generator=torch.Generator().manual_seed(0))

    def update_pass() -> float:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for i in range(0, len(rows), 8):
                policy.policy_logprobs(model, rows[i:i + 8], responses[i:i + 8], tok.pad_token_id).sum().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    seconds: dict[str, list[float]] = {"bf16 head": [], "fp32 head": []}
    for rep in range(6):
        for label in seconds:
            head = bf16_head_logprobs if label == "bf16 head" else policy.token_logprobs
            with mock.patch.object(policy, "token_logprobs", head):
                s = update_pass()
            if rep:  # the first of each is warm-up
                seconds[label].append(s)
    med = {label: statistics.median(v) for label, v in seconds.items()}
    for label, v in seconds.items():
        print(f"{label}: median {med[label]:.3f} s over {len(v)} ({', '.join(f'{x:.3f}' for x in v)})")
    print(f"fp32 head / bf16 head: {med['fp32 head'] / med['bf16 head']:.3f}x; load average "
          f"{os.getloadavg()[0]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cost", action="store_true", help="time the fp32 head on W2's shapes instead")
    torch.set_num_threads(2)
    if ap.parse_args().cost:
        return cost()
    model, tok = models.load_model("tiny")
    examples = load_task("toy_copy", n_train=8, n_test=8, seed=0)[1]
    prompts = [tok(make_prompt(ex), add_special_tokens=False)["input_ids"] for ex in examples[:4]]
    measure("tiny", model, tok, prompts, 8)
    model, tok = models.load_model(smollm2_dir())
    examples = load_task("countdown_easy", n_train=8, n_test=8, seed=0)[1]
    texts = [make_prompt(ex, "chat", tok) for ex in examples[:2]]
    prompts = [tok(text, add_special_tokens=False)["input_ids"] for text in texts]
    measure("SmolLM2", model, tok, prompts, 4)


if __name__ == "__main__":
    main()
