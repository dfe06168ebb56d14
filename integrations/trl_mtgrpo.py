"""
MT-GRPO (Ramesh et al., arXiv 2602.05547) as a drop-in for TRL's GRPOTrainer: the scale path (accelerate or
DeepSpeed/FSDP over many GPUs, vLLM rollouts). The method is imported from mtgrpo.py, not copied; this file only
wires it into TRL. One MT-GRPO step (Algorithm 1) is one TRL generation batch:

    _prepare_inputs, at a generation step:                        (Algorithm 1, lines 2-3)
        z      = task_weights(...)                                 softmax(xi), SEC's, or uniform
        batch  = rp_sample(z, B, sample_round, rho, rng)           Algorithm 2 (or dynamic_sample: the baselines)
                 sample_round = mtgrpo.rollout_round over z-drawn dataset rows, each round generated and scored by
                 GRPOTrainer._generate_and_score_completions; constant groups are dropped by its filter
        survivors -> whole groups per rank, same count on every rank, cut into steps_per_generation minibatches
    the optimizer steps of TRL run on those minibatches             (line 4, Eq. 13: TRL's loss)
    after the batch's last optimizer step (a callback):             (lines 5-6)
        I_k    = Eq. 8 on the batch at theta_t+1, J_k = pre-filter accuracy; xi <- Subroutine 1 (update_task_weights)

Every rank draws the same prompts (one sampler RNG, seeded alike) and sees the same gathered rewards, so z, the
targets, rho and the trimming agree on all ranks without extra messages; prompt j of a round is generated on rank
j % W. vLLM: weights are synced once per step (TRL syncs when global_step changes); the extra rounds of a step run
before its first update, on the same weights. Pinned to trl==1.16.* (private methods).

    accelerate launch --num_processes 8 integrations/trl_mtgrpo.py --model Qwen/Qwen2.5-3B --use_vllm --vllm_mode colocate
"""

from __future__ import annotations

import json, os, time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import gather, gather_object
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

import mtgrpo
import support

def _ref(name: str) -> Any:
    """A field with mtgrpo.Config's default and help: the paper's values (App. E) have one home."""
    f = mtgrpo.Config.__dataclass_fields__[name]
    choices = f" (choices: {', '.join(support.CHOICES[name])})" if name in support.CHOICES else ""
    return field(default=f.default, metadata={"help": f.metadata["help"] + choices})

@dataclass
class MTGRPOConfig(GRPOConfig):
    """GRPOConfig plus MT-GRPO's fields. B (prompts per step after filtering) is generation_batch_size /
    num_generations over all ranks; minibatches are TRL's steps_per_generation."""
    method: str = field(default="mtgrpo", metadata={"help": f"sets sampler, weighting, filter, epsilon_high: {', '.join(mtgrpo.METHODS)}"})
    sampler: str | None = field(default=None, metadata={"help": "rp | dynamic | grpo (default: from --method)"})
    weighting: str | None = field(default=None, metadata={"help": "iwu | reward_l2 | sec | uniform (default: from --method)"})
    filter: str | None = field(default=None, metadata={"help": "strict | lenient | none (default: from --method, else strict)"})
    task_column: str = field(default="task", metadata={"help": "dataset column naming each row's task"})
    lam: float = _ref("lam")
    eta: float = _ref("eta")
    xi_optimizer: str = _ref("xi_optimizer")
    xi_lr: float = _ref("xi_lr")
    xi_weight_decay: float = _ref("xi_weight_decay")
    improvement_clip: float = _ref("improvement_clip")
    improvement_agg: str = _ref("improvement_agg")
    accuracy_decay: float = _ref("accuracy_decay")
    prompt_pools: bool = _ref("prompt_pools")
    iwu_every: str = field(default="step", metadata={"help": "step only: the released code's per-minibatch IWU "
                                                      "runs in mtgrpo.py (--iwu-every minibatch)"})
    os_factor: float = _ref("os_factor")
    max_resample_rounds: int = _ref("max_resample_rounds")
    acc_cap: float = _ref("acc_cap")
    rho_decay: float = _ref("rho_decay")
    inflate: bool = _ref("inflate")
    sec_temperature: float = _ref("sec_temperature")
    sec_decay: float = _ref("sec_decay")
    adv_std: str = _ref("adv_std")
    adam_beta2: float = field(default=mtgrpo.Config.beta2, metadata={"help": "policy AdamW beta2 (paper: 0.99)"})

    def __post_init__(self):
        if self.method not in mtgrpo.METHODS:
            raise ValueError(f"method must be one of {', '.join(mtgrpo.METHODS)}, got {self.method!r}")
        preset = {"filter": mtgrpo.Config.filter, **mtgrpo.METHODS[self.method]}
        for name in ("sampler", "weighting", "filter"):
            setattr(self, name, preset[name] if getattr(self, name) is None else getattr(self, name))
        self.epsilon_high = preset["eps_high"] if self.epsilon_high is None else self.epsilon_high
        for name in ("sampler", "weighting", "filter", "xi_optimizer", "improvement_agg", "adv_std"):
            if getattr(self, name) not in support.CHOICES[name]:
                raise ValueError(f"{name} must be one of {support.CHOICES[name]}, got {getattr(self, name)!r}")
        if self.iwu_every != "step":
            raise ValueError("iwu_every must be 'step' in the TRL integration; the released code's per-minibatch "
                             "IWU step runs in mtgrpo.py (--iwu-every minibatch)")
        if self.weighting == "reward_l2" and self.xi_optimizer == "adamw":
            raise ValueError("weighting reward_l2 puts eta xi on the gradient: set xi_optimizer sgd (the paper) or adam")
        super().__post_init__()
        if self.per_device_train_batch_size % self.num_generations:
            raise ValueError(f"per_device_train_batch_size ({self.per_device_train_batch_size}) must be a multiple of num_generations "
                             f"({self.num_generations}): every rank trains on whole groups")
        if self.steps_per_generation * self.num_iterations % self.gradient_accumulation_steps:
            raise ValueError("steps_per_generation * num_iterations must be a multiple of gradient_accumulation_steps: "
                             "I_k and the IWU step run after the batch's last optimizer step")
        cycle = self.steps_per_generation * self.num_iterations // self.gradient_accumulation_steps  # optimizer steps per step
        for name in ("max_steps", "save_steps"):  # a batch cut short never gets its IWU step; a checkpoint there can't resume
            v = getattr(self, name)
            if v >= 1 and v % cycle and (name == "max_steps" or self.save_strategy == "steps"):
                raise ValueError(f"{name} ({v}) must be a multiple of {cycle}, the optimizer steps of one generation batch")

def verify_reward(completions: list, answer: list, verifier: list, info: list, task: list, **_) -> list[float]:
    """A TRL reward function scoring by verify.py (1.0 correct, 0.1 boxed but wrong, 0.0 no box): the dataset
    carries task_dataset's columns answer, verifier and info (JSON)."""
    from tasks import Example
    from verify import reward
    text = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [reward(c, Example(t, "", a, v, json.loads(i))) for c, a, v, i, t in zip(text, answer, verifier, info, task)]

def per_task_reward(funcs: dict[str, Callable], task_column: str = "task") -> Callable:
    """Any TRL reward function per task -> one reward function that hands each row to its task's function."""
    def reward(prompts: list, completions: list, **kw) -> list:
        out: list = [None] * len(completions)
        for name, fn in funcs.items():
            idx = [i for i, t in enumerate(kw[task_column]) if t == name]
            if idx:
                sub = {k: [v[i] for i in idx] if isinstance(v, list) and len(v) == len(completions) else v for k, v in kw.items()}
                for i, r in zip(idx, fn(prompts=[prompts[i] for i in idx], completions=[completions[i] for i in idx], **sub)):
                    out[i] = r
        return out
    reward.__name__ = "per_task_reward"
    return reward

def task_dataset(task_names: str, n_train: int, seed: int, style: str = "r1", tokenizer=None, n_test: int = mtgrpo.Config.eval_prompts):
    """A datasets.Dataset of tasks.py's train splits: columns prompt, task, answer, verifier, info (for verify_reward).
    The split follows n_test (held out first), as in mtgrpo.py with --eval-prompts n_test: the same rows, in order."""
    import datasets
    from tasks import load_tasks, make_prompt
    rows = [{"prompt": make_prompt(ex, style, tokenizer), "task": ex.task, "answer": ex.answer, "verifier": ex.verifier,
             "info": json.dumps(ex.info)} for train, _ in load_tasks(task_names, n_train, n_test, seed) for ex in train]
    return datasets.Dataset.from_list(rows)

def _cat(tensors: list[torch.Tensor], left: bool, value: float) -> torch.Tensor:
    """Concatenate (n_i, L_i) tensors along rows, padding L on the left (prompts) or the right (completions)."""
    if tensors[0].dim() < 2:
        return torch.cat(tensors)
    width = max(t.shape[1] for t in tensors)
    return torch.cat([F.pad(t, (width - t.shape[1], 0) if left else (0, width - t.shape[1]), value=value) for t in tensors])

def balance(owners: list[int], world: int) -> list[list[int]]:
    """Positions of a batch's groups -> the positions each rank trains: len // world each (a short batch drops the
    rest), a group staying on the rank that generated it where it can, so few groups cross ranks."""
    per = len(owners) // world
    assign: list[list[int]] = [[] for _ in range(world)]
    spare = []
    for pos, r in enumerate(owners[:per * world]):
        (assign[r] if len(assign[r]) < per else spare).append(pos)
    for a in assign:
        a += [spare.pop(0) for _ in range(per - len(a))]
    return [sorted(a) for a in assign]

class _EndOfStep(TrainerCallback):
    """After the optimizer step that ends a generation batch (and before the Trainer logs and saves): Alg. 1 lines 5-6."""
    def __init__(self, trainer: "MTGRPOTrainer"):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        t = self.trainer
        if t._pending is not None and t._step % (args.steps_per_generation * t.num_iterations) == 0:
            t._finish_step()

class MTGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose generation batch is built by MT-GRPO's sampler over a `task` column, with task weights.
    Advantages are mtgrpo.group_advantages (Eq. 11) of the weighted reward sum: TRL's scale_rewards and
    multi_objective_aggregation do not apply. J_k counts rewards of exactly 1.0 as correct, as the strict filter does."""
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        a, W = self.args, self.accelerator.num_processes
        if not isinstance(a, MTGRPOConfig):
            raise ValueError("MTGRPOTrainer needs args=MTGRPOConfig(...)")
        if not hasattr(self.train_dataset, "__getitem__") or a.task_column not in self.train_dataset.column_names:
            raise ValueError(f"MTGRPOTrainer needs a map-style train_dataset with a {a.task_column!r} column")
        if self.rollout_func is not None or self.tools or self.environment_factories is not None:
            raise ValueError("MTGRPOTrainer supports single-turn generation only (no rollout_func, tools or environments)")
        self.B = a.generation_batch_size // self.num_generations  # prompts per step after filtering, all ranks
        if self.B % W:
            raise ValueError(f"B = {self.B} prompts per step must be a multiple of the {W} processes")
        column = self.train_dataset[a.task_column]
        self.task_names = list(dict.fromkeys(column))
        rows = [[i for i, t in enumerate(column) if t == name] for name in self.task_names]
        self._pools = [(r, r) for r in rows]  # rollout_round's (examples, prompts): dataset row indices here
        # the loop state's sampler RNG is seeded alike on every rank: every sampling decision agrees
        self.mt = mtgrpo.start_state(len(self.task_names), a, a.seed)
        self.mt_history: list[dict[str, Any]] = []  # one record per step, as mtgrpo.py's log.jsonl
        self._pending: dict[str, Any] | None = None  # the step's batch until its I_k and IWU step are done
        self._capture_slot: int | None = None
        self.add_callback(_EndOfStep(self))

    # --- Algorithm 1, lines 2-3: the batch ---------------------------------------------------------------------
    def _prepare_inputs(self, generation_batch):
        """The dataloader's batch is ignored in training: the sampler draws its own rows by z. Eval is TRL's."""
        if not self.model.training:
            return super()._prepare_inputs(generation_batch)
        if self._step % (self.args.steps_per_generation * self.num_iterations) == 0 or self._buffered_inputs is None:
            self._buffered_inputs = self._sample_batch()
        return self._buffered_inputs[self._step % self.args.steps_per_generation]

    def _sample_batch(self) -> list[dict[str, Any]]:
        a, t0 = self.args, time.perf_counter()
        self._rounds, self._kept, self._filler, self._seconds_gen = [], {}, None, 0.0
        if a.prompt_pools:  # the released code: without replacement across steps, refilled below M_os B
            draw = mtgrpo.pool_draws(self.mt.rng, self.mt.pools, int(round(a.os_factor * self.B)))
        else:
            draw = mtgrpo.step_draws(self.mt.rng, len(self.task_names))
        def sample_round(counts: np.ndarray):
            survivors, stats = mtgrpo.rollout_round(counts, self._pools, self._generate_round, self._round_rewards,
                                                    self.num_generations, a.filter, draw)
            self._keep_local(survivors)
            return survivors, stats
        z, batch = mtgrpo.draw_batch(a, self.mt, self.B, sample_round)  # Algorithm 1, lines 2-3
        minibatches, tasks, used_groups = self._distribute(batch)
        # pi_old (theta_t) of every row, for I_k's pass at theta_t+1: TRL's when it keeps one (several updates per batch,
        # vLLM), else the training forward's own (compute_loss; all at theta_t), else (the liger loss hides it) one pass now
        olds = [mb.get("old_per_token_logps") for mb in minibatches]
        if a.weighting == "iwu" and a.use_liger_kernel:
            olds = [self._logps(mb) if o is None else o for mb, o in zip(minibatches, olds)]
        self._pending = dict(z=z, batch=batch, minibatches=minibatches, olds=olds, tasks=tasks, groups=used_groups,
                             groups_moved=self._groups_moved,
                             seconds_sampling=time.perf_counter() - t0, seconds_gen=self._seconds_gen)
        self._rounds = self._kept = None
        return minibatches

    def _generate_round(self, rows: list[int], N: int) -> list[tuple[tuple[int, int, int], torch.Tensor]]:
        """rollout_round's `sample`: prompt j of the round -> rank j % W, which generates its N rollouts; ranks pad
        with a repeated prompt to equal sizes (its rollouts are discarded). -> per prompt (handle, tokens per row)."""
        if not rows:
            return []
        W, rank = self.accelerator.num_processes, self.accelerator.process_index
        per_rank, mine = -(-len(rows) // W), rows[rank::W]
        local = mine + [(mine or rows)[0]] * (per_rank - len(mine))
        t0 = time.perf_counter()
        out = self._generate_and_score_completions([dict(self.train_dataset[i]) for i in local for _ in range(N)])
        self._seconds_gen += time.perf_counter() - t0
        if "pixel_values" in out or "tool_mask" in out:
            raise ValueError("MTGRPOTrainer supports text-only, single-turn rollouts")
        rewards = (self._last_rewards * self.reward_weights.to(self._last_rewards.device)).nansum(dim=1)  # all ranks' rows
        rewards = rewards.view(W, per_rank, N).float().cpu()
        out["advantages"] = mtgrpo.group_advantages(rewards[rank], self.args.adv_std == "unbiased").reshape(-1).to(out["advantages"].device)
        tokens = gather(out["completion_mask"].sum(dim=1)).view(W, per_rank, N).cpu()
        self._rounds.append((out, rewards))
        rid = len(self._rounds) - 1
        return [((rid, j % W, j // W), tokens[j % W, j // W]) for j in range(len(rows))]

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self._last_rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # gathered
        return self._last_rewards

    def _round_rewards(self, rows: list[int], outs: list) -> list[torch.Tensor]:
        """rollout_round's `score`: the gathered rewards of each prompt's N rollouts, (N,) each."""
        return [self._rounds[rid][1][rank, li] for (rid, rank, li), _ in outs]

    def _keep_local(self, survivors: list[list[mtgrpo.Group]]) -> None:
        """Keep the rows of this rank's surviving groups, free the rest of the round (and one filler group)."""
        out, N, rank = self._rounds[-1][0], self.num_generations, self.accelerator.process_index
        # copies, not views: a view would keep the whole round's tensors alive
        piece = lambda li: {k: v[li * N:(li + 1) * N].clone() for k, v in out.items() if torch.is_tensor(v) and v.dim() > 0}  # noqa: E731
        if self._filler is None:  # trains nothing: a rank with no group for a minibatch (short batch) runs this one
            self._filler = {**piece(0), "advantages": torch.zeros_like(out["advantages"][:N]),
                            "completion_mask": torch.zeros_like(out["completion_mask"][:N])}
        for g in (g for s in survivors for g in s if g.response[1] == rank):
            self._kept[g.response] = piece(g.response[2])
        self._rounds[-1] = (None, self._rounds[-1][1])

    def _distribute(self, batch: mtgrpo.SampledBatch) -> tuple[list[dict[str, Any]], list[torch.Tensor], list[mtgrpo.Group]]:
        """The sampled batch -> this rank's steps_per_generation minibatches of whole groups, every rank the same count.
        Groups move between ranks (all_gather_object) only where the trimming left ranks unequal."""
        W, rank, N, S = self.accelerator.num_processes, self.accelerator.process_index, self.num_generations, self.args.steps_per_generation
        handles = [g.response for g in batch.groups]
        assign = balance([h[1] for h in handles], W)
        self._groups_moved = sum(handles[p][1] != r for r, a in enumerate(assign) for p in a)
        if W > 1:
            moving = [(dest, pos, {k: v.cpu() for k, v in self._kept[handles[pos]].items()})
                      for dest, a in enumerate(assign) if dest != rank for pos in a if handles[pos][1] == rank]
            arrived = {pos: {k: v.to(self.accelerator.device) for k, v in p.items()} for dest, pos, p in gather_object(moving) if dest == rank}
        mine = [self._kept[handles[p]] if handles[p][1] == rank else arrived[p] for p in assign[rank]]
        task_of = [torch.full((N,), batch.tasks[p]) for p in assign[rank]]
        minibatches, tasks, pad_id = [], [], self._tokenizer.pad_token_id
        for idx in np.array_split(np.arange(len(mine)), S):
            groups = [mine[i] for i in idx] or [self._filler]
            mb = {k: _cat([g[k] for g in groups], k.startswith("prompt"), pad_id if k.endswith("_ids") else 0.0) for k in groups[0]}
            minibatches.append(mb)
            tasks.append(torch.cat([task_of[i] for i in idx]) if len(idx) else torch.full((N,), -1))
        n_items = gather(sum(mb["completion_mask"].sum() for mb in minibatches).reshape(1)).sum()  # dapo's normalizer
        for mb in minibatches:
            mb["num_items_in_batch"] = n_items
        return minibatches, tasks, [batch.groups[p] for a in assign for p in a]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss. When TRL keeps no pi_old (one optimizer step per batch, so every forward is at theta_t), this
        forward's log-probs are the minibatch's pi_old for I_k, as mtgrpo.py's first minibatch: no extra pass."""
        p, slot = self._pending, self._step % self.args.steps_per_generation
        capture = model.training and p is not None and self.args.weighting == "iwu" and p["olds"][slot] is None
        self._capture_slot = slot if capture else None
        try:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            self._capture_slot = None

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        out = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._capture_slot is not None:  # the loss's forward at theta_t: this minibatch's pi_old
            self._pending["olds"][self._capture_slot], self._capture_slot = out[0].detach(), None
        return out

    def _logps(self, mb: dict[str, Any]) -> torch.Tensor:
        """Per-token log-probs of a minibatch's completions under the current weights, no grad (TRL's own pass)."""
        with torch.no_grad():
            ids = torch.cat([mb["prompt_ids"], mb["completion_ids"]], dim=1)
            att = torch.cat([mb["prompt_mask"], mb["completion_mask"]], dim=1)
            return self._get_per_token_logps_and_entropies(self.model, ids, att, mb["completion_ids"].size(1),
                                                           batch_size=self.args.per_device_train_batch_size)[0]

    # --- Algorithm 1, lines 5-6: I_k (Eq. 8), J_k, the task-weight step (Subroutine 1) ---------------------------
    def _improvement(self, p: dict[str, Any]) -> torch.Tensor:
        """Eq. 8 over this step's batch on all ranks: token sums per task all-reduced, then J_GRPO,k before / after."""
        K, agg = len(self.task_names), self.args.improvement_agg
        sums = torch.zeros(3, K, dtype=torch.float64)  # token sums of the surrogate after, before; tokens
        for mb, old, task in zip(p["minibatches"], p["olds"], p["tasks"]):
            ok = (task >= 0).to(mb["advantages"].device)  # filler rows carry task -1 and no tokens
            mask, adv, t = mb["completion_mask"][ok].float(), mb["advantages"][ok].float(), task[task >= 0].to(mb["advantages"].device)
            surr = mtgrpo.clipped_surrogate(self._logps(mb)[ok].float(), old[ok].float(), adv, self.epsilon_low, self.epsilon_high)
            tokens = torch.zeros(K, device=mask.device).index_add_(0, t, mask.sum(dim=1))
            scale = torch.ones_like(tokens) if agg == "sum" else tokens.clamp(min=1.0)  # token means -> token sums
            for i, s in enumerate((surr, adv[:, None].expand_as(mask))):  # at theta_t the ratio is 1: the surrogate is A
                sums[i] += (mtgrpo.task_objectives(s, mask, t, K, agg) * scale).double().cpu()
            sums[2] += tokens.double().cpu()
        sums = gather(sums[None].to(self.accelerator.device)).sum(dim=0).cpu()
        after, before = (sums[:2] if agg == "sum" else sums[:2] / sums[2].clamp(min=1.0)).float()
        return mtgrpo.task_improvement(before, after, self.args.improvement_clip)

    def _finish_step(self) -> None:
        a, p, self._pending = self.args, self._pending, None
        t0, batch, K, N = time.perf_counter(), p["batch"], len(self.task_names), self.num_generations
        improvement = self._improvement(p) if a.weighting == "iwu" else torch.zeros(K)  # line 5, Eq. 8
        mtgrpo.update_accuracy(a, self.mt, batch)  # J_k
        mtgrpo.update_weights(a, self.mt, p["groups"], improvement)  # line 6: xi (or SEC's Q)
        used = len(p["groups"])
        rec = {"step": self.mt.step, "z": p["z"].tolist(), "targets": batch.targets, "shares": (np.bincount([g.task for g in p["groups"]],
               minlength=K) / max(used, 1)).tolist(), "rho": batch.rho.tolist(), "J": self.mt.J.tolist(), "I": improvement.tolist(),
               "xi": self.mt.xi.detach().tolist(), "rounds": batch.rounds, "generated": batch.generated, "accepted": batch.accepted,
               "groups_used": used, "groups_moved": p["groups_moved"], "seconds_sampling": p["seconds_sampling"], "seconds_gen": p["seconds_gen"],
               "seconds_weights": time.perf_counter() - t0}
        self.mt_history.append(rec)
        m = self._metrics["train"]
        for key in ("z", "shares", "targets", "rho", "J", "I"):
            for name, v in zip(self.task_names, rec[key]):
                m[f"mtgrpo/{key}/{name}"].append(float(v))
        for key in ("rounds", "groups_used", "groups_moved", "seconds_sampling", "seconds_gen", "seconds_weights"):
            m[f"mtgrpo/{key}"].append(float(rec[key]))
        m["mtgrpo/prompts_generated"].append(float(sum(map(sum, batch.generated))))

    # --- Checkpoints: xi, its optimizer, rho, J, SEC's values and the sampler RNG ---------------------------------
    def _save_checkpoint(self, model, trial):
        if self._pending is not None:  # its I_k and IWU step are still due: a resume could not continue exactly
            raise ValueError("a checkpoint fell inside a generation batch: make save_steps a multiple of "
                             "steps_per_generation * num_iterations / gradient_accumulation_steps")
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            path = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}", "mtgrpo_state.pt")
            torch.save({"tasks": self.task_names, "loop": support.loop_state_dict(self.mt)}, path)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        saved = torch.load(os.path.join(checkpoint, "mtgrpo_state.pt"), weights_only=True)
        if saved["tasks"] != self.task_names:
            raise ValueError(f"checkpoint {checkpoint} trained tasks {saved['tasks']}, this dataset has {self.task_names}")
        support.load_loop_state(self.mt, saved["loop"])

@dataclass
class ScriptArguments:
    model: str = field(default="tiny", metadata={"help": "hub name, local save_pretrained dir, or tiny"})
    tasks: str = field(default=mtgrpo.Config.tasks, metadata={"help": "tasks.py task names or .jsonl files, comma-separated"})
    n_train: int = field(default=mtgrpo.Config.n_train, metadata={"help": "train prompts per task"})
    prompt_style: str = field(default="auto", metadata={"help": "auto | r1 | chat | plain (tasks.make_prompt)"})

def main(argv: list[str] | None = None) -> None:
    from transformers import HfArgumentParser
    from models import load_model, prompt_style
    script, cfg = HfArgumentParser((ScriptArguments, MTGRPOConfig)).parse_args_into_dataclasses(argv)
    model, tokenizer = load_model(script.model, seed=cfg.seed)
    dataset = task_dataset(script.tasks, script.n_train, cfg.seed, prompt_style(script.prompt_style, model, tokenizer), tokenizer)
    trainer = MTGRPOTrainer(model=model, reward_funcs=verify_reward, args=cfg, train_dataset=dataset, processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=cfg.resume_from_checkpoint)
    if torch.distributed.is_initialized():  # gloo can abort in its destructor if the interpreter tears it down
        torch.distributed.destroy_process_group()

if __name__ == "__main__":
    main()
