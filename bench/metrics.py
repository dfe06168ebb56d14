"""Comparison metrics of the paper's Sec. 6 that need two runs or a run's whole history, for the bench
scripts (mtgrpo.py logs the per-run ones: mean@k, worst-task and average accuracy)."""

from __future__ import annotations


def average_relative_change(acc: dict[str, float], baseline: dict[str, float]) -> float:
    """(1/K) sum_k (Acc(k) - Acc_b(k)) / Acc_b(k) x 100 over the tasks both have; tasks where the
    baseline scores 0 are skipped (the ratio is undefined)."""
    ks = [k for k in acc if k in baseline and baseline[k] > 0]
    if not ks:
        raise ValueError("average_relative_change: no task with baseline accuracy > 0 in common")
    return 100.0 * sum((acc[k] - baseline[k]) / baseline[k] for k in ks) / len(ks)


def steps_to_threshold(steps: list[int], worst: list[float], threshold: float) -> int | None:
    """First step at which worst-task accuracy reaches `threshold` (None if never)."""
    return next((s for s, w in zip(steps, worst) if w >= threshold), None)
