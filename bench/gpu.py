"""One full MT-GRPO step of a randomly initialized Qwen2.5-0.5B-shaped model on one GPU.

Shape: hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864, vocab 151936, tied embeddings; fp32 master
weights with bf16 autocast, as the trainer runs. The step is the trainer's own functions in Algorithm 1
order: RP sampler (generate + score + filter) -> old log-probs -> minibatch updates -> I_k pass -> IWU.
B * N = 256 trained responses (B = 32 prompts x N = 8) of exactly --response-len tokens (EOS suppressed:
a random model never stops), 128-token random prompts, coin-flip rewards. Almost every group survives
the filter (all-equal has probability 2 / 2^N), but with M_os = 1 a round's draws and the targets
n ~ Mult(B, z) are independent, so some task usually falls short and the step takes 2-3 rounds, as the
paper's MT-GRPO takes 2-2.25: generation covers more than 256 responses, and the printout says how many.

Prints: generation tokens/s, update tokens/s and MFU (6 x params x response tokens + attention FLOPs
over the measured update time, against --peak-tflops, H100 SXM dense bf16 = 989; the prompts, run once
per group and shared by its rows, are not counted, so MFU is a lower bound), peak GPU memory, and the
step split (generation / old log-probs / update / I_k pass / sampler + batch assembly + IWU bookkeeping).

    python bench/gpu.py                  # on a GPU machine (targets: >= 20k gen tok/s, >= 35% MFU, <= 40 GB)
    python bench/gpu.py --smoke          # a scaled-down shape that runs on CPU in seconds (checks the script)
"""

import argparse
import functools
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import mtgrpo as M  # noqa: E402
import policy  # noqa: E402
from common import suppress_tokens  # noqa: E402

QWEN25_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768)
SMOKE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, vocab_size=1000, tie_word_embeddings=True, max_position_embeddings=512)


def build_model(shape: dict, device: torch.device):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(**shape, pad_token_id=0, eos_token_id=1, bos_token_id=None, use_cache=True)
    model = Qwen2ForCausalLM(cfg).float().to(device)  # fp32 master weights; bf16 comes from autocast
    model.train()
    return model


def enable_checkpointing(model) -> None:
    """HF gradient checkpointing, as models.load_model(grad_checkpointing=True) turns it on."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers 5.2x renamed the method
    enable({"use_reentrant": False}) if enable else model.gradient_checkpointing_enable({"use_reentrant": False})


def update_flops(shape: dict, n_params: int, tokens: int, ctx: int) -> float:
    """Training FLOPs: 6 per parameter per token (forward 2 + backward 4), plus attention scores and
    values, 12 x layers x hidden x context per token. Tied embeddings: the lm_head matmul is counted once
    through n_params (the embedding lookup itself is free)."""
    return 6 * n_params * tokens + 12 * shape["num_hidden_layers"] * shape["hidden_size"] * ctx * tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny shape and sizes, runs on CPU")
    p.add_argument("--prompts", type=int, default=32)        # B
    p.add_argument("--rollouts", type=int, default=8)        # N
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--response-len", type=int, default=1024)
    p.add_argument("--gen-batch-size", type=int, default=256)
    p.add_argument("--micro-batch-size", type=int, default=16)
    p.add_argument("--minibatch-size", type=int, default=8)  # prompts per optimizer step: 4 updates
    p.add_argument("--os-factor", type=float, default=1.0,
                   help="M_os; 1 generates ~B*N = 256 responses a round (the paper's 3 triples generation)")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--steps", type=int, default=2, help="the first step is warm-up; the last is reported")
    if "--smoke" in sys.argv:  # smaller defaults; explicit flags still win
        p.set_defaults(prompts=4, rollouts=4, prompt_len=16, response_len=32, gen_batch_size=16, micro_batch_size=8,
                       minibatch_size=2)
    a = p.parse_args()
    if a.steps < 1:
        p.error("--steps must be >= 1")
    shape = SMOKE if a.smoke else QWEN25_05B
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(shape, device)
    if a.grad_checkpointing:
        enable_checkpointing(model)
    n_params = sum(p.numel() for p in model.parameters())
    pad_id, eos_ids = 0, [1]
    cfg = M.Config(batch_size=a.prompts, num_rollouts=a.rollouts, max_response_len=a.response_len,
                   gen_batch_size=a.gen_batch_size, micro_batch_size=a.micro_batch_size, minibatch_size=a.minibatch_size)
    K, B, N = 3, a.prompts, a.rollouts
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")
    xi = torch.zeros(K, requires_grad=True)
    xi_opt = torch.optim.AdamW([xi], lr=cfg.xi_lr, weight_decay=cfg.xi_weight_decay)
    rng, rho = np.random.default_rng(0), np.zeros(K)
    logprobs = functools.partial(policy.policy_logprobs, model, pad_id=pad_id, temperature=cfg.temperature)
    print(f"model: {n_params / 1e6:.1f}M params, {'smoke shape' if a.smoke else 'Qwen2.5-0.5B shape'}, on {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for step in range(1, a.steps + 1):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync()
        t0 = time.perf_counter()

        def sample_round(counts):  # -> (survivors per task, this round's generation figures)
            sync()
            t = time.perf_counter()
            prompts = [torch.randint(2, shape["vocab_size"], (a.prompt_len,)).tolist() for _ in range(int(counts.sum()))]
            with suppress_tokens(model, [pad_id, *eos_ids]):  # every response is exactly --response-len tokens
                outs = policy.generate(model, prompts, N, max_new_tokens=a.response_len, pad_id=pad_id, eos_ids=eos_ids,
                                  temperature=cfg.temperature, top_p=cfg.top_p, gen_batch_size=cfg.gen_batch_size)
            sync()
            figures = {"seconds": time.perf_counter() - t, "tokens": sum(int(m.sum()) for _, m in outs),
                       "responses": N * len(outs)}
            labels = np.repeat(np.arange(K), counts)
            groups = [[] for _ in range(K)]
            for k, p_ids, (resp, mask) in zip(labels, prompts, outs):
                r = torch.from_numpy((rng.random(N) < 0.5).astype(np.float32))  # coin flips: nearly all groups survive
                if M.zero_gradient_keep(r[None])[0]:
                    groups[k].append(M.Group(int(k), p_ids, resp, mask, r))
            return groups, figures

        z = M.task_weights("iwu", xi, np.zeros(K), cfg.sec_temperature)
        batch = M.rp_sample(z, B, sample_round, rho, rng, os_factor=a.os_factor)
        rho = batch.rho
        gen = {f: sum(s[f] for s in batch.stats) for f in ("seconds", "tokens", "responses")}
        sync()
        t_sampled = time.perf_counter()
        # the trainer's own update: old log-probs -> minibatch updates -> I_k pass (its timings end in
        # host copies, which wait for the GPU)
        rows = M.flatten_groups(batch.groups, cfg.adv_std == "unbiased", pad_id)
        upd, old_logp = M.policy_update(logprobs, opt, rows, N, cfg)
        t_imp = time.perf_counter()
        improvement = M.objective_change(logprobs, rows, old_logp, K, N, cfg)
        upd["seconds_improvement"] = time.perf_counter() - t_imp
        t_updated = time.perf_counter()
        # random J: IWU's cost, not its values
        M.update_task_weights(xi, xi_opt, improvement, torch.rand(K), "iwu", cfg.lam)
        t_end = time.perf_counter()
        t_old, t_upd, t_imp = upd["seconds_old_logp"], upd["seconds_update"], upd["seconds_improvement"]

        total = t_end - t0
        trained = float(rows.mask.sum())
        ctx = a.prompt_len + a.response_len / 2  # mean attention context of a response token
        mfu = update_flops(shape, n_params, trained, ctx) / t_upd / (a.peak_tflops * 1e12)
        # sampler (outside generation) + batch assembly (advantages, padding) + IWU
        sampler_iwu = ((t_sampled - t0 - gen["seconds"]) + (t_updated - t_sampled - t_old - t_upd - t_imp)
                       + (t_end - t_updated))
        bookkeeping = t_imp + sampler_iwu
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        print(f"step {step}{' (warm-up)' if step == 1 and a.steps > 1 else ''}: {total:.1f}s | rounds {batch.rounds} | "
              f"generated {gen['responses']} responses, {gen['tokens']} tokens | trained {len(batch.groups)} groups")
        print(f"  split: generation {gen['seconds']:.2f}s ({gen['seconds'] / total:.0%}) | old log-probs {t_old:.2f}s "
              f"| update {t_upd:.2f}s ({upd['updates']} minibatches) | I_k pass {t_imp:.2f}s | sampler+IWU {sampler_iwu:.3f}s")
    print(f"generation_tokens_per_s {gen['tokens'] / gen['seconds']:.0f}")
    print(f"update_tokens_per_s {trained / t_upd:.0f}")
    print(f"update_mfu {mfu:.3f}")
    print(f"bookkeeping_share {bookkeeping / total:.3f}  (I_k pass + sampler + IWU, of the step)")
    print(f"peak_gpu_memory_gb {peak:.1f}")


if __name__ == "__main__":
    main()
