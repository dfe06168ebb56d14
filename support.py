"""
What a run of mtgrpo.py needs but a reader of the method does not: flag parsing and validation, the output
directory's rules, checkpoints, signals, the log's records (evaluations too) and summary, and a run's setup
(start_run). mtgrpo.py holds the method, the step and the loop; everything here could be swapped for a
framework's own machinery without touching them. Nothing here imports mtgrpo.py: the trainer hands in what a
function needs (its Config class, its loop state).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

import numpy as np
import torch

# --- Flags: every Config field is a flag --field-name; --preset and --method fill several; explicit flags win
def arg(default: Any, help: str) -> Any:
    """A Config field: a flag --field-name with this help text (parse_args below parses it)."""
    return field(default=default, metadata={"help": help})


# The values a flag may take. A field not named here takes any value of its type.
CHOICES: dict[str, tuple[str, ...]] = {
    "prompt_style": ("auto", "r1", "chat", "plain"),
    "box_rule": ("last", "last_line"),
    "sampler": ("rp", "dynamic", "grpo"),
    "weighting": ("iwu", "reward_l2", "sec", "uniform"),
    "filter": ("strict", "lenient", "none"),
    "loss_agg": ("token_mean", "seq_mean"),
    "adv_std": ("unbiased", "population"),
    "xi_optimizer": ("adamw", "sgd", "adam"),
    "improvement_agg": ("mean", "sum"),
    "iwu_every": ("step", "minibatch"),
}

AT_LEAST_0 = (lambda v: v >= 0, ">= 0")
AT_LEAST_1 = (lambda v: v >= 1, ">= 1")
ABOVE_0 = (lambda v: v > 0, "> 0")
IN_0_1 = (lambda v: 0 <= v < 1, "in [0, 1)")
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "steps": AT_LEAST_1,
    "save_every": AT_LEAST_0,
    "keep_checkpoints": AT_LEAST_1,
    "eval_every": AT_LEAST_0,
    "eval_k": AT_LEAST_1,
    "eval_prompts": AT_LEAST_1,
    "n_train": (lambda v: 1 <= v <= 10_000, "in [1, 10000]"),
    "eps_high": AT_LEAST_0,
    "batch_size": AT_LEAST_1,
    "num_rollouts": (lambda v: v >= 2, ">= 2"),
    "max_prompt_len": AT_LEAST_1,
    "max_response_len": AT_LEAST_1,
    "temperature": ABOVE_0,
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "gen_batch_size": AT_LEAST_1,
    "minibatch_size": AT_LEAST_1,
    "micro_batch_size": AT_LEAST_1,
    "lr": ABOVE_0,
    "beta1": IN_0_1,
    "beta2": IN_0_1,
    "weight_decay": AT_LEAST_0,
    "grad_clip": ABOVE_0,
    "eps_low": IN_0_1,
    "lam": AT_LEAST_0,
    "eta": AT_LEAST_0,
    "xi_lr": ABOVE_0,
    "xi_weight_decay": AT_LEAST_0,
    "improvement_clip": ABOVE_0,
    "os_factor": AT_LEAST_1,
    "max_resample_rounds": AT_LEAST_0,
    "acc_cap": AT_LEAST_1,
    "rho_decay": IN_0_1,
    "sec_temperature": ABOVE_0,
    "sec_decay": IN_0_1,
    "accuracy_decay": IN_0_1,
}

# --help lists the flags in groups; each group starts at the field named here.
GROUP_STARTS = {"sampler": "method", "batch_size": "rollouts", "minibatch_size": "update",
                "lam": "task weights", "os_factor": "RP sampler", "sec_temperature": "SEC"}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def validate(cfg) -> None:
    """Reject bad settings with one line naming the flag and the fix (the CLI exits with status 2)."""
    from tasks import check_task_list
    from trackers import check_report_to
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in CHOICES and value not in CHOICES[f.name]:
            raise ValueError(f"{flag(f.name)} must be one of {', '.join(CHOICES[f.name])}, got {value!r}")
        if f.name in RANGES and not RANGES[f.name][0](value):
            raise ValueError(f"{flag(f.name)} must be {RANGES[f.name][1]}, got {value}")
    check_task_list(cfg.tasks)
    check_report_to(cfg.report_to)
    if cfg.minibatch_size > cfg.batch_size:
        raise ValueError(f"--minibatch-size {cfg.minibatch_size} is larger than --batch-size "
                         f"{cfg.batch_size}; the paper uses B/4")
    if cfg.weighting == "reward_l2" and cfg.xi_optimizer == "adamw":
        raise ValueError("--weighting reward_l2 puts eta xi on the gradient: pass --xi-optimizer sgd "
                         "(the paper) or adam (released code)")


def parse_args(config_cls: type, presets: dict, methods: dict, argv: list[str] | None = None):
    """Flags -> a config_cls instance: the defaults, then --preset, then --method, then explicit flags.
    --resume brings back the checkpoint's config (explicit flags still win)."""
    p = argparse.ArgumentParser(description="Multi-Task GRPO (arXiv 2602.05547), Algorithm 1 on one device. "
                                "Explicit flags win over --method, which wins over --preset.")
    group = p.add_argument_group("run")
    group.add_argument("--preset", help="tiny (CPU demo; the default with --model tiny), exp1 or exp2 "
                       "(the paper's, App. E), released (the released code's algorithm); several apply "
                       "left to right: --preset exp1,released")
    group.add_argument("--list-tasks", action="store_true", help="print the built-in tasks and exit")
    group.add_argument("--method", help="sets the method group below: mtgrpo (default), grpo, dapo, iwu, "
                       "rps, sec (Sec. 6)")
    defaults = config_cls()
    tiny = presets["tiny"]
    for f in fields(config_cls):
        if f.name in GROUP_STARTS:
            group = p.add_argument_group(GROUP_STARTS[f.name])
        default = getattr(defaults, f.name)
        shown = f"default {default}" + (f"; with --model tiny: {tiny[f.name]}" if f.name in tiny else "")
        choices = f"; choices: {', '.join(CHOICES[f.name])}" if f.name in CHOICES else ""
        if isinstance(default, bool):
            kind = dict(action=argparse.BooleanOptionalAction)
        else:
            kind = dict(type=type(default))
        group.add_argument(flag(f.name), **kind, default=argparse.SUPPRESS,
                           help=f"{f.metadata['help']} ({shown}{choices})".replace("%", "%%"))
    args = vars(p.parse_args(argv))
    chosen = [p for p in (args.pop("preset") or "").split(",") if p]
    method = args.pop("method")
    if args.pop("list_tasks"):
        from tasks import describe_tasks
        print(describe_tasks())
        raise SystemExit(0)
    if args.get("resume"):  # continue with the checkpoint's config; explicit flags still win
        if chosen or method:
            raise ValueError("--preset and --method cannot go with --resume: a resumed run keeps its config "
                             "(set single flags)")
        ckpt, saved = read_checkpoint(args["resume"])  # the run goes on in the checkpoint's own directory
        return config_cls(**{**saved["config"], "out_dir": os.path.dirname(os.path.abspath(ckpt)), **args})
    for name, value, allowed in [*(("--preset", p, presets) for p in chosen), ("--method", method, methods)]:
        if value not in (None, *allowed):
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    model = args.get("model", defaults.model)  # the tiny testbed: by name, or a dir its warm start wrote
    tiny_model = model == "tiny" or os.path.isfile(os.path.join(model, "warm_start.json"))
    if tiny_model and not set(chosen) & {"tiny", "exp1", "exp2"}:
        chosen.insert(0, "tiny")
    values = asdict(defaults)
    for p in chosen:
        values.update(presets[p])
    values = {**values, **methods[method or "mtgrpo"], **args}
    return config_cls(**values)


def catch_signals() -> dict[str, int]:
    """Ctrl-C and SIGTERM: train() saves after the current step and exits 130 / 143; a second one quits at
    once."""
    stop: dict[str, int] = {}

    def on_signal(signum: int, frame) -> None:
        if stop:
            os._exit(128 + signum)
        stop["signum"] = signum
        print(f"\n{signal.Signals(signum).name}: saving after this step (send it again to quit now)",
              file=sys.stderr, flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    return stop


# --- The output directory and checkpoints -------------------------------------------------------------------
def prepare_out_dir(out_dir: str, overwrite: bool, resumed: str) -> str:
    """--out-dir, checked before anything loads: writable, holding no other run (unless --overwrite or
    resumed). -> the path of its log.jsonl."""
    path = os.path.join(out_dir, "log.jsonl")
    resumed_dir = os.path.dirname(os.path.abspath(resumed))
    same_run = resumed and os.path.realpath(resumed_dir) == os.path.realpath(out_dir)
    if os.path.isfile(path) and os.path.getsize(path) and not same_run:
        if not overwrite:
            raise ValueError(f"--out-dir {out_dir} holds another run: continue it (--resume {out_dir}), "
                             "or --overwrite, or another --out-dir")
        for old in (d for d in os.listdir(out_dir) if re.fullmatch(r"checkpoint-\d+(\.tmp)?", d)):
            shutil.rmtree(os.path.join(out_dir, old))
        os.remove(path)
    try:
        os.makedirs(out_dir, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()
    except OSError as e:
        raise ValueError(f"--out-dir {out_dir!r} is not writable ({e.strerror}); "
                         "pass a writable directory") from None
    return path


def checkpoints(run_dir: str) -> list[str]:
    """A run's complete checkpoint-STEP directories, oldest first (a write cut short leaves only a .tmp
    sibling)."""
    names = os.listdir(run_dir) if os.path.isdir(run_dir) else []
    names = [d for d in names if re.fullmatch(r"checkpoint-\d+", d)]
    return [os.path.join(run_dir, d) for d in sorted(names, key=lambda d: int(d.split("-")[1]))]


def save_checkpoint(out_dir: str, model, tokenizer, opt: torch.optim.Optimizer, loop_state, config: dict,
                    log_path: str, keep: int) -> str:
    """All a resumed run needs, bit for bit: weights, the policy optimizer, the loop state (its own
    state_dict), torch's RNG and the log so far. Written aside, synced and renamed: a checkpoint-STEP dir is
    always whole."""
    path = os.path.join(out_dir, f"checkpoint-{loop_state.step}")
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch_rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        torch_rng["cuda"] = torch.cuda.get_rng_state_all()
    saved = {"config": config, "loop": loop_state_dict(loop_state), "optimizer": opt.state_dict(),
             "torch_rng": torch_rng}
    torch.save(saved, os.path.join(tmp, "trainer_state.pt"))
    shutil.copy(log_path, os.path.join(tmp, "log.jsonl"))
    for f in [*(os.path.join(tmp, f) for f in os.listdir(tmp)), tmp]:
        fd = os.open(f, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    for old in checkpoints(out_dir)[:-keep]:  # only now that the new one is complete
        shutil.rmtree(old)
    return path


def read_checkpoint(path: str) -> tuple[str, dict[str, Any]]:
    """--resume's checkpoint (a checkpoint-STEP dir, or a run dir's newest) -> (its dir, its state).
    Loads with weights_only=True: a checkpoint never runs code."""
    state_file = os.path.join(path, "trainer_state.pt")
    ckpt = path if os.path.isfile(state_file) else (checkpoints(path) or [path])[-1]
    if not os.path.isfile(os.path.join(ckpt, "trainer_state.pt")):
        raise ValueError(f"--resume {path!r} is not a checkpoint, nor a run directory holding one "
                         "(no trainer_state.pt)")
    try:
        saved = torch.load(os.path.join(ckpt, "trainer_state.pt"), weights_only=True)
        missing = [f for f in ("config.json", "log.jsonl") if not os.path.isfile(os.path.join(ckpt, f))]
        if missing:
            raise FileNotFoundError(f"{missing[0]} is missing")
    except Exception as e:  # truncated or zero-byte file, missing pieces, a pickle that would run code
        run_dir = os.path.dirname(os.path.abspath(ckpt))
        older = [c for c in checkpoints(run_dir) if c != os.path.abspath(ckpt)]
        reason = (str(e).splitlines() or [""])[0][:100]
        way_out = f"resume from {older[-1]} instead" if older else "no other checkpoint to resume from"
        raise ValueError(f"--resume: {ckpt} is damaged or unsafe to load ({type(e).__name__}: {reason}); "
                         + way_out) from None
    return ckpt, saved


def load_checkpoint(ckpt: str, saved: dict[str, Any], opt: torch.optim.Optimizer, loop_state,
                    log_path: str) -> None:
    """Restore read_checkpoint's trainer state into a fresh run, in place, and copy the checkpoint's log to
    log_path (this run appends the rest)."""
    opt.load_state_dict(saved["optimizer"])
    load_loop_state(loop_state, saved["loop"])
    torch.set_rng_state(saved["torch_rng"]["cpu"])
    if "cuda" in saved["torch_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["torch_rng"]["cuda"])
    shutil.copy(os.path.join(ckpt, "log.jsonl"), log_path)


# --- The log: one JSON record per line (config, train steps, evaluations: Sec. 6's metrics), a summary ---
def log(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def run_log(path: str, cfg, task_names: list[str]) -> Callable[[dict[str, Any]], None]:
    """-> log(record): appends the record to path (log.jsonl) and sends it to --report-to's trackers
    (trackers.py), under the same names; log.close() closes them."""
    from trackers import open_trackers
    tracker = open_trackers(cfg.report_to, cfg.out_dir, asdict(cfg), task_names=task_names)

    def write(record: dict[str, Any]) -> None:
        log(path, record)
        tracker.log(record)

    write.close = tracker.close
    return write


def step_record(z: np.ndarray, z_next: np.ndarray, batch, totals: dict, upd: dict, loop_state,
                improvement: torch.Tensor, seconds: float, sec: bool) -> dict[str, Any]:
    """One step's JSONL record: z, realized shares, rho, J, I, rounds, prompts generated vs used, timings."""
    used = len(batch.groups)
    responses = max(totals["total"].sum(), 1)
    record = {
        "kind": "train",
        "step": loop_state.step,
        "z": z.tolist(),
        "z_next": z_next.tolist(),
        "batch_shares": (np.bincount(batch.tasks, minlength=len(z)) / max(used, 1)).tolist(),
        "batch_groups": used,
        "targets": batch.targets,
        "rho": batch.rho.tolist(),
        "J": loop_state.J.tolist(),
        "I": improvement.tolist(),
        "train_acc": (totals["correct"] / np.maximum(totals["total"], 1)).tolist(),
        "rounds": batch.rounds,
        "generated": batch.generated,
        "accepted": batch.accepted,
        "prompts_generated": int(sum(map(sum, batch.generated))),
        "prompts_used": used,
        **upd,
        "reward_mean": totals["reward"] / responses,
        "response_len": totals["tokens"] / responses,
        "seconds": seconds,
        "seconds_gen": totals["seconds"],
    }
    if sec:
        record["sec_q"] = loop_state.sec_q.tolist()
    return record


def progress_line(rec: dict[str, Any], steps: int, sampled: np.ndarray, remaining_s: float) -> str:
    """step | seconds, time left | reward | train accuracy | z | realized shares | rounds | loss."""
    acc = np.array(rec["train_acc"])[sampled]
    worst = acc.min() if len(acc) else 0.0
    avg = acc.mean() if len(acc) else 0.0

    def slashed(values: list[float]) -> str:
        return "/".join(f"{x:.2f}" for x in values)

    parts = [f"step {rec['step']}/{steps}",
             f"{rec['seconds']:.1f}s, eta {time.strftime('%H:%M:%S', time.gmtime(remaining_s))}",
             f"reward {rec['reward_mean']:.3f}",
             f"train acc worst {worst:.2f} avg {avg:.2f}",
             f"z {slashed(rec['z'])}",
             f"shares {slashed(rec['batch_shares'])}",
             f"rounds {rec['rounds']}",
             f"loss {rec['loss']:+.2e}" if "loss" in rec else "no group survived: no update"]
    return " | ".join(parts)


def evaluate(sample: Callable, score: Callable, test: list, names: list[str], k: int, seed: int,
             step: int) -> dict[str, Any]:
    """Sec. 6's metrics, the eval record: mean@k per task (the fraction correct over its P test prompts x k
    samples), the worst task's (the headline) and their average. Sampled on a forked RNG: evaluating never
    changes training."""
    acc = {}
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(seed)
        for name, (examples, ids) in zip(names, test):
            correct = [(r == 1.0).double().mean() for r in score(examples, sample(ids, k))]
            acc[name] = float(np.mean(correct))
    worst = min(acc.values())
    avg = sum(acc.values()) / len(acc)
    per_task = " ".join(f"{t} {v:.3f}" for t, v in acc.items())
    print(f"eval step {step} | worst {worst:.3f} | avg {avg:.3f} | {per_task}", flush=True)
    return {"kind": "eval", "step": step, "acc": acc, "worst": worst, "avg": avg}


def print_start(cfg, method: str, device, names: list[str], style: str, log_path: str) -> None:
    """The run's header: what trains on what, and the sizes derived from the flags."""
    B = cfg.batch_size
    print(f"mtgrpo | {method} | {cfg.model} on {device} | {', '.join(names)}\n"
          f"  B={B} prompts x N={cfg.num_rollouts} | M_os*B={int(round(cfg.os_factor * B))} per round | "
          f"{math.ceil(B / cfg.minibatch_size)} updates/step | {style} prompts | log {log_path}", flush=True)


def print_done(cfg, steps: int, seconds: float, ckpt: str, log_path: str) -> None:
    """The run's end: the summary of its evaluations, and how to go on."""
    print(f"\ndone: {steps} steps in {seconds / 60:.1f} min\n"
          f"{summary(log_path, cfg.eval_k, cfg.eval_prompts)}\n"
          f"  checkpoint {ckpt}; train on: python mtgrpo.py --resume {cfg.out_dir} --steps MORE\n"
          f"  log {log_path}; plots: python bench/plot.py {cfg.out_dir} --out {cfg.out_dir}/plots",
          flush=True)


def finished(ckpt: str, saved: dict[str, Any], steps: int) -> bool:
    """A resumed run already at --steps has nothing to do: say so."""
    done = saved["loop"]["step"] >= steps
    if done:
        print(f"{ckpt} is at step {saved['loop']['step']} of --steps {steps}: the run is finished "
              "(raise --steps to go on)")
    return done


def summary(log_path: str, k: int, prompts: int) -> str:
    """Each task's test accuracy at the first and the last evaluation of a log, and the noise to read them
    against: the binomial std sqrt(p (1 - p) / (prompts k)) of a mean@k, at its largest over the values
    shown."""
    evals = [r for r in map(json.loads, open(log_path)) if r["kind"] == "eval"]
    first, last = evals[0], evals[-1]
    rows = [(t, first["acc"][t], last["acc"][t]) for t in last["acc"]]
    rows += [("worst task", first["worst"], last["worst"]), ("average", first["avg"], last["avg"])]
    std = max(math.sqrt(p * (1 - p) / (prompts * k)) for _, *ps in rows for p in ps)
    lines = [f"  test accuracy, mean@{k} over {prompts} prompts per task (noise: binomial std <= {std:.3f})",
             f"  {'':12s} step {first['step']:<5d} step {last['step']:<5d} change"]
    lines += [f"  {t:12s} {x:10.3f} {y:10.3f} {y - x:+7.3f}" for t, x, y in rows]
    return "\n".join(lines)


# --- The run around the loop: its setup, each step's end, its end -------------------------------------------
@dataclass
class Run:
    """What mtgrpo.train() gets from its setup; its methods do the I/O around each step of the loop."""
    cfg: Any
    ckpt: str                  # the checkpoint resumed from, then the newest one saved
    saved: dict[str, Any]      # that checkpoint's trainer state ({} on a fresh run)
    log_path: str
    device: torch.device
    model: Any
    tokenizer: Any
    style: str                 # the prompt style: r1, chat or plain
    eos_ids: list[int]         # the tokens that end a response
    names: list[str]           # the K task names
    train_sets: list           # per task: (examples, prompt ids)
    test_sets: list
    log: Callable | None = None  # begin() sets it: log(record) -> log.jsonl and --report-to's trackers
    first: int = 0             # the step the run (re)starts from
    t_start: float = 0.0

    def begin(self, opt: torch.optim.Optimizer, loop_state, methods: dict[str, dict]) -> Callable:
        """Before the first step: a resumed run gets its optimizer, loop state and log back; a fresh one
        logs its config (and the method it matches). Opens the log, prints the header. -> log(record)."""
        cfg = self.cfg
        if self.saved:
            load_checkpoint(self.ckpt, self.saved, opt, loop_state, self.log_path)
        self.log = run_log(self.log_path, cfg, self.names)
        same = {m: all(getattr(cfg, k) == v for k, v in f.items()) for m, f in methods.items()}
        method = next((m for m, is_it in same.items() if is_it), "custom")
        if not self.saved:
            self.log({"kind": "config", "method": method, **asdict(cfg)})
        print_start(cfg, method, self.device, self.names, self.style, self.log_path)
        self.first = loop_state.step
        self.t_start = time.perf_counter()
        return self.log

    def log_step(self, record: dict[str, Any], sampled: np.ndarray) -> None:
        """The step's record to the log, and its progress line with the time left."""
        self.log(record)
        step = record["step"]
        remaining = (time.perf_counter() - self.t_start) / (step - self.first) * (self.cfg.steps - step)
        print(progress_line(record, self.cfg.steps, sampled, remaining), flush=True)

    def save(self, opt: torch.optim.Optimizer, loop_state, stop: dict[str, int] | None) -> None:
        """A checkpoint at the last step and every --save-every; after Ctrl-C / SIGTERM (stop set by
        catch_signals) one more, then exit."""
        cfg = self.cfg
        step = loop_state.step
        if step == cfg.steps or stop or (cfg.save_every and step % cfg.save_every == 0):
            self.ckpt = save_checkpoint(cfg.out_dir, self.model, self.tokenizer, opt, loop_state, asdict(cfg),
                                        self.log_path, cfg.keep_checkpoints)
        if stop:  # the step is done and saved
            print(f"stopped after step {step}: checkpoint {self.ckpt}\n"
                  f"resume with: python mtgrpo.py --resume {cfg.out_dir}", flush=True)
            self.log.close()
            raise SystemExit(128 + stop["signum"])

    def done(self) -> None:
        """The end: close the log and print the summary of the run's evaluations."""
        self.log.close()
        print_done(self.cfg, self.cfg.steps - self.first, time.perf_counter() - self.t_start, self.ckpt,
                   self.log_path)


def start_run(cfg) -> Run | None:
    """Everything before the first step that is not the method: the checks (all before anything loads, so a
    failed start leaves no files), the checkpoint to resume, the out dir, the tasks, the model and tokenizer,
    the prompt style and stop ids. None: the resumed run is at --steps already."""
    from models import load_model, prompt_style, stop_token_ids, tokenize_tasks
    from tasks import load_tasks
    validate(cfg)
    ckpt, saved = read_checkpoint(cfg.resume) if cfg.resume else ("", {})
    if saved and finished(ckpt, saved, cfg.steps):
        return None
    log_path = prepare_out_dir(cfg.out_dir, cfg.overwrite, ckpt)
    try:
        loaded = load_tasks(cfg.tasks, cfg.n_train, cfg.eval_prompts, cfg.seed)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(cfg.seed)  # the tiny model's init, then every torch sample of the run
        model, tokenizer = load_model(ckpt or cfg.model, device, cfg.grad_checkpointing, seed=cfg.seed)
        style = prompt_style(cfg.prompt_style, model, tokenizer)  # auto: chat template for instruct models
        eos_ids = stop_token_ids(model, tokenizer, style)
        tokenized = tokenize_tasks(loaded, tokenizer, cfg.eval_prompts, cfg.max_prompt_len, style)
    except ValueError:
        if not os.listdir(cfg.out_dir):
            os.rmdir(cfg.out_dir)  # a failed start leaves nothing behind
        raise
    names, train_sets, test_sets = tokenized
    return Run(cfg, ckpt, saved, log_path, device, model, tokenizer, style, eos_ids, names, train_sets,
               test_sets)


# --- Input checks of the method's functions (mtgrpo.py calls them) ------------------------------------------
def check_distribution(z, name: str = "z") -> None:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 1 or len(z) == 0 or (z < 0).any() or abs(z.sum() - 1.0) > 1e-6:
        raise ValueError(f"{name} must be a probability vector over the K tasks (non-negative, sums to 1), "
                         f"got {z}")


def check_rewards(rewards: torch.Tensor, min_rollouts: int = 1) -> None:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must have shape (B, N), got {tuple(rewards.shape)}")
    if rewards.shape[1] < min_rollouts:
        raise ValueError(f"rewards must have shape (B, N) with N >= {min_rollouts} rollouts per prompt, "
                         f"got {tuple(rewards.shape)}")


def check_loss_shapes(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                      mask: torch.Tensor) -> None:
    if not (logp.shape == old_logp.shape == mask.shape and adv.shape == logp.shape[:1]):
        shapes = [tuple(t.shape) for t in (logp, old_logp, mask, adv)]
        raise ValueError(f"shape mismatch: want (R, T) x3 and (R,), got {shapes}")


def check_weight_args(z: torch.Tensor, improvement: torch.Tensor, accuracy: torch.Tensor) -> None:
    check_distribution(z)
    if not (z.shape == improvement.shape == accuracy.shape):
        shapes = [tuple(t.shape) for t in (z, improvement, accuracy)]
        raise ValueError(f"z, improvement, accuracy must all have shape (K,), got {shapes}")


def check_sampler_args(z, B: int, rho, os_factor: float, max_rounds: int,
                       acc_cap: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A sampler's inputs as float64 arrays, or a ValueError naming the argument."""
    z = np.asarray(z, dtype=np.float64)
    rho = np.asarray(rho, dtype=np.float64)
    check_distribution(z)
    checks = ((B >= 1, f"B (batch size in prompts) must be >= 1, got {B}"),
              (len(rho) == len(z) and ((0 <= rho) & (rho < 1)).all(),
               f"rho must hold K={len(z)} rates in [0, 1), got {rho}"),
              (os_factor >= 1, f"M_os (oversampling factor) must be >= 1, got {os_factor}"),
              (max_rounds >= 0, f"N_rs (max resampling rounds) must be >= 0, got {max_rounds}"),
              (acc_cap >= 1, f"M_acc (inflation cap) must be >= 1, got {acc_cap}"))
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return z, rho


# --- The loop state in a checkpoint: one format for mtgrpo.py's checkpoints and the TRL integration's -------
def loop_state_dict(state) -> dict[str, Any]:
    """mtgrpo.LoopState -> tensors and plain values only: a checkpoint loads with
    torch.load(weights_only=True)."""
    return {"xi": state.xi.detach().clone(), "xi_optimizer": state.xi_opt.state_dict(),
            "rho": torch.from_numpy(state.rho), "J": state.J.clone(), "sec_q": torch.from_numpy(state.sec_q),
            "rng": state.rng.bit_generator.state, "pools": state.pools, "step": state.step}


def load_loop_state(state, saved: dict[str, Any]) -> None:
    """Restore loop_state_dict's output into a fresh mtgrpo.LoopState, in place."""
    with torch.no_grad():
        state.xi.copy_(saved["xi"])  # in place: xi_opt holds this tensor
    state.xi_opt.load_state_dict(saved["xi_optimizer"])
    state.rho = saved["rho"].numpy()
    state.J = saved["J"]
    state.sec_q = saved["sec_q"].numpy()
    state.rng.bit_generator.state = saved["rng"]
    state.pools = saved["pools"]
    state.step = int(saved["step"])
