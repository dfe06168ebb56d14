"""Workload W2 (defined in bench/README.md; real shapes on CPU) run by OUR trainer's functions, for the
side-by-side with TRL's GRPOTrainer (bench/trl_w2.py).

W2: SmolLM2-135M-Instruct, fp32 (bench/smollm2.py's directory, `models.load_model`), on Countdown r1 prompts
(countdown_medium train split, seed 0; step i uses prompts 4i..4i+3) x 8 completions of exactly 64 tokens (eos,
pad and <|im_end|> suppressed: bench/common.py's suppress_tokens), temperature 1.0, top_p 1.0; reward =
verify.reward (1.0 / 0.1 / 0.0, no tie-breaker); group advantages; one optimizer step on one minibatch of 32
rows (no old-logprob pass, KL 0), clip 0.2 both sides, token mean, AdamW lr 1e-6 betas (0.9, 0.999) (fused if
this torch has it), grad clip 1.0. W2's constants, prompts, suppressed ids and reward come from trl_w2.py, the
host-noise probes from trl_peer.py, so both sides use the same definitions.

A step is timed as in w1.py: tokenise, `policy.generate`, decode + reward, `mtgrpo.flatten_groups`,
`mtgrpo.grpo_update` (micro-batches of 8 rows, one prompt each, whose prompt is run once:
`policy.policy_logprobs` with `policy.shared_prompt_hidden`). Step 1 is warm-up. Differences from TRL's step: no LR scheduler; std + 1e-6 (TRL
1e-4); each prompt is prefilled once for its 8 rollouts and its 8 log-prob rows (TRL runs all 32 rows' prompts).

    python3 bench/w2.py                  # --steps 4 --threads 2 are the defaults

The last six lines are the figures, `name value`, in trl_w2.py's order (`impl` in place of `trl_version`).
Trust them only when `other_processes_cpu during_train` is about 0.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from models import load_model  # noqa: E402
from trl_w2 import MODEL_DIR, W2, reward_countdown, w2_examples, w2_prompts, w2_suppress_ids  # noqa: E402
from w1 import measure, ours_args  # noqa: E402


def main() -> None:
    P, N = W2["prompts_per_step"], W2["num_generations"]
    ap, a = ours_args(__doc__, 4, MODEL_DIR, P * N)
    if not os.path.isfile(os.path.join(a.model_dir, "config.json")):
        ap.error(f"{a.model_dir} has no config.json: run `python bench/smollm2.py` (with requirements-real.txt) first")
    model, tok = load_model(a.model_dir, torch.device("cpu"), a.grad_checkpointing)
    examples = w2_examples(P * a.steps)

    def reward(j: int, texts: list[str]) -> list[float]:
        n, t = examples[j].info["numbers"], examples[j].info["target"]
        return reward_countdown(texts, [n] * len(texts), [t] * len(texts))

    measure(a, model, tok, W2, w2_prompts(examples), reward, w2_suppress_ids(tok), clip=W2["clip"], grad_clip=W2["grad_clip"])


if __name__ == "__main__":
    main()
