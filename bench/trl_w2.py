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

import os
import sys

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
from trl_peer import grpo_config, measure, peer_args, quiet_hf  # noqa: E402

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
    ap, a = peer_args(__doc__, 4, MODEL_DIR, "/tmp/trl_w2_out")
    if not os.path.isfile(os.path.join(a.model_dir, "config.json")):
        ap.error(f"{a.model_dir} has no config.json: run `python bench/smollm2.py` (in a venv with requirements-real.txt) first")
    quiet_hf(a.threads)
    import datasets
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(a.model_dir)
    P, G, T = W2["prompts_per_step"], W2["num_generations"], W2["completion_tokens"]
    examples = w2_examples(P * a.steps)
    cfg = grpo_config(a, W2, w2_suppress_ids(tokenizer), epsilon=W2["clip"], max_grad_norm=W2["grad_clip"],
                      adam_beta1=0.9, adam_beta2=0.999)
    trainer = GRPOTrainer(
        model=a.model_dir,
        reward_funcs=reward_countdown,
        processing_class=tokenizer,
        args=cfg,
        train_dataset=datasets.Dataset.from_dict({  # step i: prompts[4i:4i+4]
            "prompt": w2_prompts(examples),
            "numbers": [ex.info["numbers"] for ex in examples],
            "target": [ex.info["target"] for ex in examples],
        }),
    )
    measure(trainer, P * G * T, a.quiet)


if __name__ == "__main__":
    main()
