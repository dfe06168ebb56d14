"""
MT-GRPO against its baselines and ablations on the CPU toy mixture (issue 7): a small-scale version of
the paper's Fig. 4/10 table and of its Fig. 6, 12/13 and 16 diagnostics (arXiv 2602.05547).

The tiny model (mtgrpo.PRESETS["tiny"]) is trained on toy_copy, toy_next and toy_sum by mtgrpo.train(),
in this process, one run after another, on --threads torch threads, with seeds 0..S-1 for each of:
    grpo, dapo, iwu (lambda 1.0), rps, mtgrpo lambda 0.2, mtgrpo lambda 1.0     (the table)
    mtgrpo lambda 0.2 with inflate=False                                          (Fig. 16: no AAS)
A seed fixes the model init, the data and the sampling stream, so every method of a seed starts from
the same model; average relative change is taken per seed against that seed's DAPO, then averaged.
Choices (not tuned on the outcome):
  - lambda 0.2 is the paper's Exp. 1 value, 1.0 near Exp. 2's largest (1.2): they differ 5x.
  - IWU-only uses lambda 1.0, so it differs from MT-GRPO lambda 1.0 only by the RP sampler
    (the paper's ablation also runs IWU at its larger lambda, 0.25).
  - the Fig. 16 ablation re-runs MT-GRPO lambda 0.2 with inflate=False on the same seeds (the paper
    ablates AAS at lambda 0.2); its row is left out of the claims (a)-(d).
  - evaluation: 64 test prompts x k=4 samples per task (256 samples: std of an accuracy <= 0.03);
    the table reports the last evaluation; "steps to worst >= T" scans every evaluation.
  - claim (a) is judged on the per-step mean |share - z| over tasks; with B = 16 part of it is the
    multinomial noise of the targets n ~ Mult(B, z) themselves, so the gap between the time-averaged
    share and the time-averaged z (over steps, per task) is printed beside it.
  - claim (b) is judged per step on the task with the highest filter rate at that step (which task that
    is changes as tasks get learned), as the mean over steps of its share minus its weight.
  - claims compare means over seeds: a gap no larger than the largest std over seeds of the
    means compared is reported INCONCLUSIVE rather than HELD / NOT HELD.

Run (from the repo root; needs matplotlib for the PNGs, pip install matplotlib):
    python bench/toy_compare.py                    # 21 runs; ~3.5 min on 2 idle cores
    python bench/toy_compare.py --quick            # smoke test, 1 seed, a few steps (~1-2 min)
    python bench/toy_compare.py --reuse            # redo table and figures from finished runs
Writes to --out (default runs/toy_compare): one directory per run (log.jsonl, stdout.txt), table.txt,
summary.json and the PNGs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
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
FULL = dict(steps=60, eval_every=10, eval_prompts=64, eval_k=4)
QUICK = dict(steps=4, eval_every=2, eval_prompts=16, eval_k=2)


# -----------------------------------------------------------------------------
# Running


def config_for(name: str, seed: int, budget: dict, out: str) -> mtgrpo.Config:
    """The tiny preset, the budget, then the variant's overrides."""
    base = {**asdict(mtgrpo.Config()), **mtgrpo.PRESETS["tiny"], **budget, **VARIANTS[name]}
    return mtgrpo.Config(**{**base, "model": "tiny", "seed": seed, "out_dir": os.path.join(out, f"{name}_s{seed}")})


def finished(cfg: mtgrpo.Config) -> bool:
    """A run directory whose log has the same config and reached its last evaluation."""
    try:
        run = plot.load_run(cfg.out_dir)
    except ValueError:
        return False
    same = all(run.config.get(k) == v for k, v in asdict(cfg).items())
    return same and bool(run.evals) and run.evals[-1]["step"] == cfg.steps


def train_quietly(cfg: mtgrpo.Config) -> float:
    """mtgrpo.train(cfg) with its per-step lines sent to out_dir/stdout.txt. -> wall seconds."""
    os.makedirs(cfg.out_dir, exist_ok=True)
    t = time.perf_counter()
    with open(os.path.join(cfg.out_dir, "stdout.txt"), "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        mtgrpo.train(cfg)
    return time.perf_counter() - t


# -----------------------------------------------------------------------------
# Metrics per run and per variant


def run_metrics(run: plot.Run, dapo: plot.Run, threshold: float) -> dict:
    """Final accuracies, relative change vs the same seed's DAPO, steps to threshold, sampling stats."""
    last = run.evals[-1]
    try:
        rel = average_relative_change(last["acc"], dapo.evals[-1]["acc"])
    except ValueError:  # DAPO scored 0 on every task: undefined
        rel = float("nan")
    used = [r for r in run.train if r["batch_groups"] > 0]
    z = np.array([r["z"] for r in used])               # (S, K)
    share = np.array([r["batch_shares"] for r in used])  # (S, K)
    rho = np.array([r["rho"] for r in run.train])
    rho_used = np.array([r["rho"] for r in used])
    most = rho_used.argmax(1)                            # the task filtered most at each step
    steps = np.arange(len(used))
    return dict(seed=run.config["seed"], acc=last["acc"], worst=last["worst"], avg=last["avg"], rel_change=rel,
                steps_to_threshold=steps_to_threshold([e["step"] for e in run.evals], [e["worst"] for e in run.evals],
                                                      threshold),
                share_dev=float(np.abs(share - z).mean()),          # per step, over tasks
                share_gap=float(np.abs(share.mean(0) - z.mean(0)).mean()),  # time-averaged, over tasks
                most_filtered_gap=float((share[steps, most] - z[steps, most]).mean()),  # claim (b)
                z_mean=z.mean(0).tolist(), share_mean=share.mean(0).tolist(), rho_mean=rho.mean(0).tolist(),
                rounds=float(np.mean([r["rounds"] for r in run.train])),
                prompts_generated=float(np.mean([r["prompts_generated"] for r in run.train])),
                s_per_step=float(np.mean([r["seconds"] for r in run.train])))


def mean_std(xs) -> tuple[float, float]:
    xs = np.array([x for x in xs if x is not None and not np.isnan(x)], dtype=float)
    if not len(xs):
        return float("nan"), float("nan")
    return float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else 0.0   # sample std over seeds


def summarize(per_seed: list[dict]) -> dict:
    """Mean and std over seeds of each scalar; steps to threshold over the seeds that reached it."""
    out = {k: mean_std([m[k] for m in per_seed]) for k in
           ("worst", "avg", "rel_change", "share_dev", "share_gap", "most_filtered_gap", "rounds", "prompts_generated",
            "s_per_step")}
    reached = [m["steps_to_threshold"] for m in per_seed if m["steps_to_threshold"] is not None]
    out["steps_to_threshold"] = mean_std(reached)
    out["reached"] = f"{len(reached)}/{len(per_seed)}"
    for k in ("z_mean", "share_mean", "rho_mean"):
        out[k] = np.mean([m[k] for m in per_seed], axis=0).tolist()
    return out


# -----------------------------------------------------------------------------
# Table and claims


def fmt(ms: tuple[float, float], digits: int = 3) -> str:
    return "n/a" if np.isnan(ms[0]) else f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def table(labels: dict[str, str], summary: dict[str, dict], threshold: float, n_seeds: int) -> str:
    head = ["method", "worst-task acc", "avg acc", "avg rel. change vs DAPO %", f"steps to worst >= {threshold:g}",
            "rounds/step", "s/step"]
    rows = [[labels[n], fmt(s["worst"]), fmt(s["avg"]), fmt(s["rel_change"], 1),
             f"{fmt(s['steps_to_threshold'], 0)} ({s['reached']})", fmt(s["rounds"], 2), fmt(s["s_per_step"], 2)]
            for n, s in summary.items()]
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: " | ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([f"mean ± sample std over {n_seeds} seed(s), last evaluation", line(head),
                      "-+-".join("-" * w for w in widths)] + [line(r) for r in rows])


def verdict(claim: dict) -> str:
    """HELD / NOT HELD; a comparison of means whose gap is inside the seeds' spread is INCONCLUSIVE."""
    if claim.get("gap") is not None and abs(claim["gap"]) <= claim["spread"]:
        return "INCONCLUSIVE (gap within one std over seeds)"
    return "HELD" if claim["held"] else "NOT HELD"


def _spread(*stats: tuple[float, float]) -> float:
    return max(sd for _, sd in stats)


def claims(s: dict[str, dict], per_seed: dict[str, list[dict]], tasks: list[str]) -> list[dict]:
    """The four claims of issue 7 (plus Fig. 16's), each judged on the numbers printed with it."""
    lo, hi, iwu = f"mtgrpo_lam{LAM_LO}", f"mtgrpo_lam{LAM_HI}", f"iwu_lam{LAM_HI}"
    out = []
    rp, dyn = [lo, hi, "rps"], [iwu, "dapo"]
    dev = ", ".join(f"{n} {s[n]['share_dev'][0]:.3f} (gap {s[n]['share_gap'][0]:.3f})" for n in rp + dyn)
    out.append(dict(claim="(a) RPS keeps realized shares at z: mean |share - z| of MT-GRPO/RPS below IWU-only/DAPO",
                    held=max(s[n]["share_dev"][0] for n in rp) < min(s[n]["share_dev"][0] for n in dyn),
                    gap=min(s[n]["share_dev"][0] for n in dyn) - max(s[n]["share_dev"][0] for n in rp),
                    spread=_spread(*(s[n]["share_dev"] for n in rp + dyn)),
                    numbers=f"per-step mean |share - z| (time-averaged gap): {dev}"))
    for n in dyn:   # per step, the task with the highest filter rate: its share minus its weight
        gap = s[n]["most_filtered_gap"]
        out.append(dict(claim=f"(b) filtering alone under-represents the task filtered most ({n})",
                        held=gap[0] < 0, gap=gap[0], spread=gap[1],
                        numbers=f"mean over steps of share - z of that step's most-filtered task: {fmt(gap)}"))
    rps, dapo = s["rps"]["most_filtered_gap"], s["dapo"]["most_filtered_gap"]
    out.append(dict(claim="(b) the RP sampler shrinks that under-representation (RPS-only vs DAPO, both z uniform)",
                    held=rps[0] > dapo[0], gap=rps[0] - dapo[0], spread=_spread(rps, dapo),
                    numbers=f"share - z of the most-filtered task: RPS {fmt(rps)} vs DAPO {fmt(dapo)}"))
    for n in (lo, hi):
        w = s[n]["worst"][0]
        wins = {b: sum(a["worst"] >= c["worst"] for a, c in zip(per_seed[n], per_seed[b])) for b in ("dapo", "grpo")}
        out.append(dict(claim=f"(c) MT-GRPO lambda {n.split('lam')[1]} worst-task accuracy >= DAPO's and GRPO's",
                        held=w >= s["dapo"]["worst"][0] and w >= s["grpo"]["worst"][0],
                        gap=w - max(s["dapo"]["worst"][0], s["grpo"]["worst"][0]),
                        spread=_spread(s[n]["worst"], s["dapo"]["worst"], s["grpo"]["worst"]),
                        numbers=f"{fmt(s[n]['worst'])} vs DAPO {fmt(s['dapo']['worst'])}, GRPO {fmt(s['grpo']['worst'])};"
                                f" per seed >= DAPO in {wins['dapo']}/{len(per_seed[n])}, >= GRPO in {wins['grpo']}/{len(per_seed[n])}"))
    out.append(dict(claim=f"(d) larger lambda ({LAM_HI} vs {LAM_LO}) trades average for worst-task accuracy",
                    held=s[hi]["worst"][0] > s[lo]["worst"][0] and s[hi]["avg"][0] <= s[lo]["avg"][0],
                    gap=s[hi]["worst"][0] - s[lo]["worst"][0], spread=_spread(s[hi]["worst"], s[lo]["worst"]),
                    numbers=f"worst {fmt(s[hi]['worst'])} vs {fmt(s[lo]['worst'])}; avg {fmt(s[hi]['avg'])} vs {fmt(s[lo]['avg'])}"))
    na = f"{lo}_noaas"
    if na in s:
        out.append(dict(claim="(e, Fig. 16) acceptance-aware inflation lowers generation rounds per step",
                        held=s[lo]["rounds"][0] < s[na]["rounds"][0],
                        gap=s[na]["rounds"][0] - s[lo]["rounds"][0], spread=_spread(s[lo]["rounds"], s[na]["rounds"]),
                        numbers=f"rounds/step {fmt(s[lo]['rounds'], 2)} with vs {fmt(s[na]['rounds'], 2)} without;"
                                f" prompts generated/step {s[lo]['prompts_generated'][0]:.0f} vs {s[na]['prompts_generated'][0]:.0f}"))
    return out


# -----------------------------------------------------------------------------
# Figures (bench/plot.py)


def figures(runs: dict[str, list[plot.Run]], labels: dict[str, str], out: str) -> list[str]:
    g = lambda names: {labels[n]: runs[n] for n in names if n in runs}  # noqa: E731
    main = [n for n in VARIANTS if not n.endswith("_noaas")]
    lo, hi = f"mtgrpo_lam{LAM_LO}", f"mtgrpo_lam{LAM_HI}"
    return [plot.plot_compare(g(main), os.path.join(out, "fig4_worst_avg.png")),
            plot.plot_tasks(g(main), os.path.join(out, "fig6_tasks_weights.png")),
            plot.plot_shares(g(["dapo", f"iwu_lam{LAM_HI}", "rps", hi]), os.path.join(out, "fig12_13_shares.png")),
            plot.plot_metric(g([lo, f"{lo}_noaas"]), "rounds", os.path.join(out, "fig16_rounds.png"))]


# -----------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="MT-GRPO vs baselines on the CPU toy tasks (paper Fig. 4/6/10/12/13/16).")
    p.add_argument("--out", default="runs/toy_compare")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..S-1 per variant (default 3, --quick 1)")
    p.add_argument("--steps", type=int, default=None, help=f"training steps per run (default {FULL['steps']}, --quick {QUICK['steps']})")
    p.add_argument("--threshold", type=float, default=0.1,
                   help="worst-task accuracy for 'steps to threshold' (0.3, chosen first, was reached by no run in 60 steps)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 4 steps, 16 test prompts x 2 samples")
    p.add_argument("--reuse", action="store_true", help="skip runs whose directory holds a finished log of the same config")
    args = p.parse_args(argv)
    budget = dict(QUICK if args.quick else FULL)
    seeds = range(args.seeds if args.seeds is not None else 1 if args.quick else 3)
    if args.steps:
        budget.update(steps=args.steps, eval_every=max(1, min(budget["eval_every"], args.steps // 2)))
    torch.set_num_threads(args.threads)
    try:
        plot.pyplot()
    except ImportError:
        print("error: the figures need matplotlib: pip install matplotlib", file=sys.stderr)
        return 2

    t0, runs, trained = time.perf_counter(), {n: [] for n in VARIANTS}, 0
    todo = [(n, s) for s in seeds for n in VARIANTS]  # seed-major: a partial sweep still pairs with DAPO
    for i, (name, seed) in enumerate(todo, 1):
        cfg = config_for(name, seed, budget, args.out)
        wall = None if args.reuse and finished(cfg) else train_quietly(cfg)
        trained += wall is not None
        run = plot.load_run(cfg.out_dir)
        runs[name].append(run)
        e = run.evals[-1]
        print(f"[{i}/{len(todo)}] {name} seed {seed}: worst {e['worst']:.3f} avg {e['avg']:.3f} | "
              + ("reused" if wall is None else f"{wall:.0f} s, total {time.perf_counter() - t0:.0f} s"), flush=True)

    tasks = runs["dapo"][0].tasks
    labels = {n: runs[n][0].label for n in VARIANTS}
    per_seed = {n: [run_metrics(r, d, args.threshold) for r, d in zip(runs[n], runs["dapo"])] for n in VARIANTS}
    summary = {n: summarize(per_seed[n]) for n in VARIANTS}
    checked = claims(summary, per_seed, tasks)
    text = "\n".join([table(labels, summary, args.threshold, len(seeds)), "", "claims:"]
                     + [f"  {verdict(c)}: {c['claim']}\n      {c['numbers']}" for c in checked]
                     + ["", f"total wall time {time.perf_counter() - t0:.0f} s ({trained} of {len(todo)} runs trained here, the rest"
                            f" reused; {args.threads} threads;"
                            f" load average at end {os.getloadavg()[0]:.1f})"])
    print(text)
    with open(os.path.join(args.out, "table.txt"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(dict(budget=budget, seeds=list(seeds), threshold=args.threshold, tasks=tasks, labels=labels,
                       summary=summary, per_seed=per_seed, claims=checked), f, indent=1)
    for path in figures(runs, labels, args.out) + [os.path.join(args.out, x) for x in ("table.txt", "summary.json")]:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
