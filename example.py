"""
The unit every task source makes and verify.py checks: an Example, one task instance (its question, a gold
answer, and which verifier checks it). tasks.py's generators, rg_tasks.py and datafiles.py all make Examples;
they import them from here, so that tasks.py can load the other two without an import circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LEVELS = ("easy", "medium", "hard", "very_hard")   # the paper's difficulties; very_hard: evaluated, never trained


@dataclass(frozen=True)
class Example:
    task: str          # task name, e.g. "countdown_medium"
    question: str      # the task text, ending with its answer-format instruction
    answer: str        # a gold answer (for Countdown: one valid expression of many)
    verifier: str      # which check verify.reward applies: countdown | name | grid | exact | toy
    info: dict = field(default_factory=dict, compare=False, hash=False)   # what the verifier needs
