"""
MT-GRPO against its baselines and ablations on the CPU testbed: a small-scale version of the paper's Fig. 4/10
table and of its Fig. 6, 12/13 and 16 diagnostics (arXiv 2602.05547), judged by paired differences over seeds.

The testbed (bench/README.md, "The CPU testbed"): the tiny model warm-started to partial competence
(models.tiny_model_dir: toy_copy ~0.54, toy_next ~0.27, toy_first ~0.23 expected accuracy), then RL with
mtgrpo.PRESETS["tiny"] for 50 steps. For each seed 0..S-1, every method starts from the same warm-started model
and draws from the same data, so the methods are compared seed by seed (paired). Methods:
    grpo, dapo, iwu (lambda 1.0), rps, mtgrpo lambda 0.2, mtgrpo lambda 1.0     (the table)
    mtgrpo lambda 0.2 with inflate=False                                          (Fig. 16: no AAS)
Choices fixed before any run (not tuned on the outcome):
  - lambda 0.2 is the paper's Exp. 1 value, 1.0 near Exp. 2's largest (1.2). IWU-only runs at lambda 1.0, so it
    differs from MT-GRPO lambda 1.0 only by the RP sampler.
  - 50 steps: the budget within which uniform-weight DAPO's slowest task stays behind (the testbed's precondition);
    evaluation every 10 steps and at step 0, 200 test prompts x k = 8 per task (binomial std of a mean@8 <= 0.013).
  - 32 seeds, from the measured paired variance: a first sweep of 10 seeds measured a paired sd of 0.105 for the
    worst-task difference MT-GRPO lambda 0.2 - DAPO (a probe on an earlier testbed had suggested ~0.035, i.e.
    8-10 seeds); a 95% t-interval of half-width 0.04 then needs 29 seeds. The sweep went to 28; those measured
    sd 0.110 (half-width 0.043), which needs 32, so 4 seeds were added: a choice made on the sd alone, before the new
    seeds ran. The 32-seed sweep measured sd 0.103: half-width 0.037. The script prints what the sd of the run at
    hand asks for (seeds_needed).
  - The rule: for every claim, d = the paired difference per seed (or the per-seed value for a one-sample claim),
    its mean and 95% CI = mean +- t(0.975, S-1) sd / sqrt(S). HELD if the CI lies on the claimed side of 0,
    NOT HELD if it lies on the other side, INCONCLUSIVE if it contains 0.
  - Claim (a) is judged on the per-step mean |share - z| over tasks; claim (b) per step on the task with the
    highest filter rate at that step, as its share minus its weight.

Run (from the repo root; needs matplotlib for the PNGs: pip install -r bench/requirements-plot.txt):
    python bench/toy_compare.py                  # 224 runs on --workers 2 processes: 28 min on 2 cores once the 32
                                                 # warm starts are cached; each costs ~40 s once (~11 min for all)
    python bench/toy_compare.py --quick          # smoke test: 1 seed, 4 steps
    python bench/toy_compare.py --reuse          # redo table, claims and figures from finished runs
Writes to --out (default runs/toy_compare): one directory per run (log.jsonl, stdout.txt), table.txt,
summary.json and the PNGs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import sys
import time
from dataclasses import asdict

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
import models  # noqa: E402
import mtgrpo  # noqa: E402
import plot  # noqa: E402
from metrics import average_relative_change, steps_to_threshold  # noqa: E402

LAM_LO, LAM_HI = 0.2, 1.0
METHODS = mtgrpo.METHODS  # method name -> its Config fields (sampler, weighting, filter, eps_high)
VARIANTS = {  # run-directory prefix -> Config overrides
    "grpo": dict(METHODS["grpo"]),
    "dapo": dict(METHODS["dapo"]),
    f"iwu_lam{LAM_HI}": dict(METHODS["iwu"], lam=LAM_HI),
    "rps": dict(METHODS["rps"]),
    f"mtgrpo_lam{LAM_LO}": dict(METHODS["mtgrpo"], lam=LAM_LO),
    f"mtgrpo_lam{LAM_HI}": dict(METHODS["mtgrpo"], lam=LAM_HI),
    f"mtgrpo_lam{LAM_LO}_noaas": dict(METHODS["mtgrpo"], lam=LAM_LO, inflate=False),
}
RELEASED = {  # --released: claim (d) again, under the released code's algorithm (mtgrpo.PRESETS["released"])
    f"mtgrpo_lam{lam}_released": dict(METHODS["mtgrpo"], **mtgrpo.PRESETS["released"], lam=lam)
    for lam in (LAM_LO, LAM_HI)}
FULL = dict(steps=50, eval_every=10, eval_prompts=200, eval_k=8)
QUICK = dict(steps=4, eval_every=2, eval_prompts=16, eval_k=2)
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df: int) -> float:
    """Student's t 0.975 quantile: the table up to 30 degrees of freedom, then its Cornish-Fisher expansion in 1/df
    (within 1e-4 of the exact value from 30 on; 2.0395 at 31)."""
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


# -----------------------------------------------------------------------------
# Running


def config_for(name: str, seed: int, budget: dict, out: str) -> mtgrpo.Config:
    """The tiny preset, the budget, then the variant's overrides."""
    base = {**asdict(mtgrpo.Config()), **mtgrpo.PRESETS["tiny"], **budget, **{**VARIANTS, **RELEASED}[name]}
    return mtgrpo.Config(**{**base, "model": "tiny", "seed": seed, "out_dir": os.path.join(out, f"{name}_s{seed}"), "overwrite": True})


def finished(cfg: mtgrpo.Config) -> bool:
    """A run directory whose log has the same config and reached its last evaluation."""
    try:
        run = plot.load_run(cfg.out_dir)
    except ValueError:
        return False
    same = all(run.config.get(k) == v for k, v in asdict(cfg).items())
    return same and bool(run.evals) and run.evals[-1]["step"] == cfg.steps


def train_quietly(cfg: mtgrpo.Config) -> float:
    """mtgrpo.train(cfg) on one thread, its output sent to out_dir/stdout.txt. -> wall seconds."""
    torch.set_num_threads(1)
    os.makedirs(cfg.out_dir, exist_ok=True)
    t = time.perf_counter()
    with open(os.path.join(cfg.out_dir, "stdout.txt"), "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        mtgrpo.train(cfg)
    return time.perf_counter() - t


def warm_start(seed: int) -> str:
    torch.set_num_threads(1)
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        return models.tiny_model_dir(seed)


# -----------------------------------------------------------------------------
# Metrics per run, paired differences


def run_metrics(run: plot.Run) -> dict:
    """Final accuracies, sampling statistics, and the testbed's preconditions (start accuracy, early filter rate)."""
    last, start = run.evals[-1], run.evals[0]
    used = [r for r in run.train if r["batch_groups"] > 0]
    z = np.array([r["z"] for r in used])               # (S, K)
    share = np.array([r["batch_shares"] for r in used])  # (S, K)
    rho_used = np.array([r["rho"] for r in used])
    most = rho_used.argmax(1)                            # the task filtered most at each step
    early = run.train[:5]                                # filter rate per task over the first 5 steps' rounds
    gen = np.sum([np.sum(r["generated"], 0) for r in early], 0)
    acc = np.sum([np.sum(r["accepted"], 0) for r in early], 0)
    return dict(seed=run.config["seed"], acc=last["acc"], worst=last["worst"], avg=last["avg"],
                start_acc=start["acc"] if start["step"] == 0 else None, filter_rate=(1 - acc / np.maximum(gen, 1)).tolist(),
                share_dev=float(np.abs(share - z).mean()),                          # per step, over tasks
                most_filtered_gap=float((share[np.arange(len(used)), most] - z[np.arange(len(used)), most]).mean()),
                rounds=float(np.mean([r["rounds"] for r in run.train])),
                prompts_generated=float(np.mean([r["prompts_generated"] for r in run.train])),
                s_per_step=float(np.mean([r["seconds"] for r in run.train])))


def ci(d) -> tuple[float, float, float]:
    """Mean and 95% t confidence interval of per-seed values d."""
    d = np.asarray(d, dtype=float)
    if len(d) < 2:
        return float(d.mean()), float("nan"), float("nan")
    half = t975(len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def judge(d, side: int) -> tuple[str, str]:
    """The stated rule: HELD if the CI lies on the claimed side of 0 (side +1: above, -1: below), NOT HELD if on the
    other side, else INCONCLUSIVE. -> (verdict, 'mean [lo, hi]')."""
    m, lo, hi = ci(d)
    text = f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    if math.isnan(lo):
        return "INCONCLUSIVE (one seed)", text
    if (lo > 0 if side > 0 else hi < 0):
        return "HELD", text
    return ("NOT HELD" if (hi < 0 if side > 0 else lo > 0) else "INCONCLUSIVE"), text


def claims(m: dict[str, list[dict]]) -> list[dict]:
    """The paper's claims (a)-(e) as paired comparisons: (claim, d per seed, claimed side of 0)."""
    lo, hi, iwu, na = f"mtgrpo_lam{LAM_LO}", f"mtgrpo_lam{LAM_HI}", f"iwu_lam{LAM_HI}", f"mtgrpo_lam{LAM_LO}_noaas"
    diff = lambda a, b, k: [x[k] - y[k] for x, y in zip(m[a], m[b])]  # noqa: E731
    out = [("(a) RP sampler: realized shares closer to z (mean |share - z|), DAPO - RPS", diff("dapo", "rps", "share_dev"), +1),
           (f"(a) RP sampler: realized shares closer to z, IWU-only - MT-GRPO (both lambda {LAM_HI})", diff(iwu, hi, "share_dev"), +1),
           ("(b) filtering alone under-represents the most-filtered task: its share - z under DAPO",
            [x["most_filtered_gap"] for x in m["dapo"]], -1),
           ("(b) the RP sampler shrinks that under-representation: RPS - DAPO", diff("rps", "dapo", "most_filtered_gap"), +1)]
    for n in (lo, hi):
        lam = n.split("lam")[1]
        out += [(f"(c) MT-GRPO lambda {lam} worst-task accuracy above DAPO's", diff(n, "dapo", "worst"), +1),
                (f"(c) MT-GRPO lambda {lam} worst-task accuracy above GRPO's", diff(n, "grpo", "worst"), +1),
                (f"(c) MT-GRPO lambda {lam} average accuracy not below DAPO's (reported; the paper: about equal)",
                 diff(n, "dapo", "avg"), +1)]
    out += [(f"(d) larger lambda ({LAM_HI} vs {LAM_LO}) raises worst-task accuracy", diff(hi, lo, "worst"), +1),
            (f"(d) larger lambda ({LAM_HI} vs {LAM_LO}) lowers average accuracy", diff(hi, lo, "avg"), -1),
            ("(e, Fig. 16) inflation lowers generation rounds per step: without - with", diff(na, lo, "rounds"), +1)]
    return [dict(claim=c, d=d, verdict=judge(d, side)[0], numbers=judge(d, side)[1]) for c, d, side in out]


def released_claims(m: dict[str, list[dict]]) -> list[dict]:
    """Claim (d) under the released code's algorithm, by the same paired rule."""
    lo, hi = f"mtgrpo_lam{LAM_LO}_released", f"mtgrpo_lam{LAM_HI}_released"
    out = []
    for key, side, what in (("worst", +1, "raises worst-task"), ("avg", -1, "lowers average")):
        d = [x[key] - y[key] for x, y in zip(m[hi], m[lo])]
        out.append((f"(d, released) larger lambda ({LAM_HI} vs {LAM_LO}) {what} accuracy", d, side))
    return [dict(claim=c, d=d, verdict=judge(d, side)[0], numbers=judge(d, side)[1]) for c, d, side in out]


def preconditions(dapo: list[dict], tasks_: list[str]) -> str:
    """The testbed's preconditions, from uniform-weight DAPO alone: start accuracy, early filter rate, end accuracy."""
    lines = ["testbed preconditions (DAPO, uniform weights; mean +- sd over seeds):",
             "  task        start acc (step 0)   filter rate (steps 1-5)   acc at the end"]
    for k, t in enumerate(tasks_):
        st = [x["start_acc"][t] for x in dapo if x["start_acc"]]
        fr, end = [x["filter_rate"][k] for x in dapo], [x["acc"][t] for x in dapo]
        lines.append(f"  {t:11s} {np.mean(st):.3f} +- {np.std(st):.3f}      {np.mean(fr):.3f} +- {np.std(fr):.3f}"
                     f"           {np.mean(end):.3f} +- {np.std(end):.3f}")
    behind = [min(x["acc"].values()) - (sum(x["acc"].values()) - min(x["acc"].values())) / (len(tasks_) - 1) for x in dapo]
    lines.append(f"  slowest task's end accuracy minus the others' mean, per seed: {' '.join(f'{b:+.2f}' for b in behind)}")
    return "\n".join(lines)


def table(m: dict[str, list[dict]], labels: dict[str, str]) -> str:
    ms = lambda xs: f"{np.mean(xs):.3f} ± {np.std(xs, ddof=1) if len(xs) > 1 else 0:.3f}"  # noqa: E731
    head = ["method", "worst-task acc", "avg acc", "rounds/step", "prompts generated/step", "s/step"]
    rows = [[labels[n], ms([x["worst"] for x in v]), ms([x["avg"] for x in v]), ms([x["rounds"] for x in v]),
             f"{np.mean([x['prompts_generated'] for x in v]):.0f}", f"{np.mean([x['s_per_step'] for x in v]):.2f}"]
            for n, v in m.items()]
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: " | ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    n = len(next(iter(m.values())))
    return "\n".join([f"mean ± sample std over {n} seed(s), last evaluation", line(head), "-+-".join("-" * w for w in widths)]
                     + [line(r) for r in rows])


def seeds_needed(d, half_width: float = 0.04) -> int:
    """Seeds for a 95% CI (the rule's t-interval) of half-width `half_width` at the measured paired sd."""
    if len(d) < 2:
        return 0
    sd, n = np.std(d, ddof=1), 2
    while t975(n - 1) * sd / math.sqrt(n) > half_width:
        n += 1
    return n


# -----------------------------------------------------------------------------
# Figures (bench/plot.py)


def figures(runs: dict[str, list[plot.Run]], labels: dict[str, str], out: str) -> list[str]:
    g = lambda names: {labels[n]: runs[n] for n in names if n in runs}  # noqa: E731
    main = [n for n in VARIANTS if not n.endswith("_noaas")]
    lo, hi = f"mtgrpo_lam{LAM_LO}", f"mtgrpo_lam{LAM_HI}"
    return [plot.plot_compare(g(main), os.path.join(out, "fig4_worst_avg.png")),
            plot.plot_tasks(g(["dapo", lo, hi]), os.path.join(out, "fig6_tasks_weights.png")),
            plot.plot_shares(g(["dapo", f"iwu_lam{LAM_HI}", "rps", hi]), os.path.join(out, "fig12_13_shares.png")),
            plot.plot_metric(g([lo, f"{lo}_noaas"]), "rounds", os.path.join(out, "fig16_rounds.png"))]


# -----------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="MT-GRPO vs baselines on the CPU testbed (paper Fig. 4/6/10/12/13/16), paired over seeds.")
    p.add_argument("--out", default="runs/toy_compare")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..S-1 per variant (default 32, --quick 1)")
    p.add_argument("--steps", type=int, default=None, help=f"training steps per run (default {FULL['steps']}, --quick {QUICK['steps']})")
    p.add_argument("--workers", type=int, default=2, help="runs in parallel, one torch thread each")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 4 steps, 16 test prompts x 2 samples")
    p.add_argument("--reuse", action="store_true", help="skip runs whose directory holds a finished log of the same config")
    p.add_argument("--released", action="store_true", help="only claim (d), lambda 1.0 vs 0.2 under --preset released")
    args = p.parse_args(argv)
    budget = dict(QUICK if args.quick else FULL)
    seeds = list(range(args.seeds if args.seeds is not None else 1 if args.quick else 32))
    if args.steps:
        budget.update(steps=args.steps, eval_every=max(1, min(budget["eval_every"], args.steps // 2)))
    try:
        plot.pyplot()
    except ImportError:
        print("error: the figures need matplotlib: pip install -r bench/requirements-plot.txt", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    names = list(RELEASED) if args.released else list(VARIANTS)
    cfgs = {(n, s): config_for(n, s, budget, args.out) for s in seeds for n in names}
    todo = [c for c in cfgs.values() if not (args.reuse and finished(c))]
    print(f"{len(cfgs)} runs ({len(cfgs) - len(todo)} reused), {args.workers} workers; warm-starting {len(seeds)} seed(s) first", flush=True)
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        pool.map(warm_start, seeds, chunksize=1)  # cached on disk: the runs then only load them
        for i, wall in enumerate(pool.imap(train_quietly, todo), 1):
            print(f"[{i}/{len(todo)}] {os.path.basename(todo[i - 1].out_dir)}: {wall:.0f} s, total {time.perf_counter() - t0:.0f} s", flush=True)

    runs = {n: [plot.load_run(cfgs[n, s].out_dir) for s in seeds] for n in names}
    if args.released:
        m = {n: [run_metrics(r) for r in runs[n]] for n in names}
        text = "\n".join([table(m, {n: n for n in names}), "", "claims (paired difference per seed: mean [95% CI]):"]
                         + [f"  {c['verdict']:12s} {c['numbers']}  {c['claim']}" for c in released_claims(m)]
                         + [f"wall time {time.perf_counter() - t0:.0f} s"])
        print(text)
        with open(os.path.join(args.out, "table_released.txt"), "w") as f:
            f.write(text + "\n")
        return 0
    tasks_, labels = runs["dapo"][0].tasks, {n: runs[n][0].label for n in VARIANTS}
    m = {n: [run_metrics(r) for r in runs[n]] for n in VARIANTS}
    checked = claims(m)
    worst_d = next(c["d"] for c in checked if c["claim"].startswith(f"(c) MT-GRPO lambda {LAM_LO} worst-task accuracy above DAPO"))
    noise = max(math.sqrt(a * (1 - a) / (budget["eval_prompts"] * budget["eval_k"])) for v in m.values() for x in v for a in x["acc"].values())
    text = "\n".join([preconditions(m["dapo"], tasks_), "", table(m, labels), "",
                      f"evaluation noise: binomial std of a task's mean@{budget['eval_k']} <= {noise:.3f} "
                      f"({budget['eval_prompts']} prompts x k = {budget['eval_k']})",
                      f"paired sd of the worst-task difference MT-GRPO lambda {LAM_LO} - DAPO: {np.std(worst_d, ddof=1) if len(worst_d) > 1 else 0:.3f}"
                      f" -> {seeds_needed(worst_d)} seeds resolve +-0.04 (ran {len(seeds)})", "",
                      "claims (paired difference per seed: mean [95% CI]; HELD / NOT HELD if the CI excludes 0, else INCONCLUSIVE):"]
                     + [f"  {c['verdict']:12s} {c['numbers']}  {c['claim']}" for c in checked]
                     + ["", f"budget {budget}; wall time {time.perf_counter() - t0:.0f} s ({len(todo)} of {len(cfgs)} runs trained here; "
                            f"{args.workers} workers x 1 thread; load average at end {os.getloadavg()[0]:.1f})"])
    print(text)
    with open(os.path.join(args.out, "table.txt"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(dict(budget=budget, seeds=seeds, tasks=tasks_, labels=labels, per_seed=m, claims=checked), f, indent=1)
    for path in figures(runs, labels, args.out) + [os.path.join(args.out, x) for x in ("table.txt", "summary.json")]:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
