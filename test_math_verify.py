"""The "math" verifier (math-verify in sandbox.py's worker) and the worker itself: hand-checked equivalences
and non-equivalences, adversarial answers in bounded time, and linear-time box extraction. The sandbox tests
need nothing optional; the math ones need requirements-math.txt."""

import os
import time

import pytest

import sandbox
import verify
from example import Example


def boxed(answer: str) -> str:
    return f"So the answer is \\boxed{{{answer}}}."


# -----------------------------------------------------------------------------
# The worker: results in order, a default for a timeout, an exception or a crash, and it comes back

def test_sandbox_returns_results_in_order_and_defaults_on_errors():
    got = sandbox.call_all(pow, [(2, 10), (3, 2), (0, -1)], timeout=5.0, default="d")
    assert got == [1024, 9, "d"]   # 0 ** -1 raises


def test_sandbox_cuts_off_a_slow_call_and_recovers():
    box = sandbox.Sandbox()
    try:
        assert box.call_all(pow, [(2, 3)], timeout=30.0, default=None) == [8]   # started: now time a call
        t0 = time.perf_counter()
        got = box.call_all(time.sleep, [(0,), (60,), (0,)], timeout=0.5, default="late")
        assert got == [None, "late", None]
        assert time.perf_counter() - t0 < 5.0   # the 0.5 s limit, then a fresh worker for the third call
        assert box.call_all(os._exit, [(3,)], timeout=5.0, default="crashed") == ["crashed"]
        assert box.call_all(pow, [(2, 5)], timeout=5.0, default=None) == [32]
    finally:
        box.kill()


# -----------------------------------------------------------------------------
# math-verify: equivalence, up to what it knows

EQUAL = [("\\frac{1}{2}", "0.5"), ("0.5", "\\frac{1}{2}"), ("72", "72.0"), ("\\{1,2\\}", "\\{2, 1\\}"),
         ("[0,1)", "[0, 1)"), ("\\sqrt{2}", "2^{1/2}"), ("(x+1)^2", "x^2+2x+1"),
         ("\\frac{\\pi}{2}", "\\pi/2")]
DIFFERENT = [("\\frac{1}{2}", "0.51"), ("72", "27"), ("\\{1,2\\}", "\\{1,3\\}"), ("(0,1]", "[0,1]"),
             ("[0,1)", "(0,1)"), ("\\sqrt{2}", "2"), ("x^2", "2x")]


def test_math_verifier_accepts_equivalent_answers_and_rejects_others():
    pytest.importorskip("math_verify", reason="pip install -r requirements-math.txt")
    examples = [Example("math", "q", gold, "math") for gold, _ in EQUAL + DIFFERENT]
    completions = [boxed(answer) for _, answer in EQUAL + DIFFERENT] + ["72"]
    got = verify.rewards(completions, examples + [examples[2]])
    assert got == [1.0] * len(EQUAL) + [0.1] * len(DIFFERENT) + [0.0]


@pytest.mark.parametrize("answer", ["9^{9^{9^{9}}}", "(10^{10^{10}})!", "{" * 2000 + "1" + "}" * 2000],
                         ids=["tower", "factorial", "braces"])
def test_pathological_math_answers_score_zero_at_the_limit(answer, monkeypatch):
    pytest.importorskip("math_verify", reason="pip install -r requirements-math.txt")
    monkeypatch.setattr(verify, "SANDBOX_TIMEOUT", 1.0)
    ex = Example("math", "q", "2", "math")
    assert verify.reward(boxed("2"), ex) == 1.0   # a warm worker: the timing below is the call's own
    t0 = time.perf_counter()
    assert verify.reward(boxed(answer), ex) == 0.0
    assert time.perf_counter() - t0 < 2.0


def test_code_in_a_math_answer_is_not_run():
    pytest.importorskip("math_verify", reason="pip install -r requirements-math.txt")
    ex = Example("math", "q", "5", "math")
    answer = "__import__('os').environ.__setitem__('MTGRPO_PWNED', '1')"
    assert verify.reward(boxed(answer), ex) in (0.0, 0.1) and "MTGRPO_PWNED" not in os.environ


# -----------------------------------------------------------------------------
# Our own parsing stays linear: a megabyte of adversarial text never reaches the worker

@pytest.mark.parametrize("text", [
    "\\boxed{" + "{" * 1_000_000 + "}" * 1_000_000 + "}",   # nested braces: no close within the cap
    "\\boxed{" * 150_000,                                  # a million characters of openings
    "}" * 1_000_000 + "\\boxed{",
], ids=["nested", "openings", "closings"])
def test_a_megabyte_of_braces_is_scored_zero_fast(text):
    ex = Example("math", "q", "2", "math")
    t0 = time.perf_counter()
    assert verify.extract_boxed(text) is None and verify.reward(text, ex) == 0.0
    assert time.perf_counter() - t0 < 0.05
