"""
Plots for mtgrpo.py runs, after the paper's figures (arXiv 2602.05547): reads each run's log.jsonl
(first record the config, then one "train" record per step and "eval" records) and writes PNGs.

  per run   RUN.png: test accuracy per task and worst-task (Fig. 4/6 top), task weights z (Fig. 6
            bottom), realized post-filter batch shares with z dashed (Fig. 12/13), filter rates rho
            (Fig. 12 left), generation rounds per step (Fig. 16 right), prompts generated vs used.
  several   compare.png: worst-task and average test accuracy vs step, one line per run;
            tasks.png: per-task test accuracy (top) and weights z (bottom), one line per run (Fig. 6).

Per-step series (shares, rho, rounds) are noisy with small batches: they are drawn as a trailing
moving average over --smooth steps (the paper smooths Fig. 16 too); evaluations are drawn raw.
The group functions (plot_compare, plot_tasks, plot_shares, plot_metric) take {label: [runs]} and
draw the mean over the runs of a label (e.g. seeds), so bench/toy_compare.py reuses them.

Run:
    pip install -r bench/requirements-plot.txt    # matplotlib: optional, not in requirements.txt
    python bench/plot.py out/ --out plots/
    python bench/plot.py runs/toy_compare/dapo_s0 runs/toy_compare/mtgrpo_lam1.0_s0 --out plots/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field

import numpy as np


# -----------------------------------------------------------------------------
# Reading logs


@dataclass
class Run:
    path: str
    config: dict
    train: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)

    @property
    def tasks(self) -> list[str]:
        return [t.strip() for t in self.config["tasks"].split(",") if t.strip()]

    @property
    def label(self) -> str:
        """method, plus lambda where task weights adapt by IWU, plus the no-inflation ablation."""
        c = self.config
        label = c["method"] + (f" λ={c['lam']}" if c["method"] in ("mtgrpo", "iwu") else "")
        return label + ("" if c.get("inflate", True) else " no-AAS")


def load_run(path: str) -> Run:
    """A run directory (holding log.jsonl) or a log.jsonl file -> Run. ValueError names the problem."""
    log = os.path.join(path, "log.jsonl") if os.path.isdir(path) else path
    if not os.path.isfile(log):
        raise ValueError(f"{path}: no log.jsonl there; pass a run's --out-dir or its log.jsonl")
    records = []
    for i, line in enumerate(open(log), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{log}, line {i}: malformed record ({e.msg} at column {e.colno}); the line was cut short "
                                 "or edited: delete it, or plot an intact copy of the log") from None
    if not records:
        raise ValueError(f"{log} is empty: its run failed before writing anything (see that run's output for the error)")
    if records[0].get("kind") != "config":
        raise ValueError(f"{log}: not an mtgrpo log (its first record is not the config)")
    run = Run(log, records[0])
    run.train = [r for r in records if r.get("kind") == "train"]
    run.evals = [r for r in records if r.get("kind") == "eval"]
    if not run.train:
        raise ValueError(f"{log} holds no training step: its run failed or was stopped before step 1 "
                         "(see that run's output for the error)")
    return run


def train_series(run: Run, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps (S,) and values (S,) or (S, K) of a per-step field, e.g. "z", "batch_shares", "rounds".
    Steps where every prompt was filtered (empty batch) have no realized shares: NaN there."""
    steps = np.array([r["step"] for r in run.train])
    vals = np.array([r[key] for r in run.train], dtype=float)
    if key == "batch_shares":
        vals[np.array([r["batch_groups"] == 0 for r in run.train])] = np.nan
    return steps, vals


def eval_series(run: Run, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps (E,) and values of an eval field: "worst", "avg", or a task name (its accuracy)."""
    steps = np.array([r["step"] for r in run.evals])
    return steps, np.array([r[key] if key in ("worst", "avg") else r["acc"][key] for r in run.evals], dtype=float)


def smooth(y: np.ndarray, w: int) -> np.ndarray:
    """Trailing moving average over w steps along axis 0 (shorter windows at the start), NaN-aware."""
    if w <= 1:
        return y
    out = np.empty_like(y, dtype=float)
    for i in range(len(y)):
        out[i] = np.nanmean(y[max(0, i - w + 1):i + 1], axis=0)
    return out


def mean_over(runs: list[Run], series, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over runs (e.g. seeds) of a series, on the steps all runs have. -> steps, mean, std"""
    pairs = [series(r, key) for r in runs]
    n = min(len(s) for s, _ in pairs)
    vals = np.stack([v[:n] for _, v in pairs])
    return pairs[0][0][:n], np.nanmean(vals, axis=0), np.nanstd(vals, axis=0)


# -----------------------------------------------------------------------------
# Figures


LINES = ["-", "--", "-.", ":"]
MARKERS = "osD^vP*X"


def style(i: int) -> dict:
    """Line i's style: colour, dash pattern and marker all differ, so lines stay apart where they overlap."""
    return dict(color=f"C{i % 10}", linestyle=LINES[i % len(LINES)], marker=MARKERS[i % len(MARKERS)], markersize=4)


def accuracy_label(runs: list[Run]) -> str:
    ks = sorted({r.config.get("eval_k") for r in runs})
    return f"test accuracy (mean@{ks[0] if len(ks) == 1 else '/'.join(map(str, ks))})"


def unit_axis(a, ylabel: str) -> None:
    """Fractions (accuracy, weights, shares, rates) on a fixed 0-1 axis: a change of a few test samples must not
    fill the panel and look like a swing."""
    a.set_ylim(-0.02, 1.02)
    a.set_ylabel(ylabel)
    a.set_xlabel("step")


def pyplot():
    """matplotlib, imported only when a figure is drawn (optional dependency), headless backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def plot_run(run: Run, path: str, w: int = 5) -> str:
    """The six-panel diagnostics of one run (see the module docstring)."""
    plt = pyplot()
    fig, ax = plt.subplots(2, 3, figsize=(15, 7.5))
    tasks = run.tasks
    steps, z = train_series(run, "z")
    _, shares = train_series(run, "batch_shares")
    _, rho = train_series(run, "rho")
    if run.evals:  # the worst task first, wide and pale, under the task lines it coincides with
        ax[0, 0].plot(*eval_series(run, "worst"), color="0.6", lw=6, alpha=0.5, label="worst task", zorder=1)
    for k, name in enumerate(tasks):
        st = style(k)
        if run.evals:
            ax[0, 0].plot(*eval_series(run, name), **st, label=name, zorder=2)
        ax[0, 1].plot(steps, z[:, k], **{**st, "marker": None}, label=name)
        ax[0, 2].plot(steps, smooth(shares[:, k], w), color=st["color"], label=f"{name} share")
        ax[0, 2].plot(steps, z[:, k], "--", color=st["color"], lw=1, label=f"{name} z")
        ax[1, 0].plot(steps, smooth(rho[:, k], w), **{**st, "marker": None}, label=name)
    ax[1, 1].plot(steps, smooth(train_series(run, "rounds")[1], w), color="k")
    ax[1, 2].plot(steps, smooth(train_series(run, "prompts_generated")[1], w), label="prompts generated")
    ax[1, 2].plot(steps, smooth(train_series(run, "prompts_used")[1], w), "--", label="prompts used (after filter)")
    panels = [("test accuracy per task", accuracy_label([run])), ("task weights z", "z_k"),
              (f"realized batch share (solid, avg over {w}) vs z (dashed)", "share of the batch"),
              (f"filter rate rho, avg over {w} steps", "rho_k"), (f"generation rounds per step, avg over {w}", "rounds"),
              (f"prompts per step, avg over {w}", "prompts")]
    for i, (a, (title, ylabel)) in enumerate(zip(ax.flat, panels)):
        a.set_title(title)
        if i < 4:
            unit_axis(a, ylabel)
        else:
            a.set_ylim(0, max(a.get_ylim()[1], 1) * 1.1)
            a.set_ylabel(ylabel)
            a.set_xlabel("step")
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    fig.suptitle(f"{run.label}, seed {run.config['seed']}: {run.path}")
    return save(fig, path)


def plot_compare(groups: dict[str, list[Run]], path: str) -> str:
    """Fig. 4: worst-task and average test accuracy vs step, one line per label: the mean over its runs (seeds), the
    band +- one std over them."""
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.8))
    runs = [r for rs in groups.values() for r in rs]
    for a, key in zip(ax, ("worst", "avg")):
        for i, (label, rs) in enumerate(groups.items()):
            steps, m, s = mean_over(rs, eval_series, key)
            a.plot(steps, m, **style(i), label=label)
            a.fill_between(steps, m - s, m + s, color=style(i)["color"], alpha=0.12)
        a.set_title(f"{'worst-task' if key == 'worst' else 'average'} test accuracy")
        unit_axis(a, accuracy_label(runs))
        a.legend(fontsize=8)
    n = sorted({len(rs) for rs in groups.values()})
    fig.suptitle(f"worst-task and average accuracy (mean ± std over {'/'.join(map(str, n))} seed(s) per method)")
    return save(fig, path)


def plot_tasks(groups: dict[str, list[Run]], path: str) -> str:
    """Fig. 6: per-task test accuracy (top row) and task weight z (bottom row), one line per label (mean over runs)."""
    plt = pyplot()
    tasks = next(iter(groups.values()))[0].tasks
    runs = [r for rs in groups.values() for r in rs]
    fig, ax = plt.subplots(2, len(tasks), figsize=(5 * len(tasks), 7.5), squeeze=False)
    for k, name in enumerate(tasks):
        for i, (label, rs) in enumerate(groups.items()):
            ax[0, k].plot(*mean_over(rs, eval_series, name)[:2], **style(i), label=label)
            steps, z, _ = mean_over(rs, train_series, "z")
            ax[1, k].plot(steps, z[:, k], **{**style(i), "marker": None}, label=label)
        ax[0, k].set_title(f"{name}: test accuracy")
        ax[1, k].set_title(f"{name}: task weight z")
        unit_axis(ax[0, k], accuracy_label(runs))
        unit_axis(ax[1, k], "z_k")
        ax[0, k].legend(fontsize=8)
        ax[1, k].legend(fontsize=8)
    fig.suptitle("per-task accuracy and task weights (mean over seeds)")
    return save(fig, path)


def plot_shares(groups: dict[str, list[Run]], path: str, w: int = 5) -> str:
    """Fig. 12/13: per task (columns) and label (rows), realized post-filter share (solid, moving
    average over w steps) against the assigned weight z (dashed); means over the label's runs."""
    plt = pyplot()
    tasks = next(iter(groups.values()))[0].tasks
    fig, ax = plt.subplots(len(groups), len(tasks), figsize=(5 * len(tasks), 3.2 * len(groups)), squeeze=False)
    for i, (label, runs) in enumerate(groups.items()):
        steps, z, _ = mean_over(runs, train_series, "z")
        _, shares, _ = mean_over(runs, train_series, "batch_shares")
        for k, name in enumerate(tasks):
            ax[i, k].plot(steps, smooth(shares[:, k], w), color=f"C{k}", label="realized share")
            ax[i, k].plot(steps, z[:, k], "--", color=f"C{k}", label="assigned weight z")
            ax[i, k].set_title(f"{label}: {name}")
            unit_axis(ax[i, k], "share of the batch")
            ax[i, k].legend(fontsize=8)
    fig.suptitle(f"assigned weight vs realized post-filter share (mean over seeds, share averaged over {w} steps)")
    return save(fig, path)


def plot_metric(groups: dict[str, list[Run]], key: str, path: str, w: int = 5) -> str:
    """One per-step scalar (e.g. "rounds", Fig. 16 right) vs step, one line per label, moving average."""
    plt = pyplot()
    fig, a = plt.subplots(figsize=(7, 4.5))
    for i, (label, runs) in enumerate(groups.items()):
        steps, m, _ = mean_over(runs, train_series, key)
        a.plot(steps, smooth(m, w), **{**style(i), "marker": None}, label=f"{label} (mean {np.mean(m):.2f})")
    a.set_ylim(0, max(a.get_ylim()[1], 1) * 1.1)
    a.set_ylabel(key)
    a.set_xlabel("step")
    a.set_title(f"{key} per step (mean over seeds, moving average over {w} steps)")
    a.legend(fontsize=8)
    return save(fig, path)


# -----------------------------------------------------------------------------
# CLI


def run_name(run: Run) -> str:
    return os.path.basename(os.path.dirname(os.path.abspath(run.path))) or "run"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="PNGs from mtgrpo.py logs (paper Fig. 4/6/12/13/16).")
    p.add_argument("runs", nargs="+", help="run directories (holding log.jsonl) or log.jsonl files")
    p.add_argument("--out", default="plots", help="directory for the PNGs")
    p.add_argument("--smooth", type=int, default=5, help="moving-average window for per-step series")
    args = p.parse_args(argv)
    try:
        pyplot()
    except ImportError:
        print("error: bench/plot.py needs matplotlib: pip install -r bench/requirements-plot.txt", file=sys.stderr)
        return 2
    try:
        runs = [load_run(r) for r in args.runs]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = [run_name(r) for r in runs]
    if len(set(names)) < len(names):  # e.g. several runs' log.jsonl given from the same place
        names = [f"{n}_{i}" for i, n in enumerate(names)]
    written = [plot_run(r, os.path.join(args.out, f"{n}.png"), args.smooth) for r, n in zip(runs, names)]
    if len(runs) > 1:
        labels = [r.label for r in runs]
        groups = {(f"{l} s{r.config['seed']} ({n})" if labels.count(l) > 1 else l): [r]
                  for l, r, n in zip(labels, runs, names)}
        if not all(r.evals for r in runs):
            print("note: compare.png and tasks.png need an evaluation in every run; skipped", file=sys.stderr)
        else:
            written.append(plot_compare(groups, os.path.join(args.out, "compare.png")))
            if len({tuple(r.tasks) for r in runs}) == 1:
                written.append(plot_tasks(groups, os.path.join(args.out, "tasks.png")))
            else:
                print("note: tasks.png needs the same tasks in every run; skipped", file=sys.stderr)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
