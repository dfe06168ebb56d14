"""
Experiment trackers: the records mtgrpo.py writes to log.jsonl, also sent to TensorBoard, Weights & Biases or
Trackio, under log.jsonl's own names (pip install -r requirements-trackers.txt; each imported when named).

    tracker = open_trackers("tensorboard,wandb", out_dir, config, task_names=names)
    tracker.log(record)       # every record log.jsonl gets: kind "train" or "eval" (others are ignored)
    tracker.close()

A train record's per-task vectors (z, z_next, batch_shares, targets, rho, J, I, train_acc, sec_q) become
`<name>/<task>` scalars, per-round lists (generated, accepted) their per-task sums over the step's rounds, and
its numbers (rounds, reward_mean, loss, seconds, ...) scalars of their own name, all at the record's step. An
eval record becomes eval/<task>/mean@k, eval/worst and eval/average. Where each one writes:

    tensorboard   OUT_DIR/tensorboard/ (torch's SummaryWriter)
    wandb         a run in project $WANDB_PROJECT (default mtgrpo), files under OUT_DIR/wandb/;
                  WANDB_MODE=offline keeps it local
    trackio       project $TRACKIO_PROJECT (default mtgrpo) in Trackio's local store ($TRACKIO_DIR)
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable

INSTALL = "pip install -r requirements-trackers.txt"
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}   # name -> package
Writer = tuple[Callable[[int, dict], None], Callable[[], None]]   # (write(step, metrics), close())


def flatten(record: dict, task_names: list[str], eval_k: int) -> dict[str, float]:
    """A log.jsonl record -> {name: number}, named as above; {} for records that are not train or eval."""
    if record.get("kind") == "eval":
        return {**{f"eval/{task}/mean@{eval_k}": float(v) for task, v in record["acc"].items()},
                "eval/worst": float(record["worst"]), "eval/average": float(record["avg"])}
    if record.get("kind") != "train":
        return {}
    out: dict[str, float] = {}
    for name, value in record.items():
        if name in ("kind", "step") or (isinstance(value, list) and not value):
            continue
        if isinstance(value, list) and value and isinstance(value[0], list):   # one list per sampler round
            value = [sum(v) for v in zip(*value)]
        if isinstance(value, list):
            if len(value) != len(task_names):
                raise ValueError(f"record {name!r} has {len(value)} values for {len(task_names)} task names "
                                 f"({', '.join(task_names)}); pass the run's task names")
            out.update({f"{name}/{task}": float(v) for task, v in zip(task_names, value)})
        elif isinstance(value, (int, float)):
            out[name] = float(value)
    return out


def _tensorboard(out_dir: str, config: dict) -> Writer:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(os.path.join(out_dir, "tensorboard"))

    def write(step: int, metrics: dict) -> None:
        for name, value in metrics.items():
            writer.add_scalar(name, value, step)
    return write, writer.close


def _wandb(out_dir: str, config: dict) -> Writer:
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "mtgrpo"), dir=out_dir, config=config)

    def close() -> None:
        """finish() can return before the run file is written (wandb 0.31 offline left 7 bytes in 1 of 4
        runs); teardown() waits for wandb's service to flush and stop."""
        run.finish()
        wandb.teardown()
    return (lambda step, metrics: run.log(metrics, step=step)), close


def _trackio(out_dir: str, config: dict) -> Writer:
    import trackio

    trackio.init(project=os.environ.get("TRACKIO_PROJECT", "mtgrpo"), config=config)
    return (lambda step, metrics: trackio.log(metrics, step=step)), trackio.finish


OPENERS = {"tensorboard": _tensorboard, "wandb": _wandb, "trackio": _trackio}


class Tracker:
    """The chosen trackers behind one log(record) / close(); with none, both do nothing."""

    def __init__(self, writers: list[Writer], task_names: list[str], eval_k: int) -> None:
        self.writers, self.task_names, self.eval_k = writers, task_names, eval_k

    def log(self, record: dict) -> None:
        metrics = flatten(record, self.task_names, self.eval_k)
        if not metrics:
            return
        for write, _ in self.writers:
            write(int(record["step"]), metrics)

    def close(self) -> None:
        for _, close in self.writers:
            close()
        self.writers = []


def check_report_to(report_to: str) -> list[str]:
    """--report-to's tracker names, or one ValueError line naming the fix: unknown name, missing package."""
    names = [n.strip() for n in report_to.split(",") if n.strip() and n.strip() != "none"]
    for name in names:
        if name not in OPENERS:
            raise ValueError(f"--report-to: unknown tracker {name!r}; choose from {', '.join(OPENERS)} "
                             "or none")
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ValueError(f"--report-to {name} needs the {PACKAGES[name]} package: {INSTALL}")
    return names


def open_trackers(report_to: str, out_dir: str, config: dict, task_names: list[str] | None = None) -> Tracker:
    """Trackers for a comma-separated subset of tensorboard,wandb,trackio ('' or 'none': none). Task names
    come from `task_names`, else config["task_names"], else config["tasks"]; mean@k's k from
    config["eval_k"] (8 if absent). A name not known, or whose package is missing, is one ValueError line with
    the fix, before any tracker opens."""
    names = check_report_to(report_to)
    listed = [t.strip() for t in config.get("tasks", "").split(",") if t.strip()]
    tasks = list(task_names or config.get("task_names") or listed)
    return Tracker([OPENERS[name](out_dir, config) for name in names], tasks, int(config.get("eval_k", 8)))
