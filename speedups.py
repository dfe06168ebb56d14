"""
Speed-ups of mtgrpo.py's rollouts, each equal to the plain code it replaces (the tests compare them) and each
turned off by --no-share-prompts. GRPO's N rows of a group share one prompt: run the prompt once and let the
rows continue from its KV cache, in generate() and in the log-prob passes. The prompt then costs 1/N of its
plain cost (N = 72 in Exp. 1); in a training pass the gradients sum back into the one prompt pass.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from models import left_pad


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


def can_share(model, prompts: list[list[int]]) -> bool:
    """A training pass can share prompts when some repeat, unless gradient checkpointing is on in train mode:
    HF then drops the KV cache of checkpointed layers, and the responses would lose their prompt."""
    checkpointed = any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    return len({tuple(p) for p in prompts}) < len(prompts) and not (model.training and checkpointed)


def shared_prompt_hidden(model, prompts: list[list[int]], responses: torch.Tensor,
                         pad_id: int) -> torch.Tensor:
    """The last hidden states that predict each response token, (R, T, H), as mtgrpo.response_hidden computes
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
