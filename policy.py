"""
The policy pi_theta as a Hugging Face causal LM: what mtgrpo.py asks of the model. generate() samples N
responses per prompt (App. E: temperature 1.0, top_p 1.0, KV cache on); policy_logprobs() gives log pi_theta
of given response tokens in fp32: Eq. 13's ratios and Eq. 8's I_k are made of them.

Each speed-up sits right after the plain code it replaces, equals it (the tests compare them) and is turned
off by --no-share-prompts. GRPO's N rows of a group share one prompt: run the prompt once and let the rows
continue from its KV cache, in generate() and in the log-prob passes. The prompt then costs 1/N of its plain
cost (N = 72 in Exp. 1); in a training pass the gradients sum back into the one prompt pass.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from models import left_pad


# --- Sampling: N responses per prompt -----------------------------------------------------------------------
def autocast(device: torch.device):
    """bf16 autocast on GPU over fp32 master weights; on CPU whatever the caller set (fp32 by default)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def response_mask(tokens: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1.0 up to and including the first EOS, 0.0 after, (R, T): the EOS is learned (the model must stop),
    what generate() pads after it is not, even when pad == eos. No EOS: truncated, every token counts."""
    is_eos = torch.isin(tokens, torch.tensor(eos_ids, device=tokens.device)).long()
    return (torch.cumsum(is_eos, dim=1) - is_eos == 0).float()  # no EOS strictly before this token


@torch.inference_mode()
def generate(model, prompts: list[list[int]], n: int, *, max_new_tokens: int, pad_id: int, eos_ids: list[int],
             temperature: float = 1.0, top_p: float = 1.0, gen_batch_size: int = 384,
             share_prompts: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n sampled responses per prompt -> [(tokens (n, T), mask (n, T))], on the CPU. HF would fill unset
    fields from the model's generation_config (repetition_penalty...) and sample another distribution: a
    neutral one stands in. share_prompts: a prompt's KV cache is made once for its n rows (shared_prefill)."""
    from transformers import GenerationConfig
    gen_cfg = GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                               max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_ids,
                               bos_token_id=None)
    device = next(model.parameters()).device
    per_call = max(1, gen_batch_size // n)
    out = []
    was_training = model.training
    model_gen_cfg = model.generation_config
    model.eval()  # KV cache on (use_cache=True)
    model.generation_config = GenerationConfig(pad_token_id=pad_id, eos_token_id=eos_ids)
    try:
        for i in range(0, len(prompts), per_call):
            ids, att = (t.to(device) for t in left_pad(prompts[i:i + per_call], pad_id))  # (U, P)
            rows = torch.arange(len(ids), device=device).repeat_interleave(n)               # (U*n,) by prompt
            with autocast(device):
                cache = shared_prefill(model, ids, att, rows) if share_prompts else {}
                seq = model.generate(input_ids=ids[rows], attention_mask=att[rows], generation_config=gen_cfg,
                                     **cache)
            resp = seq[:, ids.shape[1]:].cpu()                                              # (U*n, T)
            mask = response_mask(resp, eos_ids)
            out += [(resp[j * n:(j + 1) * n], mask[j * n:(j + 1) * n]) for j in range(len(ids))]
    finally:
        model.train(was_training)
        model.generation_config = model_gen_cfg
    return out


# --- generate()'s speed-up: the prompt's KV cache made once for its n rows ----------------------------------
def kv_cache(model):
    """An empty KV cache that keeps keys in the values' dtype. Under bf16 autocast RoPE's fp32 cos/sin make
    the keys fp32 next to bf16 values (1.5x the cache); attention casts both to bf16 anyway: no result
    changes."""
    from transformers import DynamicCache

    class SameDtypeCache(DynamicCache):
        def update(self, keys, values, *args, **kwargs):
            return super().update(keys.to(values.dtype), values, *args, **kwargs)

    return SameDtypeCache(config=model.config)


@functools.cache  # transformers 5.2x renamed forward's `past_key_values` to `cache`: take the one it has
def cache_kwarg(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def prompt_cache(model, ids: torch.Tensor, att: torch.Tensor, rows: torch.Tensor):
    """U left-padded prompts (U, P), run once -> (a KV cache whose row r holds prompt rows[r], hidden (U, P,
    H))."""
    cache = kv_cache(model)
    positions = (att.cumsum(dim=1) - 1).clamp(min=0)
    hidden = model.base_model(input_ids=ids, attention_mask=att, position_ids=positions, use_cache=True,
                              **{cache_kwarg(type(model.base_model)): cache}).last_hidden_state
    cache.reorder_cache(rows)  # (U, ...) -> (R, ...), an index_select: gradients sum back over the rows
    return cache, hidden


def shared_prefill(model, ids: torch.Tensor, att: torch.Tensor, rows: torch.Tensor) -> dict[str, Any]:
    """generate()'s cache for prompts ids (U, P) sampled as rows (R,): of all prompt tokens but the last
    (generate() runs that one) if there is any to share, else an empty cache."""
    share = len(rows) > len(ids) and ids.shape[1] > 1
    cache = prompt_cache(model, ids[:, :-1], att[:, :-1], rows)[0] if share else kv_cache(model)
    return {cache_kwarg(type(model.base_model)): cache}


# --- log pi_theta of given responses, in fp32 ---------------------------------------------------------------
def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                   chunk_size: int = 2048) -> torch.Tensor:
    """log pi(y_t | x, y_<t) at the sampling temperature, (R, T) float32, from hidden (R, T, H) and the
    lm_head (V, H): log_softmax(hidden @ weight.T / T).gather(tokens) in fp32, chunk by chunk, so that the
    (R, T, V) logits (1 GB at V = 151936) never exist at once."""
    R, T, H = hidden.shape
    h = hidden.reshape(R * T, H)
    y = tokens.reshape(R * T)

    def chunk_logprobs(h_c: torch.Tensor, y_c: torch.Tensor) -> torch.Tensor:
        # fp32 even under bf16 autocast: bf16 logits of magnitude 20-30 are off by up to ~0.06 nat, an error
        # that would enter every ratio and I_k (~1e-3 per token). Only the (C, V) chunk is ever fp32 at once.
        dtype = torch.promote_types(weight.dtype, torch.float32)  # fp32, or fp64 where the weights are
        with torch.autocast(h_c.device.type, enabled=False):
            logits = h_c.to(dtype) @ weight.to(dtype).T / temperature  # (C, V) <- the big one, chunk by chunk
            return logits.gather(1, y_c[:, None]).squeeze(1) - torch.logsumexp(logits, dim=1)

    C = chunk_size
    recompute = torch.is_grad_enabled() and h.requires_grad  # recompute chunks in backward, don't store them
    out = [checkpoint(chunk_logprobs, h[i:i + C], y[i:i + C], use_reentrant=False) if recompute
           else chunk_logprobs(h[i:i + C], y[i:i + C]) for i in range(0, R * T, C)]
    return torch.cat(out).reshape(R, T)


def response_hidden(model, prompts: list[list[int]], responses: torch.Tensor, pad_id: int) -> torch.Tensor:
    """The last hidden states that predict each response token, (R, T, H), by one forward over [left-padded
    prompt | response] with position ids as generate() builds them."""
    ids, att = (t.to(responses.device) for t in left_pad(prompts, pad_id))
    P, T = ids.shape[1], responses.shape[1]
    attention = torch.cat([att, torch.ones_like(responses)], dim=1)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    out = model.base_model(input_ids=torch.cat([ids, responses], dim=1), attention_mask=attention,
                           position_ids=positions, use_cache=False)
    return out.last_hidden_state[:, P - 1:P + T - 1]  # position P - 1 + t predicts y_t


# --- policy_logprobs()'s speed-up: each distinct prompt run once --------------------------------------------
def can_share(model, prompts: list[list[int]]) -> bool:
    """A training pass can share prompts when some repeat, unless gradient checkpointing is on in train mode:
    HF then drops the KV cache of checkpointed layers, and the responses would lose their prompt."""
    checkpointed = any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    return len({tuple(p) for p in prompts}) < len(prompts) and not (model.training and checkpointed)


def shared_prompt_hidden(model, prompts: list[list[int]], responses: torch.Tensor,
                         pad_id: int) -> torch.Tensor:
    """The last hidden states that predict each response token, (R, T, H), as response_hidden computes
    them, with each distinct prompt run once."""
    slot: dict[tuple[int, ...], int] = {}
    device = responses.device
    row_prompt = torch.tensor([slot.setdefault(tuple(p), len(slot)) for p in prompts], device=device)  # (R,)
    ids, att = (t.to(device) for t in left_pad([list(p) for p in slot], pad_id))  # (U, P) distinct prompts
    T = responses.shape[1]
    cache, prompt_hidden = prompt_cache(model, ids, att, row_prompt)
    hidden = prompt_hidden[row_prompt, -1:]  # (R, 1, H): the last prompt token predicts y_0
    if T > 1:  # y_0..y_{T-2} predict y_1..y_{T-1}; y_t sits at position len(prompt) + t
        attention = torch.cat([att[row_prompt], torch.ones_like(responses[:, 1:])], dim=1)
        positions = att.sum(dim=1)[row_prompt, None] + torch.arange(T - 1, device=device)
        out = model.base_model(input_ids=responses[:, :-1], attention_mask=attention, position_ids=positions,
                               use_cache=True, **{cache_kwarg(type(model.base_model)): cache})
        hidden = torch.cat([hidden, out.last_hidden_state], dim=1)  # (R, T, H)
    return hidden


def policy_logprobs(model, prompts: list[list[int]], responses: torch.Tensor, pad_id: int,
                    temperature: float = 1.0, share_prompts: bool = True) -> torch.Tensor:
    """log pi_theta of each response token, (R, T) float32: the sampler's own log-probs, so the first ratio is
    exactly 1. share_prompts: a prompt repeated over rows is run once (shared_prompt_hidden)."""
    device = next(model.parameters()).device
    responses = responses.to(device)
    with autocast(device):
        if share_prompts and can_share(model, prompts):
            hidden = shared_prompt_hidden(model, prompts, responses, pad_id)
        else:
            hidden = response_hidden(model, prompts, responses, pad_id)
        return token_logprobs(hidden, model.get_output_embeddings().weight, responses, temperature)


# --- No-grad passes in micro-batches: the update's shapes, less padding -------------------------------------
def chunks(idx: list[int], size: int) -> list[list[int]]:
    return [idx[i:i + size] for i in range(0, len(idx), size)]


def used_len(mask: torch.Tensor) -> int:
    """Tokens up to the last unmasked one: a micro-batch's T is cut there (less padding to run)."""
    return int(mask.sum(dim=0).nonzero().max()) + 1 if mask.any() else 1


def batch_logprobs(logprobs: Callable, rows: Any, idx: list[int], micro_batch_size: int) -> torch.Tensor:
    """No-grad log-probs of rows idx of mtgrpo.Rows -> (len(idx), T) float32 on the CPU, zero past each
    micro-batch's T. logprobs(prompts, responses) -> (R, T): policy_logprobs bound to a model, or alike."""
    T = rows.responses.shape[1]
    out = []
    with torch.no_grad():
        for ix in chunks(idx, micro_batch_size):
            t = used_len(rows.mask[ix])
            logp = logprobs([rows.prompts[i] for i in ix], rows.responses[ix, :t])
            out.append(F.pad(logp.float(), (0, T - t)))
    return torch.cat(out).cpu() if out else torch.zeros(0, T)  # one copy to the host, not one per micro-batch
