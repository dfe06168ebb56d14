"""Subroutine 2 on the CPU testbed (the paper's Fig. 2): with the accuracy signal alone and eta near 0, the task
weights collapse onto the current worst task.

Runs `mtgrpo.train` on the tiny testbed with --weighting reward_l2 --xi-optimizer sgd (the paper's step
xi <- xi - beta (g + eta xi), g_k = z_k (J_k - z.J)), eta = 0 and beta = 2, then prints per step z, J and whether
the largest weight sits on the task with the lowest J (the current worst task), and the largest weight.

    python bench/fig2_collapse.py            # 40 steps, ~1 min on 2 cores with the warm start cached
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import asdict

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import mtgrpo as M  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--beta", type=float, default=2.0)
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--out", default="runs/fig2_collapse")
    a = p.parse_args()
    cfg = M.Config(**{**asdict(M.Config()), **M.PRESETS["tiny"], "steps": a.steps, "eval_every": 0,
                      "eval_prompts": 50, "eval_k": 2, "weighting": "reward_l2", "xi_optimizer": "sgd",
                      "xi_lr": a.beta, "eta": a.eta, "out_dir": a.out, "overwrite": True})
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        M.train(cfg)
    train = [r for r in map(json.loads, open(os.path.join(a.out, "log.jsonl"))) if r["kind"] == "train"]
    on_worst = 0
    print("step | z (after the step)   | J                    | max z on the lowest J")
    for r in train:
        z, J = np.array(r["z_next"]), np.array(r["J"])
        hit = int(z.argmax() == J.argmin())
        on_worst += hit
        print(f"{r['step']:4d} | {' '.join(f'{x:.3f}' for x in z)} | {' '.join(f'{x:.3f}' for x in J)} | "
              f"{'yes' if hit else 'no'}")
    last = np.array([r["z_next"] for r in train[-10:]]).max(axis=1)
    print(f"largest weight on the lowest-J task in {on_worst} of {len(train)} steps; "
          f"max z over the last 10 steps: {last.min():.3f} to {last.max():.3f}")


if __name__ == "__main__":
    main()
