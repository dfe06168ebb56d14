"""
Scorers that may run `eval` on model output (through sympy's parser): they run only inside sandbox.py's
worker process, called by verify.py's "math" and "rg" verifiers. Each returns a plain bool or float; a raised
exception or an overrun of the time limit scores as wrong.

    math_equal(gold, answer)   math-verify: equal up to equivalence (0.5 = \\frac{1}{2}, sets, intervals)
    rg_score(info, answer)     reasoning-gym's own score_answer of the item `info` names
"""

from __future__ import annotations

import functools
import json


def warm_math() -> None:
    """Import math-verify (and sympy) before the first timed call."""
    import math_verify  # noqa: F401


def math_equal(gold: str, answer: str) -> bool:
    """math-verify's verdict on two boxed contents: both are parsed as LaTeX inside \\boxed{} (so `72`,
    `72.0`, `\\frac{1}{2}`, `0.5`, `\\{1, 2\\}` and `[0, 1)` all parse), gold first: verify is not
    symmetric."""
    from math_verify import parse, verify

    parsed_gold, parsed_answer = parse(f"\\boxed{{{gold}}}"), parse(f"\\boxed{{{answer}}}")
    return bool(parsed_gold and parsed_answer and verify(parsed_gold, parsed_answer))


def warm_rg() -> None:
    """Import reasoning-gym (~4 s: it imports every dataset) before the first timed call."""
    import reasoning_gym  # noqa: F401


@functools.lru_cache(maxsize=64)
def _rg_dataset(dataset: str, config_json: str, seed: int, size: int):
    import reasoning_gym

    return reasoning_gym.create_dataset(dataset, seed=seed, size=size, **json.loads(config_json))


@functools.lru_cache(maxsize=4096)
def _rg_entry(dataset: str, config_json: str, seed: int, size: int, index: int) -> dict:
    return _rg_dataset(dataset, config_json, seed, size)[index]


def rg_score(info: dict, answer: str) -> float:
    """reasoning-gym's score_answer for item `index` of dataset(seed, size, **config), regenerated from `info`
    (items are deterministic in seed and index; the Example carries only this JSON, which survives the TRL
    path's dataset columns)."""
    key = (info["dataset"], json.dumps(info["config"], sort_keys=True), info["seed"], info["size"])
    return float(_rg_dataset(*key).score_answer(answer, _rg_entry(*key, info["index"])))
