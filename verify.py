"""
Answer checking and rewards for mtgrpo (arXiv 2602.05547, Sec. 6 and App. E): a completion earns
1.0 when its answer is correct, 0.1 when it gives a well-formatted but wrong answer, 0.0 otherwise.
Accuracy counts only 1.0 (format credit never counts).

Model output is untrusted input. Nothing here calls eval/exec or sympy in this process: the released
Countdown reward (Python `eval`) hangs on a power tower of the given numbers, and reasoning-gym's (sympy
`parse_expr`) runs code and accepts `x - x` or `0e0` tricks. Every check here is linear in the completion's
length, with the answer's length and nesting capped before parsing, so 1 MB of anything is scored in
milliseconds. The verifiers that need sympy ("math": math-verify; "rg": a reasoning-gym dataset's own
score_answer) get only the extracted box, and run it in sandbox.py's worker process with a time limit.

    reward(completion, example)          -> 1.0 | 0.1 | 0.0, never raises on any str
    rewards(completions, examples)       -> the same for many, sandboxed checks batched into one message
    extract_boxed(text, rule="last")     -> content of the last \\boxed{...}, or None
"""

from __future__ import annotations

import importlib.util
from fractions import Fraction

import sandbox
import scorers

BOX = "\\boxed{"
MAX_ANSWER_CHARS = 4096   # a box longer than this is no answer (an ARC-1D row of 40 cells is 79 chars)
MAX_EXPR_CHARS = 256      # a Countdown expression of 6 numbers <= 100 fits easily
MAX_DEPTH = 32            # parentheses / unary plus-minus nesting accepted in a Countdown expression
MAX_DIGITS = 6            # longest integer literal parsed (the given numbers have at most 3 digits)
SANDBOX_TIMEOUT = 5.0     # seconds per sandboxed check (math-verify's own default limit)


# -----------------------------------------------------------------------------
# \boxed{} extraction

def extract_boxed(text: str, rule: str = "last") -> str | None:
    """Content of the last `\\boxed{...}` (braces balanced), stripped; None if there is none, or it does
    not close within MAX_ANSWER_CHARS (an over-long box is no answer). "Last" is the last opening, so in
    `\\boxed{\\boxed{5}+1}` it is the inner `5`. rule="last": the last box anywhere
    (what graders usually do). rule="last_line": the released code's rule, the last box on the last
    non-empty line only, so an answer boxed mid-text and followed by more text gets no credit.
    Cost: one rfind over the text plus a brace scan of at most MAX_ANSWER_CHARS characters."""
    if rule == "last_line":
        text = text.rstrip()
        text = text[text.rfind("\n") + 1:]
    elif rule != "last":
        raise ValueError(f"box rule must be 'last' or 'last_line', got {rule!r}")
    start = text.rfind(BOX)
    if start < 0:
        return None
    depth, i = 1, start + len(BOX)
    for j in range(i, min(len(text), i + MAX_ANSWER_CHARS + 1)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


# -----------------------------------------------------------------------------
# Countdown: a small safe parser over exact fractions

class _Reject(Exception):
    """The expression is not well formed (or over a cap): a wrong answer, never a crash."""


def _tokens(expr: str) -> list[str]:
    out, i = [], 0
    while i < len(expr):
        c = expr[i]
        if c in " \t":
            i += 1
        elif c in "+-*/()":
            out.append(c)
            i += 1
        elif c in "0123456789":    # ASCII digits only: str.isdigit() would accept unicode digits
            j = i
            while j < len(expr) and expr[j] in "0123456789":
                j += 1
            if j - i > MAX_DIGITS:
                raise _Reject
            out.append(expr[i:j])
            i = j
        else:                      # letters, '.', 'e', '**' pieces, NUL, unicode: not in the grammar
            raise _Reject
    return out


def parse_countdown(expr: str) -> tuple[Fraction, list[int]]:
    """Value and integer literals of an arithmetic expression over integers with + - * /, unary plus/minus
    and parentheses (nothing else: no powers, decimals, names or calls). Exact Fraction arithmetic. Raises
    ValueError on anything malformed, over MAX_EXPR_CHARS / MAX_DEPTH, or dividing by zero.

        expr   := term (('+' | '-') term)*
        term   := unary (('*' | '/') unary)*
        unary  := ('+' | '-') unary | atom
        atom   := INT | '(' expr ')'
    """
    if len(expr) > MAX_EXPR_CHARS:
        raise ValueError("expression too long")
    try:
        toks = _tokens(expr)
    except _Reject:
        raise ValueError("unexpected character or over-long number") from None
    pos, literals = 0, []

    def peek() -> str | None:
        return toks[pos] if pos < len(toks) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return toks[pos - 1]

    def expression(depth: int) -> Fraction:
        if depth > MAX_DEPTH:          # bounds recursion: never a RecursionError
            raise _Reject
        value = term(depth)
        while peek() in ("+", "-"):
            value = value + term(depth) if take() == "+" else value - term(depth)
        return value

    def term(depth: int) -> Fraction:
        value = unary(depth)
        while peek() in ("*", "/"):
            op, rhs = take(), unary(depth)
            if op == "/" and rhs == 0:
                raise _Reject
            value = value * rhs if op == "*" else value / rhs
        return value

    def unary(depth: int) -> Fraction:
        if depth > MAX_DEPTH:          # a run of signs nests like parentheses, so it has the same cap
            raise _Reject
        if peek() in ("+", "-"):       # "+87-40-31", "87 - +40 - 31": plus is as valid as minus
            sign = take()
            value = unary(depth + 1)
            return value if sign == "+" else -value
        return atom(depth)

    def atom(depth: int) -> Fraction:
        tok = peek()
        if tok == "(":
            take()
            value = expression(depth + 1)
            if peek() != ")":
                raise _Reject
            take()
            return value
        if tok is not None and tok.isdigit():
            take()
            literals.append(int(tok))
            return Fraction(int(tok))
        raise _Reject

    try:
        value = expression(0)
    except _Reject:
        raise ValueError("malformed expression") from None
    if pos != len(toks):
        raise ValueError("trailing tokens")
    return value, literals


def countdown_correct(answer: str, numbers: list[int], target: int) -> bool:
    """The expression equals `target` exactly and uses each of `numbers` exactly once (as a multiset)."""
    try:
        value, literals = parse_countdown(answer)
    except ValueError:
        return False
    return value == target and sorted(literals) == sorted(numbers)


# -----------------------------------------------------------------------------
# Per-verifier correctness of an extracted answer, and the reward

def _normalize_grid(s: str) -> str:
    return " ".join(s.split())    # ARC rows: "0 0 3 3" compared cell by cell, whitespace runs ignored


CHECKS = {   # verifier name -> is the extracted answer correct for the example
    "countdown": lambda answer, ex: countdown_correct(answer, ex.info["numbers"], ex.info["target"]),
    "name": lambda answer, ex: answer.strip().casefold() == ex.answer.strip().casefold(),   # Zebra
    "grid": lambda answer, ex: _normalize_grid(answer) == _normalize_grid(ex.answer),      # ARC-1D: exact cells
    "exact": lambda answer, ex: answer.strip() == ex.answer.strip(),                       # bring-your-own
}
SANDBOXED = {   # verifier -> (scorer run in sandbox.py's worker, its args, its warmup, the package it needs)
    "math": (scorers.math_equal, lambda answer, ex: (ex.answer, answer), scorers.warm_math, "math_verify",
             "math"),
    "rg": (scorers.rg_score, lambda answer, ex: (ex.info, answer), scorers.warm_rg, "reasoning_gym", "rg"),
}
RG_INFO = {"dataset": str, "config": dict, "seed": int, "size": int, "index": int}   # regenerates the item
VERIFIERS = (*CHECKS, *SANDBOXED, "toy")


def check_info(verifier: str, info) -> None:
    """Raise ValueError naming what a bring-your-own example's `info` lacks for its verifier: countdown
    needs {"numbers": [int, ...], "target": int}, toy needs {"alphabet": "<symbols>"}, rg how to regenerate
    its item (RG_INFO), the rest nothing; math and rg need their package.
    Checked when a task is loaded, so a bad line fails there and not mid-training inside reward()."""
    if verifier not in VERIFIERS:
        raise ValueError(f"unknown verifier {verifier!r}; known: {', '.join(VERIFIERS)}")
    if not isinstance(info, dict):
        raise ValueError(f"\"info\" must be a JSON object, got {type(info).__name__}")

    def is_int(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    numbers = info.get("numbers")
    if verifier == "countdown" and not (isinstance(numbers, list) and numbers and all(map(is_int, numbers))
                                        and is_int(info.get("target"))):
        raise ValueError('verifier "countdown" needs "info": {"numbers": [integers], "target": integer}, '
                         f'got {info!r:.200}')
    if verifier == "toy" and not (isinstance(info.get("alphabet"), str) and info["alphabet"]):
        raise ValueError(f'verifier "toy" needs "info": {{"alphabet": "<its symbols>"}}, got {info!r:.200}')
    if verifier == "rg" and not all(isinstance(info.get(k), t) for k, t in RG_INFO.items()):
        raise ValueError(f'verifier "rg" needs "info": {{"dataset", "config", "seed", "size", "index"}}, '
                         f'got {info!r:.200}')
    if verifier in SANDBOXED and importlib.util.find_spec(SANDBOXED[verifier][3]) is None:
        raise ValueError(f'verifier "{verifier}" needs {SANDBOXED[verifier][3]}: '
                         f'pip install -r requirements-{SANDBOXED[verifier][4]}.txt')


def _toy_reward(completion: str, ex) -> float:
    """Toy tasks answer with one character, no box: the first non-space character of the completion.
    1.0 if it is the answer, 0.1 if it is at least a symbol of the task's alphabet, else 0.0."""
    head = completion.lstrip()[:1]
    if head == ex.answer:
        return 1.0
    return 0.1 if head and head in ex.info["alphabet"] else 0.0


def reward(completion: str, ex, box_rule: str = "last") -> float:
    """The paper's reward: 1.0 correct, 0.1 a boxed but wrong answer, 0.0 no (closed, non-empty) box.
    `ex` is an example.Example; its `verifier` picks the check. Never raises on any completion string."""
    return rewards([completion], [ex], box_rule)[0]


def rewards(completions: list[str], examples: list, box_rule: str = "last") -> list[float]:
    """reward() of each (completion, example) pair. Sandboxed checks (math, rg) go to the worker in one batch
    per verifier, each within SANDBOX_TIMEOUT seconds. A check that overruns it, raises or kills the worker
    scores 0.0, not the 0.1 format credit: an answer we cannot check earns nothing (stalling us never pays)."""
    out: list[float] = []
    pending: dict[str, list[tuple[int, str, object]]] = {}
    for i, (completion, ex) in enumerate(zip(completions, examples)):
        if ex.verifier == "toy":
            out.append(_toy_reward(completion, ex))
            continue
        if ex.verifier not in VERIFIERS:
            raise ValueError(f"unknown verifier {ex.verifier!r}; known: {', '.join(VERIFIERS)}")
        answer = extract_boxed(completion, box_rule)
        if not answer:
            out.append(0.0)
        elif ex.verifier in SANDBOXED:
            out.append(0.1)   # until the worker says 1.0
            pending.setdefault(ex.verifier, []).append((i, answer, ex))
        else:
            out.append(1.0 if CHECKS[ex.verifier](answer, ex) else 0.1)
    for verifier, items in pending.items():
        scorer, args, warmup = SANDBOXED[verifier][:3]
        calls = [args(answer, ex) for _, answer, ex in items]
        results = sandbox.call_all(scorer, calls, SANDBOX_TIMEOUT, None, warmup)
        for (i, _, _), result in zip(items, results):
            out[i] = 0.0 if result is None else 1.0 if result == 1.0 else 0.1
    return out


def is_correct(completion: str, ex, box_rule: str = "last") -> bool:
    """Accuracy counts only full reward."""
    return reward(completion, ex, box_rule) == 1.0


def score(examples: list, outputs: list, tokenizer, box_rule: str = "last") -> list:
    """The trainer's rewards: for each prompt's (token ids (n, T), mask (n, T)) decode every response up to its first
    EOS and reward() it -> a tensor (n,) per prompt. All prompts' responses go through one rewards() call."""
    import torch

    texts = [tokenizer.batch_decode([r[m.bool()] for r, m in zip(resp, mask)], skip_special_tokens=True)
             for resp, mask in outputs]
    each = [ex for ex, group in zip(examples, texts) for _ in group]
    flat = rewards([t for group in texts for t in group], each, box_rule)
    scores = iter(flat)
    return [torch.tensor([next(scores) for _ in group]) for group in texts]
