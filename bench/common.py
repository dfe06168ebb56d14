"""What several bench scripts share: fixed-length sampling (EOS and pad never sampled)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def suppress_tokens(model, ids: list[int]) -> Iterator[None]:
    """While the block runs, the logits of `ids` are -inf, so they are never sampled: as HF generate's
    suppress_tokens (which sets them to -inf before temperature and top-p), done by a forward hook on the
    lm_head. mtgrpo's log-prob passes use the lm_head *weight*, not its forward, so the hook never touches
    them; it is removed when the block ends. The benchmarks use it to fix response lengths: with ids =
    [pad, EOS] every response is exactly max_new_tokens long (a random model would otherwise stop anywhere).

        with suppress_tokens(model, [pad_id, eos_id]):
            outs = policy.generate(model, prompts, n, max_new_tokens=64, pad_id=pad_id, eos_ids=[eos_id])
    """
    def hook(module, args, logits: torch.Tensor) -> torch.Tensor:
        return logits.index_fill(-1, torch.tensor(ids, device=logits.device), float("-inf"))

    handle = model.get_output_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
