"""Memory model of one MT-GRPO step on one GPU, and what fits in 80 GB.

The trainer keeps fp32 master weights and runs bf16 autocast (README, "Precision"). At its peak a step holds:

    generation  weights 4P + AdamW m, v 8P + autocast's bf16 weight copies 2P
                + KV cache   rows x (prompt + response) tokens x layers x 2 (K, V) x kv_heads x head_dim x 2 bytes
                + sampling   rows x V x 16 bytes (bf16 logits, fp32 copy, scaled copy, probabilities)
    update      weights 4P + AdamW 8P + gradients 4P + bf16 copies 2P
                + activations  a micro-batch's tokens x (bytes saved for backward per token, counted below)
                + one log-prob chunk  2048 tokens x V x 16 bytes (token_logprobs recomputes it in backward)

rows = gen_batch_size rounded down to whole groups of N; gradients are freed after each optimizer step
(zero_grad(set_to_none)), so generation holds none. The KV cache keeps keys in bf16 (policy.kv_cache: under
autocast RoPE would make them fp32, 1.5x the cache). A micro-batch of R rows from U distinct prompts runs each
prompt once (policy.shared_prompt_hidden): U x prompt + R x response tokens of activations, plus the prompt's
KV cache copied to its R rows (under --grad-checkpointing every row runs its prompt: R x (prompt + response)).
Lengths are the flags' maxima: the worst case, not the typical step.

Bytes saved for backward per token are counted, not guessed: --check runs the model's own forward with grad
under CPU bf16 autocast on the real layer shape (1 and 2 layers, two sequence lengths) and counts every tensor
autograd saves (torch.autograd.graph.saved_tensors_hooks); the per-token, per-layer slope is what the table
uses. The CUDA kernels save the same tensors up to attention's small per-row statistics.

    python bench/memory.py            # the table: Qwen2.5 0.5B-7B under the defaults and --preset exp1
    python bench/memory.py --set gen_batch_size=144 micro_batch_size=4 grad_checkpointing=1   # with other flags
    python bench/memory.py --check    # count saved bytes and KV bytes on CPU and compare with the model (~12 min)
"""

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import mtgrpo as M  # noqa: E402
import policy  # noqa: E402

GB = 1e9
QWEN25 = {  # the released configs (config.json of Qwen/Qwen2.5-*), written out by hand; tie: tied embeddings
    "0.5B": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864),
    "1.5B": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, intermediate_size=8960),
    "3B": dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2, intermediate_size=11008),
    "7B": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, intermediate_size=18944),
}
TIED = {"0.5B": True, "1.5B": True, "3B": True, "7B": False}
VOCAB = 151936
# Saved-for-backward bytes per token and layer, and per token outside the layers, as --check counts them on CPU
# (torch 2.13.0, transformers 5.24.0; re-count after upgrading either). Hand count for comparison: ~40 h + 8 i bytes.
SAVED_PER_TOKEN = {"0.5B": (66_368, 11_280), "1.5B": (118_840, 19_472), "3B": (150_600, 25_616), "7B": (261_240, 44_048)}
SAVED_PER_TOKEN_CKPT = {"0.5B": (3_584, 10_768), "1.5B": (6_144, 18_448), "3B": (8_192, 24_592), "7B": (14_336, 43_024)}


def n_params(s: dict, tie: bool) -> int:
    h, i, L, kv = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"], s["num_key_value_heads"]
    kv_dim = kv * h // s["num_attention_heads"]
    layer = h * (h + 2 * kv_dim) + (h + 2 * kv_dim) + h * h + 3 * h * i + 2 * h  # q,k,v (+bias), o, MLP, 2 norms
    return VOCAB * h * (1 if tie else 2) + L * layer + h


def kv_bytes_per_token(s: dict) -> int:
    return s["num_hidden_layers"] * 2 * s["num_key_value_heads"] * (s["hidden_size"] // s["num_attention_heads"]) * 2


def step_memory(size: str, run: dict) -> dict[str, float]:
    """Peak bytes of generation and of the update, in GB, for one Qwen2.5 size and one run config."""
    s, P = QWEN25[size], n_params(QWEN25[size], TIED[size])
    N, Lp, Lr = run["num_rollouts"], run["max_prompt_len"], run["max_response_len"]
    rows = max(1, run["gen_batch_size"] // N) * N
    per_layer, outside = (SAVED_PER_TOKEN_CKPT if run.get("grad_checkpointing") else SAVED_PER_TOKEN)[size]
    R = run["micro_batch_size"]
    if run.get("grad_checkpointing"):  # every row runs its own prompt (policy.can_share says no), and one
        act_tokens = R * (Lp + Lr)     # layer's activations exist again while it is recomputed in backward
        act = act_tokens * (per_layer * s["num_hidden_layers"] + outside + SAVED_PER_TOKEN[size][0])
    else:
        act_tokens = math.ceil(R / N) * Lp + R * Lr
        act = act_tokens * (per_layer * s["num_hidden_layers"] + outside) + R * Lp * kv_bytes_per_token(s)
    gen = 14 * P + rows * (Lp + Lr) * kv_bytes_per_token(s) + rows * VOCAB * 16
    upd = 18 * P + act + 2048 * VOCAB * 16
    return dict(params=P / 1e9, static=12 * P / GB, kv=rows * (Lp + Lr) * kv_bytes_per_token(s) / GB, rows=rows,
                act=act / GB, gen=gen / GB, update=upd / GB, peak=max(gen, upd) / GB)


def count_saved_bytes(shape: dict, tie: bool, layers: int, tokens: int, checkpointing: bool) -> int:
    """Bytes of the tensors autograd saves for one row of `tokens` tokens through policy_logprobs, bf16 autocast, CPU."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(**{**shape, "num_hidden_layers": layers}, vocab_size=VOCAB, tie_word_embeddings=tie,
                      pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and t.numel() > 0:
            seen[ptr] = t.untyped_storage().nbytes()
        return t
    prompt, response = [list(range(2, 2 + tokens // 2))], torch.arange(2, 2 + tokens - tokens // 2)[None]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        policy.policy_logprobs(model, prompt, response, pad_id=0)
    return sum(seen.values())


def check() -> None:
    """Per-token saved bytes from the slope between two lengths (constants such as bf16 weight copies cancel), per
    layer from the slope between 1 and 2 layers; the slope must not grow with length (attention saves O(T))."""
    import multiprocessing
    pool = multiprocessing.get_context("fork").Pool(1, maxtasksperchild=1)  # a fresh process per count: HF models linger
    for size, shape in QWEN25.items():
        for ckpt in (False, True):
            keys = [(L, T) for L in (1, 2) for T in (128, 256, 512)]
            c = dict(zip(keys, pool.starmap(count_saved_bytes, [(shape, TIED[size], L, T, ckpt) for L, T in keys])))
            slope = {L: (c[L, 512] - c[L, 256]) / 256 for L in (1, 2)}
            linear = abs((c[1, 256] - c[1, 128]) / 128 - slope[1]) <= 0.02 * slope[1]
            per_layer, outside = slope[2] - slope[1], 2 * slope[1] - slope[2]
            hand = 40 * shape["hidden_size"] + 8 * shape["intermediate_size"]
            print(f"{size:>5} {'ckpt' if ckpt else 'full':>4}: saved {per_layer:>9,.0f} B/token/layer + {outside:>7,.0f} B/token "
                  f"outside the layers (hand count 40h + 8i = {hand:,}); linear in T: {linear}", flush=True)
    from transformers import Qwen2Config, Qwen2ForCausalLM
    s = QWEN25["0.5B"]
    cfg = Qwen2Config(**{**s, "num_hidden_layers": 2}, vocab_size=1000, pad_token_id=0, eos_token_id=1)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cache = policy.kv_cache(model)
        model(input_ids=torch.randint(2, 1000, (3, 40)), use_cache=True, **{policy.cache_kwarg(type(model)): cache})
    got = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    want = 3 * 40 * kv_bytes_per_token({**s, "num_hidden_layers": 2})
    print(f"KV cache of 3 rows x 40 tokens, 2 layers of the 0.5B shape: {got:,} bytes, model {want:,} (keys {cache.layers[0].keys.dtype})")


def largest(size: str, run: dict, field: str, phase: str, budget: float, step: int = 1) -> int:
    """The largest value of `field` (a multiple of `step`) whose `phase` peak fits the budget; 0 if none."""
    best, v = 0, step
    while v <= 4096 and step_memory(size, {**run, field: v})[phase] <= budget:
        best, v = v, v + step
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="count saved bytes and KV bytes on CPU")
    ap.add_argument("--gpu-gb", type=float, default=80.0)
    ap.add_argument("--headroom-gb", type=float, default=8.0, help="kept free: CUDA context, allocator fragmentation")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="Config fields on top of both setups, "
                    "e.g. --set gen_batch_size=144 micro_batch_size=4 grad_checkpointing=1")
    args = ap.parse_args()
    if args.check:
        return check()
    budget, defaults = args.gpu_gb - args.headroom_gb, vars(M.Config())
    flags = {k: type(defaults[k])(float(v)) for k, v in (kv.split("=") for kv in args.set)}
    runs = {"defaults": {**defaults, **flags}, "exp1": {**defaults, **M.PRESETS["exp1"], **flags}}
    print(f"peak GB of one step against {args.gpu_gb:.0f} GB less {args.headroom_gb:.0f} GB headroom; lengths at the flags' maxima")
    for name, run in runs.items():
        print(f"\n{name}: B={run['batch_size']} N={run['num_rollouts']} prompt<={run['max_prompt_len']} response<={run['max_response_len']} "
              f"gen-batch-size {run['gen_batch_size']} micro-batch-size {run['micro_batch_size']}")
        for size in QWEN25:
            for ckpt in sorted({run["grad_checkpointing"], True}):
                r = {**run, "grad_checkpointing": ckpt}
                m = step_memory(size, r)
                gen_max = largest(size, r, "gen_batch_size", "gen", budget, run["num_rollouts"])
                micro_max = largest(size, r, "micro_batch_size", "update", budget)
                print(f"  {size:>4}{' --grad-checkpointing' if ckpt else '':<21} weights+AdamW {m['static']:5.1f} | generation {m['gen']:6.1f} "
                      f"(KV {m['kv']:5.1f}) | update {m['update']:6.1f} (activations {m['act']:6.1f}) | "
                      f"{'fits' if m['peak'] <= budget else 'does not fit'}; largest --gen-batch-size {gen_max}, --micro-batch-size {micro_max}")


if __name__ == "__main__":
    main()
