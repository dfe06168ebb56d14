"""
MT-GRPO (Ramesh et al., arXiv 2602.05547) as a drop-in for TRL's GRPOTrainer: the scale path (accelerate or
DeepSpeed/FSDP over many GPUs, vLLM rollouts). The method is imported from mtgrpo.py, not copied; this file
only wires it into TRL. One MT-GRPO step (Algorithm 1) is one TRL generation batch:

    _prepare_inputs, at a generation step:                     (Algorithm 1, lines 2-3)
        z, batch = mtgrpo.draw_batch(...)                       the RP sampler (or the baselines' sampler);
                   each round generated and scored by GRPOTrainer._generate_and_score_completions
        the batch's groups -> minibatches of whole groups, in mtgrpo.py's order and sizes
    TRL's optimizer steps on those minibatches                  (line 4, Eq. 13: each / its own tokens)
    after the batch's last optimizer step (a callback):         (lines 5-6)
        I_k = Eq. 8 on the batch at theta_t+1; mtgrpo.update_weights: J_k, then xi (Subroutine 1)

Where TRL's defaults differ from the paper, MTGRPOConfig follows the paper and mtgrpo.py: a constant LR, AdamW
beta2 0.99, each optimizer step's loss divided by its own token count, prompts tokenized without special
tokens, the chat template's end-of-turn token among the stop ids. --mtgrpo_steps counts MT-GRPO steps.

Every rank draws the same prompts (one sampler RNG, seeded alike) and sees the same gathered rewards, so z,
the targets, rho and the trimming agree on all ranks without extra messages; prompt j of a round is generated
on rank j % W. vLLM: weights are synced once per step (TRL syncs when global_step changes); the extra rounds
of a step run before its first update, on the same weights. Pinned to trl==1.16.* (private methods, tested).

    accelerate launch --num_processes 8 integrations/trl_mtgrpo.py --model Qwen/Qwen2.5-3B --use_vllm ...
"""

from __future__ import annotations

import contextlib, json, os, time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import gather, gather_object
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from trl.data_utils import is_conversational

import mtgrpo
import support
from tasks import prompt_draws

def _ref(name: str) -> Any:
    """A field with mtgrpo.Config's default and help: the paper's values (App. E) have one home."""
    f = mtgrpo.Config.__dataclass_fields__[name]
    choices = f" (choices: {', '.join(support.CHOICES[name])})" if name in support.CHOICES else ""
    return field(default=f.default, metadata={"help": f.metadata["help"] + choices})

def _help(text: str, default: Any = None) -> Any:
    """A field with its --help line: HfArgumentParser makes every field a flag, as GRPOConfig's are."""
    return field(default=default, metadata={"help": text})

LOSS_NORMALIZERS = ("minibatch", "generation")

@dataclass
class MTGRPOConfig(GRPOConfig):
    """GRPOConfig plus MT-GRPO's fields. B (prompts per step after filtering) is generation_batch_size /
    num_generations over all ranks; one MT-GRPO step is `cycle` = steps_per_generation x num_iterations /
    gradient_accumulation_steps optimizer steps."""
    method: str = _help(f"sets sampler, weighting, filter, epsilon_high: {', '.join(mtgrpo.METHODS)}",
                        "mtgrpo")
    sampler: str | None = _help("rp | dynamic | grpo (default: from --method)")
    weighting: str | None = _help("iwu | reward_l2 | sec | uniform (default: from --method)")
    filter: str | None = _help("strict | lenient | none (default: from --method, else strict)")
    task_column: str = _help("dataset column naming each row's task", "task")
    mtgrpo_steps: int = _help("MT-GRPO steps, Algorithm 1's T (paper: 720): sets max_steps to this x the "
                              "optimizer steps of one (0: max_steps decides)", 0)
    mtgrpo_save_steps: int = _help("checkpoint every this many MT-GRPO steps: sets save_steps (0: it "
                                   "decides)", 0)
    mtgrpo_eval_steps: int = _help("evaluate at step 0, every this many MT-GRPO steps and at the end: sets "
                                   "eval_steps and eval_strategy steps (0: they decide)", 0)
    eval_k: int = _ref("eval_k")
    prompt_style: str = _ref("prompt_style")
    loss_normalizer: str = _help("minibatch: each optimizer step's loss / its own tokens (Eq. 13, "
                                 "mtgrpo.py); generation: TRL's, / the batch's average tokens per step "
                                 "(loss_type dapo, cispo, vespo)", "minibatch")
    lr_scheduler_type: str = _help("paper and mtgrpo.py: constant (TRL's default: linear decay to 0)",
                                   "constant")
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
    adam_beta2: float = _help("policy AdamW beta2 (paper: 0.99)", mtgrpo.Config.beta2)

    def __post_init__(self):
        if self.method not in mtgrpo.METHODS:
            raise ValueError(f"method must be one of {', '.join(mtgrpo.METHODS)}, got {self.method!r}")
        preset = {"filter": mtgrpo.Config.filter, **mtgrpo.METHODS[self.method]}
        for name in ("sampler", "weighting", "filter"):
            setattr(self, name, preset[name] if getattr(self, name) is None else getattr(self, name))
        self.epsilon_high = preset["eps_high"] if self.epsilon_high is None else self.epsilon_high
        choices = {**support.CHOICES, "loss_normalizer": LOSS_NORMALIZERS}
        for name in ("sampler", "weighting", "filter", "xi_optimizer", "improvement_agg", "adv_std",
                     "prompt_style", "loss_normalizer"):
            if getattr(self, name) not in choices[name]:
                raise ValueError(f"{name} must be one of {choices[name]}, got {getattr(self, name)!r}")
        if self.iwu_every != "step":
            raise ValueError("iwu_every must be 'step' in the TRL integration; the released code's "
                             "per-minibatch IWU step runs in mtgrpo.py (--iwu-every minibatch)")
        if self.weighting == "reward_l2" and self.xi_optimizer == "adamw":
            raise ValueError("weighting reward_l2 puts eta xi on the gradient: set xi_optimizer sgd (the "
                             "paper) or adam")
        if self.num_generations_eval not in (None, self.eval_k):
            raise ValueError(f"num_generations_eval ({self.num_generations_eval}) is mean@k's k: set eval_k")
        self.num_generations_eval = self.eval_k  # TRL checks the eval batch size against it
        if self.mtgrpo_eval_steps and self.eval_strategy == "no":
            self.eval_strategy = "steps"
        super().__post_init__()
        if self.per_device_train_batch_size % self.num_generations:
            raise ValueError(f"per_device_train_batch_size ({self.per_device_train_batch_size}) must be a "
                             f"multiple of num_generations ({self.num_generations}): every rank trains on "
                             "whole groups")
        if self.steps_per_generation % self.gradient_accumulation_steps:
            raise ValueError(f"steps_per_generation ({self.steps_per_generation}) must be a multiple of "
                             f"gradient_accumulation_steps ({self.gradient_accumulation_steps}): an "
                             "optimizer step takes whole minibatches, and I_k and the IWU step follow the "
                             "batch's last one")
        self._set_step_counts()
        if self.eval_strategy == "steps":
            self.eval_on_start = True  # mtgrpo.py evaluates at step 0, every eval_every steps and at the end

    def _set_step_counts(self) -> None:
        """mtgrpo_* counts (MT-GRPO steps) -> TRL's (optimizer steps); TRL's must be multiples of the cycle: a
        batch cut short never gets its IWU step, and a checkpoint inside one could not resume."""
        cycle = self.cycle
        for ours, theirs in (("mtgrpo_steps", "max_steps"), ("mtgrpo_save_steps", "save_steps"),
                             ("mtgrpo_eval_steps", "eval_steps")):
            n = getattr(self, ours)
            if n < 0:
                raise ValueError(f"{ours} must be >= 0, got {n}")
            if n and theirs == "max_steps" and self.max_steps > 0 and self.max_steps != n * cycle:
                raise ValueError(f"max_steps ({self.max_steps}) and mtgrpo_steps ({n}) disagree: an MT-GRPO "
                                 f"step is {cycle} optimizer steps here; set only one")
            if n:
                setattr(self, theirs, n * cycle)
        for name, active in (("max_steps", True), ("save_steps", self.save_strategy == "steps"),
                             ("eval_steps", self.eval_strategy == "steps")):
            v = getattr(self, name)
            if active and v is not None and v >= 1 and v % cycle:
                ours = "mtgrpo_steps" if name == "max_steps" else f"mtgrpo_{name}"
                raise ValueError(f"{name} ({v}) must be a multiple of {cycle}, the optimizer steps of one "
                                 f"generation batch (or set {ours})")

    @property
    def cycle(self) -> int:
        """Optimizer steps per MT-GRPO step (one generation batch)."""
        return self.steps_per_generation * self.num_iterations // self.gradient_accumulation_steps

# --- Datasets and rewards ----------------------------------------------------------------------------------
def verify_reward(completions: list, answer: list, verifier: list, info: list, task: list,
                  **_) -> list[float]:
    """A TRL reward function scoring by verify.py (1.0 correct, 0.1 boxed but wrong, 0.0 no box): the dataset
    carries task_dataset's columns answer, verifier and info (JSON)."""
    from example import Example
    from verify import rewards
    text = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    examples = [Example(t, "", a, v, json.loads(i)) for a, v, i, t in zip(answer, verifier, info, task)]
    return rewards(text, examples)  # sandboxed checks (math, rg) go to the worker in one batch

def per_task_reward(funcs: dict[str, Callable], task_column: str = "task") -> Callable:
    """Any TRL reward function per task -> one reward function that hands each row to its task's function."""
    def reward(prompts: list, completions: list, **kw) -> list:
        out: list = [None] * len(completions)
        for name, fn in funcs.items():
            idx = [i for i, t in enumerate(kw[task_column]) if t == name]
            if idx:
                sub = {k: [v[i] for i in idx] if isinstance(v, list) and len(v) == len(completions) else v
                       for k, v in kw.items()}
                scores = fn(prompts=[prompts[i] for i in idx],
                            completions=[completions[i] for i in idx], **sub)
                for i, r in zip(idx, scores):
                    out[i] = r
        return out
    reward.__name__ = "per_task_reward"
    return reward

def task_datasets(task_names: str, n_train: int, seed: int, style: str = "r1", tokenizer=None,
                  n_test: int = mtgrpo.Config.eval_prompts,
                  max_prompt_len: int = mtgrpo.Config.max_prompt_len):
    """(train, test) datasets.Dataset of tasks.py's tasks, columns prompt, task, answer, verifier, info (for
    verify_reward): mtgrpo.py's rows with --eval-prompts n_test, in order. With a tokenizer, prompts over
    max_prompt_len tokens are dropped with mtgrpo.py's note (models.tokenize_tasks): TRL 1.16 has no cap."""
    import datasets
    from models import tokenize_tasks
    from tasks import load_tasks, make_prompt
    loaded = load_tasks(task_names, n_train, n_test, seed)
    if tokenizer is not None:
        _, train, test = tokenize_tasks(loaded, tokenizer, n_test, max_prompt_len, style)
        loaded = [(tr, te) for (tr, _), (te, _) in zip(train, test)]

    def rows(split: int) -> datasets.Dataset:
        return datasets.Dataset.from_list([
            {"prompt": make_prompt(ex, style, tokenizer), "task": ex.task, "answer": ex.answer,
             "verifier": ex.verifier, "info": json.dumps(ex.info)} for pair in loaded for ex in pair[split]])
    return rows(0), rows(1)

def task_dataset(task_names: str, n_train: int, seed: int, style: str = "r1", tokenizer=None,
                 n_test: int = mtgrpo.Config.eval_prompts,
                 max_prompt_len: int = mtgrpo.Config.max_prompt_len):
    """task_datasets' train split."""
    return task_datasets(task_names, n_train, seed, style, tokenizer, n_test, max_prompt_len)[0]

# --- Minibatches: whole groups, mtgrpo.py's sizes, the same optimizer steps on every rank -----------------
def _cat(tensors: list[torch.Tensor], left: bool, value: float) -> torch.Tensor:
    """Concatenate (n_i, L_i) tensors along rows, padding L on the left (prompts) or right (completions)."""
    if tensors[0].dim() < 2:
        return torch.cat(tensors)
    width = max(t.shape[1] for t in tensors)
    pads = [(width - t.shape[1], 0) if left else (0, width - t.shape[1]) for t in tensors]
    return torch.cat([F.pad(t, p, value=value) for t, p in zip(tensors, pads)])

def minibatch_layout(groups: int, world: int, per_step: int) -> list[list[int]]:
    """A batch of `groups` groups -> [optimizer step][rank] group counts: mtgrpo.py's minibatches (per_step
    groups each, the last one short), each split as evenly as the ranks allow. No group is dropped and no step
    is empty. Example: minibatch_layout(5, 2, 4) -> [[2, 2], [1, 0]]."""
    sizes = [min(per_step, groups - start) for start in range(0, groups, per_step)]
    return [[n // world + (r < n % world) for r in range(world)] for n in sizes]

def balance(owners: list[int], quotas: list[int]) -> list[list[int]]:
    """Positions of a batch's groups -> the positions each rank trains, quotas[r] of them for rank r, in batch
    order; a group stays on the rank that generated it (owners[pos]) where the quota allows, so few groups
    cross ranks. Example: balance([0, 0, 0, 1], [2, 2]) -> [[0, 1], [2, 3]] (group 2 moves to rank 1)."""
    if sum(quotas) != len(owners):
        raise ValueError(f"quotas {quotas} must add up to the {len(owners)} groups")
    assign: list[list[int]] = [[] for _ in quotas]
    spare = []
    for pos, r in enumerate(owners):
        (assign[r] if len(assign[r]) < quotas[r] else spare).append(pos)
    for r, a in enumerate(assign):
        a += [spare.pop(0) for _ in range(quotas[r] - len(a))]
    return [sorted(a) for a in assign]

SKIP = {"mtgrpo_skip": True}  # a minibatch slot of an optimizer step that no rank has a group for

@contextlib.contextmanager
def _vllm_max_num_seqs(rows_per_rank: int):
    """GRPOTrainer sizes vLLM's max_num_seqs for one generation batch per rank; the sampler's rounds are M_os
    times that (M_os B prompts x N rows over the ranks) and would run in M_os waves. TRL 1.16 has no flag for
    it, so the constructor GRPOTrainer.__init__ calls is wrapped while it runs."""
    import trl.trainer.grpo_trainer as grpo
    build = grpo.VLLMGeneration

    def sized(*args, **kw):
        return build(*args, **{**kw, "max_num_seqs": rows_per_rank * kw.get("tensor_parallel_size", 1)})
    grpo.VLLMGeneration = sized
    try:
        yield
    finally:
        grpo.VLLMGeneration = build

class _EndOfStep(TrainerCallback):
    """After the optimizer step that ends a generation batch (and before the Trainer logs, evaluates and
    saves): Alg. 1 lines 5-6."""
    def __init__(self, trainer: "MTGRPOTrainer"):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        t = self.trainer
        if t._pending is not None and t._step % (args.steps_per_generation * t.num_iterations) == 0:
            t._finish_step()

class MTGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose generation batch is built by MT-GRPO's sampler over a `task` column, with task
    weights. Advantages are mtgrpo.group_advantages (Eq. 11) of the weighted reward sum: TRL's scale_rewards
    and multi_objective_aggregation do not apply. J_k counts rewards of exactly 1.0 as correct, as the strict
    filter does. evaluate() is mean@k per task on eval_dataset (the test splits), its worst and average."""
    def __init__(self, model, reward_funcs, args: MTGRPOConfig, train_dataset=None, **kwargs):
        if not isinstance(args, MTGRPOConfig):
            raise ValueError("MTGRPOTrainer needs args=MTGRPOConfig(...)")
        W, N, B = args.world_size, args.num_generations, args.generation_batch_size // args.num_generations
        first_round = B if args.sampler == "grpo" else int(round(args.os_factor * B))  # prompts, all ranks
        sized = _vllm_max_num_seqs(-(-first_round // W) * N) if args.use_vllm else contextlib.nullcontext()
        with sized:
            super().__init__(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                             **kwargs)
        a, W = self.args, self.accelerator.num_processes
        data = self.train_dataset
        if not hasattr(data, "__getitem__") or a.task_column not in data.column_names:
            raise ValueError(f"MTGRPOTrainer needs a map-style train_dataset with a {a.task_column!r} column")
        if self.rollout_func is not None or self.tools or self.environment_factories is not None:
            raise ValueError("MTGRPOTrainer supports single-turn generation only (no rollout_func, tools or "
                             "environments)")
        self.B = a.generation_batch_size // self.num_generations  # all ranks' prompts after filtering
        if self.B % W:
            raise ValueError(f"B = {self.B} prompts per step must be a multiple of the {W} processes")
        column = data[a.task_column]
        self.task_names = list(dict.fromkeys(column))
        rows = [[i for i, t in enumerate(column) if t == name] for name in self.task_names]
        self._pools = [(r, r) for r in rows]  # rollout_round's (examples, prompts): dataset row indices here
        self._check_eval_dataset(self.eval_dataset)
        self._set_stop_ids()
        # the loop state's sampler RNG is seeded alike on every rank: every sampling decision agrees
        self.mt = mtgrpo.start_state(len(self.task_names), a, a.seed)
        self.mt_history: list[dict[str, Any]] = []  # one record per step, as mtgrpo.py's log.jsonl
        self.eval_history: list[dict[str, Any]] = []  # one record per evaluation, as support.evaluate's
        self._pending: dict[str, Any] | None = None  # the step's batch until its I_k and IWU step are done
        self._round: dict[str, Any] | None = None  # the sampling round being generated and scored
        self._rounds = None  # the step's rounds while its batch is drawn
        self._capture_slot: int | None = None
        self.add_callback(_EndOfStep(self))

    def _check_eval_dataset(self, data) -> None:
        if data is None:
            return
        if not hasattr(data, "column_names") or self.args.task_column not in data.column_names:
            raise ValueError(f"eval_dataset must be one datasets.Dataset with a {self.args.task_column!r} "
                             "column (task_datasets' test split)")
        unknown = sorted(set(data[self.args.task_column]) - set(self.task_names))
        if unknown:
            raise ValueError(f"eval_dataset has tasks {unknown} that train_dataset has not: "
                             f"{self.task_names}")

    def _set_stop_ids(self) -> None:
        """mtgrpo.py's stop ids (models.stop_token_ids): the model's EOS ids, plus the chat template's
        end-of-turn token when prompts use the template, also on a base model whose EOS lacks it. TRL reads
        only the model's generation config: set them for its masks, for HF generate and for vLLM."""
        from models import prompt_style, stop_token_ids
        model = self.accelerator.unwrap_model(self.model)
        self.prompt_style = prompt_style(self.args.prompt_style, model, self._tokenizer)
        self.eos_token_ids = stop_token_ids(model, self._tokenizer, self.prompt_style)
        if getattr(self, "generation_config", None) is not None:  # the transformers path
            self.generation_config.eos_token_id = self.eos_token_ids
            self.generation_kwargs["eos_token_id"] = self.eos_token_ids
        if self.use_vllm:  # vLLM stops at the model's own EOS ids; these go on top
            self.vllm_generation.generation_kwargs["stop_token_ids"] = self.eos_token_ids

    def _tokenize_prompts(self, prompts: list):
        """Text prompts are tokenized as mtgrpo.py does (add_special_tokens=False): a chat template that
        writes its BOS into the text gets no second one, and r1 prompts get none. Conversations: TRL's
        path."""
        if is_conversational({"prompt": prompts[0]}):
            return super()._tokenize_prompts(prompts)
        return self.processing_class(text=prompts, add_special_tokens=False)["input_ids"], None, {}

    # --- Algorithm 1, lines 2-3: the batch -----------------------------------------------------------------
    def _prepare_inputs(self, generation_batch):
        """The dataloader's batch is ignored in training: the sampler draws its own rows by z."""
        if not self.model.training:
            return super()._prepare_inputs(generation_batch)
        generate_every = self.args.steps_per_generation * self.num_iterations
        if self._step % generate_every == 0 or self._buffered_inputs is None:
            self._buffered_inputs = self._sample_batch()
        return self._buffered_inputs[self._step % self.args.steps_per_generation]

    def _sample_batch(self) -> list[dict[str, Any]]:
        a, t0 = self.args, time.perf_counter()
        self._rounds, self._kept, self._filler, self._seconds_gen, self._logp_rows = [], {}, None, 0.0, 0
        refill_below = int(round(a.os_factor * self.B))  # --prompt-pools (the released code): M_os B
        draw = prompt_draws(self.mt.rng, len(self.task_names), self.mt.pools, refill_below)

        def sample_round(counts: np.ndarray):
            survivors, stats = mtgrpo.rollout_round(counts, self._pools, self._generate_round,
                                                    self._round_rewards, self.num_generations, a.filter, draw)
            self._keep_local(survivors)
            return survivors, stats
        z, batch = mtgrpo.draw_batch(a, self.mt, self.B, sample_round)  # Algorithm 1, lines 2-3
        minibatches, tasks = self._distribute(batch)
        # pi_old (theta_t) of every row, for I_k's pass at theta_t+1: TRL's when it keeps one (several updates
        # per batch, vLLM), else the training forward's own (compute_loss; all at theta_t), else (the liger
        # loss hides it) one pass now
        olds = [None if mb is SKIP else mb.get("old_per_token_logps") for mb in minibatches]
        if a.weighting == "iwu" and a.use_liger_kernel:
            olds = [self._logps(mb) if o is None and mb is not SKIP else o
                    for mb, o in zip(minibatches, olds)]
        rows_generated = sum(sum(g) for g in batch.generated) * self.num_generations
        logp_rows = gather(torch.tensor([self._logp_rows], device=self.accelerator.device)).sum()  # all ranks
        self._pending = dict(z=z, batch=batch, minibatches=minibatches, olds=olds, tasks=tasks,
                             groups_moved=self._groups_moved, rows_generated=rows_generated,
                             rows_logp_pass=int(logp_rows), seconds_sampling=time.perf_counter() - t0,
                             seconds_gen=self._seconds_gen)
        self._rounds = self._kept = self._filler = None
        return minibatches

    def _generate_round(self, rows: list[int], N: int) -> list[tuple[tuple[int, int, int], torch.Tensor]]:
        """rollout_round's `sample`: prompt j of the round -> rank j % W, which generates its N rollouts;
        ranks pad with a repeated prompt to equal sizes (its rollouts are discarded). -> per prompt (handle,
        tokens per row)."""
        if not rows:
            return []
        W, rank = self.accelerator.num_processes, self.accelerator.process_index
        per_rank, mine = -(-len(rows) // W), rows[rank::W]
        local = mine + [(mine or rows)[0]] * (per_rank - len(mine))
        inputs = [dict(self.train_dataset[i]) for i in local for _ in range(N)]
        self._round = {"inputs": inputs, "real": len(mine)}
        t0 = time.perf_counter()
        try:
            out = self._generate_and_score_completions(inputs)
        finally:
            self._round = None
        self._seconds_gen += time.perf_counter() - t0
        if "pixel_values" in out or "tool_mask" in out:
            raise ValueError("MTGRPOTrainer supports text-only, single-turn rollouts")
        rewards = self._weighted(self._last_rewards).view(W, per_rank, N).float().cpu()  # all ranks' rows
        adv = mtgrpo.group_advantages(rewards[rank], self.args.adv_std == "unbiased").reshape(-1)
        out["advantages"] = adv.to(out["advantages"].device)
        tokens = gather(out["completion_mask"].sum(dim=1)).view(W, per_rank, N).cpu()
        self._rounds.append((out, rewards))
        rid = len(self._rounds) - 1
        return [((rid, j % W, j // W), tokens[j % W, j // W]) for j in range(len(rows))]

    def _weighted(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        """(rows, reward functions) -> (rows,): TRL's reward_weights applied, as its own advantages do."""
        return (rewards_per_func * self.reward_weights.to(rewards_per_func.device)).nansum(dim=1)

    def _generate(self, prompts: list):
        """TRL's generation. In a sampling round the rewards are computed right after it, before TRL's no-grad
        log-prob pass(es), so that rows of groups the zero-gradient filter drops skip them (TRL scores after
        the passes)."""
        out = super()._generate(prompts)
        if self._round is not None:
            W, rank, N = self.accelerator.num_processes, self.accelerator.process_index, self.num_generations
            rewards = super()._calculate_rewards(self._round["inputs"], prompts, out[3], out[1])  # gathered
            mine = self._weighted(rewards).view(W, -1, N)[rank].float().cpu()
            keep = mtgrpo.zero_gradient_keep(mine, self.args.filter)  # rollout_round's, on the same rewards
            keep[self._round["real"]:] = False  # padding prompts: discarded
            self._round.update(rewards=rewards, keep=keep.repeat_interleave(N))
        return out

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        early = self._round.pop("rewards", None) if self._round is not None else None
        if self._round is not None:
            self._round["keep"] = None  # the no-grad passes are over
        if early is None:
            early = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards = early  # gathered over ranks
        return early

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args,
                                           **kwargs):
        in_round = self._round is not None and not torch.is_grad_enabled()  # a round's pi_old (or ref) pass
        keep = self._round.get("keep") if in_round else None
        if keep is not None:  # the filter's survivors only
            rows = keep.nonzero().squeeze(1).to(input_ids.device)
            # NaN for dropped rows: TRL's importance-sampling ratio maps them to 1 and leaves them out of its
            # logp difference; the rows are discarded before any loss sees them
            logps = torch.full((len(input_ids), logits_to_keep), float("nan"), device=input_ids.device)
            if len(rows):
                part = super()._get_per_token_logps_and_entropies(model, input_ids[rows],
                                                                  attention_mask[rows], logits_to_keep,
                                                                  *args, **kwargs)[0]
                logps[rows] = part.to(logps.dtype)
            self._logp_rows += len(rows)
            return logps, None, None
        self._logp_rows += len(input_ids) if in_round else 0
        out = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                          *args, **kwargs)
        if self._capture_slot is not None:  # the loss's forward at theta_t: this minibatch's pi_old
            self._pending["olds"][self._capture_slot], self._capture_slot = out[0].detach(), None
        return out

    def _round_rewards(self, rows: list[int], outs: list) -> list[torch.Tensor]:
        """rollout_round's `score`: the gathered rewards of each prompt's N rollouts, (N,) each."""
        return [self._rounds[rid][1][rank, li] for (rid, rank, li), _ in outs]

    def _keep_local(self, survivors: list[list[mtgrpo.Group]]) -> None:
        """Keep the rows of this rank's surviving groups, free the rest of the round. The first round also
        gives the filler group, which evens out the ranks' rows in a short minibatch: zero advantages, zero
        mask, so no gradient and no tokens."""
        out, N, rank = self._rounds[-1][0], self.num_generations, self.accelerator.process_index

        def piece(li: int) -> dict[str, torch.Tensor]:  # copies, not views: a view keeps the round alive
            return {k: v[li * N:(li + 1) * N].clone() for k, v in out.items()
                    if torch.is_tensor(v) and v.dim()}
        if self._filler is None:
            filler = piece(0)
            for k, v in filler.items():
                if k.endswith("logps") or k in ("advantages", "completion_mask"):
                    filler[k] = torch.zeros_like(v)  # NaN-free: 0 x NaN is still NaN in the loss
                elif k == "importance_sampling_ratio":
                    filler[k] = torch.ones_like(v)
            self._filler = filler
        for g in (g for s in survivors for g in s if g.response[1] == rank):
            self._kept[g.response] = piece(g.response[2])
        self._rounds[-1] = (None, self._rounds[-1][1])

    def _distribute(self, batch: mtgrpo.SampledBatch) -> tuple[list[dict[str, Any]],
                                                                list[torch.Tensor | None]]:
        """The sampled batch -> this rank's steps_per_generation minibatch slots. Optimizer step u trains
        mtgrpo.py's minibatch u, C = per_device_train_batch_size / N x W x gradient_accumulation_steps groups
        (fewer in a short batch's last one), split evenly over the ranks; on one process these are the
        batch's groups u C .. (u + 1) C - 1, as in mtgrpo.policy_update. Slots of steps with no group are SKIP
        on every rank (no optimizer step); in a short step, fillers even out the ranks' rows. Groups move
        between ranks (all_gather_object) only where the ranks generated unequal shares. -> (slots, task of
        every row, -1 for a filler's)."""
        W, rank, N = self.accelerator.num_processes, self.accelerator.process_index, self.num_generations
        S, GA = self.args.steps_per_generation, self.args.gradient_accumulation_steps
        per_rank = self.args.per_device_train_batch_size // N  # groups per rank per micro-step
        layout = minibatch_layout(len(batch.groups), W, per_rank * W * GA)  # [optimizer step][rank] -> groups
        handles = [g.response for g in batch.groups]
        assign = balance([h[1] for h in handles], [sum(step[r] for step in layout) for r in range(W)])
        self._groups_moved = sum(handles[p][1] != r for r, a in enumerate(assign) for p in a)
        arrived = {}
        if W > 1:
            moving = [(dest, pos, {k: v.cpu() for k, v in self._kept[handles[pos]].items()})
                      for dest, a in enumerate(assign) if dest != rank
                      for pos in a if handles[pos][1] == rank]
            arrived = {pos: {k: v.to(self.accelerator.device) for k, v in p.items()}
                       for dest, pos, p in gather_object(moving) if dest == rank}
        mine = [self._kept[handles[p]] if handles[p][1] == rank else arrived[p] for p in assign[rank]]
        task_of = [torch.full((N,), batch.tasks[p]) for p in assign[rank]]  # a group's task on its N rows
        # micro-step i of optimizer step u: this rank's next groups, padded with fillers to the most any rank
        # has there (at least 1): TRL gathers per-row tensors in its loss, so every rank needs as many rows
        slots: list[tuple[list[int], int] | None] = [None] * S
        start = 0
        for u, step in enumerate(layout):
            counts = [[min(per_rank, max(0, q - i * per_rank)) for i in range(GA)] for q in step]  # [rank][i]
            for i in range(GA):
                width = max(1, *(c[i] for c in counts))
                slots[u * GA + i] = (list(range(start, start + counts[rank][i])), width)
                start += counts[rank][i]
        minibatches, tasks, pad_id = [], [], self._tokenizer.pad_token_id
        for slot in slots:
            if slot is None:
                minibatches.append(SKIP)
                tasks.append(None)
                continue
            idx, width = slot
            groups = [mine[i] for i in idx] + [self._filler] * (width - len(idx))
            minibatches.append({k: _cat([g[k] for g in groups], k.startswith("prompt"),
                                        pad_id if k.endswith("_ids") else 0.0) for k in groups[0]})
            tasks.append(torch.cat([task_of[i] for i in idx] + [torch.full((N,), -1)] * (width - len(idx))))
        self._set_normalizers(minibatches)
        return minibatches, tasks

    def _set_normalizers(self, minibatches: list[dict[str, Any]]) -> None:
        """TRL divides a micro-batch's token sum by num_items_in_batch / W x GA / S (loss_type dapo).
        "minibatch": num_items = the optimizer step's tokens on all ranks x S / GA, so each step's loss is its
        token sum over its own tokens (Eq. 13, mtgrpo.grpo_update). "generation": TRL's, the batch's tokens:
        every step is divided by the average tokens per step, so a long minibatch takes a larger step."""
        S, GA = self.args.steps_per_generation, self.args.gradient_accumulation_steps
        W, device = self.accelerator.num_processes, self.accelerator.device
        local = torch.tensor([0.0 if mb is SKIP else float(mb["completion_mask"].sum())
                              for mb in minibatches])
        per_step = gather(local.view(S // GA, GA).sum(dim=1).to(device)).view(W, -1).sum(dim=0)  # (S / GA,)
        for s, mb in enumerate(minibatches):
            if mb is not SKIP:
                own = self.args.loss_normalizer == "minibatch"
                mb["num_items_in_batch"] = per_step[s // GA] * S / GA if own else per_step.sum()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss. A SKIP slot returns a zero with no graph on any parameter: no gradient exists, so
        AdamW skips the step (its step count and moments stay). When TRL keeps no pi_old (one optimizer step
        per batch, so every forward is at theta_t), this forward's log-probs are the minibatch's pi_old for
        I_k."""
        if inputs.get("mtgrpo_skip"):
            return torch.zeros((), device=self.accelerator.device, requires_grad=True)
        p, slot = self._pending, self._step % self.args.steps_per_generation
        capture = (model.training and p is not None and self.args.weighting == "iwu"
                   and p["olds"][slot] is None)
        self._capture_slot = slot if capture else None
        try:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            self._capture_slot = None

    def _logps(self, mb: dict[str, Any]) -> torch.Tensor:
        """Per-token log-probs of a minibatch's completions at the current weights, no grad (TRL's pass)."""
        with torch.no_grad():
            ids = torch.cat([mb["prompt_ids"], mb["completion_ids"]], dim=1)
            att = torch.cat([mb["prompt_mask"], mb["completion_mask"]], dim=1)
            T, rows = mb["completion_ids"].size(1), self.args.per_device_train_batch_size
            return self._get_per_token_logps_and_entropies(self.model, ids, att, T, batch_size=rows)[0]

    # --- Algorithm 1, lines 5-6: I_k (Eq. 8), J_k, the task-weight step (Subroutine 1) ---------------------
    def _improvement(self, p: dict[str, Any]) -> torch.Tensor:
        """Eq. 8 over this step's batch on all ranks: token sums per task all-reduced, then J_GRPO,k before
        and after (token means over the whole batch, as mtgrpo.objective_change; agg "sum": response
        means)."""
        K, agg = len(self.task_names), self.args.improvement_agg
        sums = torch.zeros(3, K, dtype=torch.float64)  # token sums of the surrogate after, before; tokens
        for mb, old, task in zip(p["minibatches"], p["olds"], p["tasks"]):
            if mb is SKIP or not (task >= 0).any():  # no group here: filler rows carry task -1, no tokens
                continue
            ok = (task >= 0).to(mb["advantages"].device)
            mask, adv = mb["completion_mask"][ok].float(), mb["advantages"][ok].float()
            t = task[task >= 0].to(mb["advantages"].device)
            surr = mtgrpo.clipped_surrogate(self._logps(mb)[ok].float(), old[ok].float(), adv,
                                            self.epsilon_low, self.epsilon_high)
            tokens = torch.zeros(K, device=mask.device).index_add_(0, t, mask.sum(dim=1))
            scale = torch.ones_like(tokens) if agg == "sum" else tokens.clamp(min=1.0)  # means -> token sums
            at_theta_t = adv[:, None].expand_as(mask)  # the ratio is 1 there: the surrogate is A
            for i, s in enumerate((surr, at_theta_t)):
                sums[i] += (mtgrpo.task_objectives(s, mask, t, K, agg) * scale).double().cpu()
            sums[2] += tokens.double().cpu()
        sums = gather(sums[None].to(self.accelerator.device)).sum(dim=0).cpu()
        after, before = (sums[:2] if agg == "sum" else sums[:2] / sums[2].clamp(min=1.0)).float()
        return mtgrpo.task_improvement(before, after, self.args.improvement_clip)

    def _finish_step(self) -> None:
        a, p, self._pending = self.args, self._pending, None
        t0, batch, K = time.perf_counter(), p["batch"], len(self.task_names)
        improvement = self._improvement(p) if a.weighting == "iwu" else torch.zeros(K)  # line 5, Eq. 8
        mtgrpo.update_accuracy(a, self.mt, batch)  # J_k
        mtgrpo.update_weights(a, self.mt, batch.groups, improvement)  # line 6: xi (SEC: Q)
        used = len(batch.groups)
        steps = sum(mb is not SKIP for mb in p["minibatches"]) // a.gradient_accumulation_steps
        rec = {"step": self.mt.step, "z": p["z"].tolist(), "targets": batch.targets,
               "shares": (np.bincount(batch.tasks, minlength=K) / max(used, 1)).tolist(),
               "rho": batch.rho.tolist(), "J": self.mt.J.tolist(), "I": improvement.tolist(),
               "xi": self.mt.xi.detach().tolist(), "rounds": batch.rounds, "generated": batch.generated,
               "accepted": batch.accepted, "groups_used": used, "groups_moved": p["groups_moved"],
               "optimizer_steps": steps, "rows_generated": p["rows_generated"],
               "rows_logp_pass": p["rows_logp_pass"], "seconds_sampling": p["seconds_sampling"],
               "seconds_gen": p["seconds_gen"], "seconds_weights": time.perf_counter() - t0}
        self.mt_history.append(rec)
        m = self._metrics["train"]
        for key in ("z", "shares", "targets", "rho", "J", "I"):
            for name, v in zip(self.task_names, rec[key]):
                m[f"mtgrpo/{key}/{name}"].append(float(v))
        for key in ("step", "rounds", "groups_used", "groups_moved", "optimizer_steps", "seconds_sampling",
                    "seconds_gen", "seconds_weights"):
            m[f"mtgrpo/{key}"].append(float(rec[key]))
        m["mtgrpo/prompts_generated"].append(float(sum(map(sum, batch.generated))))

    # --- Evaluation (Sec. 6's metrics): mean@k per task, the worst task, the average ------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """mean@k (k = eval_k) of every task on eval_dataset, as support.evaluate: the fraction of its prompts
        x k samples with reward exactly 1.0. Rank r samples prompts r, r + W, ... (padded to equal counts);
        the rewards come back gathered, so every rank computes every task's value. Sampled on a forked torch
        RNG seeded by seed, step and rank: with HF generate, evaluating never changes training (vLLM has its
        own RNG)."""
        data = self.eval_dataset if eval_dataset is None else eval_dataset
        if data is None:
            raise ValueError("evaluate() needs eval_dataset: pass task_datasets' test split to MTGRPOTrainer")
        self._check_eval_dataset(data)
        a, k = self.args, self.num_generations_eval
        W, rank = self.accelerator.num_processes, self.accelerator.process_index
        per_rank, mine = -(-len(data) // W), list(range(rank, len(data), W))
        local = mine + [(mine or [0])[0]] * (per_rank - len(mine))
        chunk = max(1, a.per_device_eval_batch_size // k)  # prompts per generate call
        correct = torch.zeros(W, per_rank, dtype=torch.float64)  # per prompt: its k samples' fraction correct
        was_training = self.model.training
        self.model.eval()  # TRL's eval mode: k generations per prompt, its metrics under eval_
        try:
            with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
                torch.manual_seed(a.seed + 1000 * self.mt.step + 1_000_003 * rank)
                for start in range(0, per_rank, chunk):
                    rows = [dict(data[i]) for i in local[start:start + chunk] for _ in range(k)]
                    prompts = [r["prompt"] for r in rows]
                    _, ids, _, completions, *_ = self._generate(prompts)
                    rewards = self._weighted(self._calculate_rewards(rows, prompts, completions, ids))
                    right = (rewards.view(W, -1, k) == 1.0).double().mean(dim=2).cpu()
                    correct[:, start:start + right.shape[1]] = right
            column = data[a.task_column]
            acc = {}
            for name in (t for t in self.task_names if t in column):
                values = [float(correct[i % W, i // W]) for i in range(len(data)) if column[i] == name]
                acc[name] = float(np.mean(values))
            worst, avg = min(acc.values()), sum(acc.values()) / len(acc)
            self.eval_history.append({"kind": "eval", "step": self.mt.step, "acc": acc, "worst": worst,
                                      "avg": avg})
            metrics = {**{f"eval/{t}/mean@{k}": v for t, v in acc.items()}, "eval/worst": worst,
                       "eval/average": avg}
            self.log(dict(metrics))  # in eval mode: TRL adds its eval_ generation metrics
        finally:
            self.model.train(was_training)
        if self.accelerator.is_main_process:
            per_task = " ".join(f"{t} {v:.3f}" for t, v in acc.items())
            print(f"eval step {self.mt.step} | worst {worst:.3f} | avg {avg:.3f} | {per_task}", flush=True)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # --- Checkpoints: xi, its optimizer, rho, J, SEC's values and the sampler RNG --------------------------
    def _save_checkpoint(self, model, trial):
        if self._pending is not None:  # its I_k and IWU step are still due: a resume could not go on exactly
            raise ValueError("a checkpoint fell inside a generation batch: make save_steps a multiple of "
                             "steps_per_generation * num_iterations / gradient_accumulation_steps")
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            path = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}",
                                "mtgrpo_state.pt")
            torch.save({"tasks": self.task_names, "loop": support.loop_state_dict(self.mt)}, path)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        saved = torch.load(os.path.join(checkpoint, "mtgrpo_state.pt"), weights_only=True)
        if saved["tasks"] != self.task_names:
            raise ValueError(f"checkpoint {checkpoint} trained tasks {saved['tasks']}, this dataset has "
                             f"{self.task_names}")
        support.load_loop_state(self.mt, saved["loop"])
        self.args.eval_on_start = False  # evaluated before the save (mtgrpo.py: at step 0 only)

@dataclass
class ScriptArguments:
    model: str = _help("hub name, local save_pretrained dir, or tiny", "tiny")
    tasks: str = _help("task names, rg:<dataset>[:level] or data files, comma-separated", mtgrpo.Config.tasks)
    n_train: int = _ref("n_train")
    eval_prompts: int = _ref("eval_prompts")
    max_prompt_len: int = _ref("max_prompt_len")

def main(argv: list[str] | None = None) -> None:
    from transformers import HfArgumentParser
    from models import load_model, prompt_style
    script, cfg = HfArgumentParser((ScriptArguments, MTGRPOConfig)).parse_args_into_dataclasses(argv)
    model, tokenizer = load_model(script.model, seed=cfg.seed)
    style = prompt_style(cfg.prompt_style, model, tokenizer)
    train, test = task_datasets(script.tasks, script.n_train, cfg.seed, style, tokenizer, script.eval_prompts,
                                script.max_prompt_len)
    trainer = MTGRPOTrainer(model=model, reward_funcs=verify_reward, args=cfg, train_dataset=train,
                            eval_dataset=test if cfg.eval_strategy != "no" else None,
                            processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=cfg.resume_from_checkpoint)
    if torch.distributed.is_initialized():  # else gloo can abort in its destructor at exit
        torch.distributed.destroy_process_group()

if __name__ == "__main__":
    main()
