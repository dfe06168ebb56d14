"""Tests of integrations/trl_mtgrpo.py, MT-GRPO inside TRL's GRPOTrainer (issues 15, 20), on the tiny model
and CPU, in fp32 as mtgrpo.py on CPU.

Rewards are scripted (`Scripted`): 1.0 with a fixed probability per task, a pure function of the prompt and of
either the rollout's index in its group (by="index": two trainers that draw the same prompts score alike, even
when they sample different completions, as mtgrpo.py and TRL do) or the completion's text (by="completion").

    python3 -m pytest -q test_trl_integration.py        # ~1 min on 2 idle cores; skipped without trl
This file is also the 2-process worker of test_two_processes (run under torch.distributed.run, gloo on CPU).
"""

import collections, copy, functools, hashlib, inspect, json, os, re, shlex, subprocess, sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("trl", reason="trl is not installed: pip install -r requirements-trl.txt")

import mtgrpo  # noqa: E402
import policy  # noqa: E402
import support  # noqa: E402
from integrations.trl_mtgrpo import (SKIP, MTGRPOConfig, MTGRPOTrainer, ScriptArguments,  # noqa: E402
                                     balance, minibatch_layout, per_task_reward, task_dataset, task_datasets)

TASKS = "toy_copy,toy_next,toy_sum"
RATES = {"toy_copy": 0.6, "toy_next": 0.35, "toy_sum": 0.15}
N, N_TRAIN, N_TEST = 4, 64, 4
ROOT = os.path.dirname(os.path.abspath(__file__))


def _uniform(*key) -> float:
    return int.from_bytes(hashlib.sha256("|".join(map(str, key)).encode()).digest()[:8], "big") / 2**64


class Scripted:
    """Fixed per-task success rates (1.0), and 0.1 (a wrong answer in form, never correct) for a fifth of the
    rest. A TRL reward function (rows come N per prompt, in draw order; evaluation uses k = N) and, as
    `score`, a stand-in for verify.score in mtgrpo.py's loop (by="index" only)."""
    __name__ = "scripted"

    def __init__(self, rates=RATES, by="index"):
        self.rates, self.by = rates, by

    def value(self, question: str, task: str, j: int, completion) -> float:
        u = _uniform(question, j if self.by == "index" else completion)
        return 1.0 if u < self.rates[task] else 0.1 if u > 0.8 else 0.0

    def __call__(self, prompts, completions, task, **kw):
        return [self.value(p, t, i % N, c) for i, (p, c, t) in enumerate(zip(prompts, completions, task))]

    def score(self, examples, outputs, tokenizer=None, box_rule="last"):
        return [torch.tensor([self.value(ex.question, ex.task, j, None) for j in range(len(resp))])
                for ex, (resp, _) in zip(examples, outputs)]


class Recording(MTGRPOTrainer):
    """Keeps what each step hands TRL: this rank's minibatch slots and the task of every row."""
    def _distribute(self, batch):
        out = super()._distribute(batch)
        self.trained = getattr(self, "trained", []) + [out]
        return out


class ShortBatch(Recording):
    """The sampler's batch cut to its first 3 groups: a scripted short batch (of B = 8 here)."""
    def _distribute(self, batch):
        batch.groups, batch.tasks = batch.groups[:3], batch.tasks[:3]
        return super()._distribute(batch)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from models import build_tiny_model
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny")), seed=0)


@pytest.fixture(scope="module")
def splits():
    return task_datasets(TASKS, N_TRAIN, 0, "plain", n_test=N_TEST)


def make_trainer(model_dir, out, reward=None, cls=Recording, eval_dataset=None, **over):
    from models import load_model
    torch.set_num_threads(1)
    model, tokenizer = load_model(model_dir)
    cfg = dict(output_dir=str(out), use_cpu=True, seed=0, max_steps=6, per_device_train_batch_size=2 * N,
               num_generations=N, steps_per_generation=2, gradient_accumulation_steps=1,
               max_completion_length=4, learning_rate=1e-3, logging_steps=1, report_to="none",
               save_strategy="no", disable_tqdm=True, lam=1.0, xi_lr=0.1, eval_k=N,
               bf16=False)  # fp32, as mtgrpo.py on CPU (GRPOConfig's default: bf16 autocast)
    train = task_dataset(TASKS, N_TRAIN, 0, "plain", n_test=N_TEST)
    return cls(model=model, reward_funcs=reward or Scripted(), args=MTGRPOConfig(**{**cfg, **over}),
               train_dataset=train, eval_dataset=eval_dataset, processing_class=tokenizer)


def real_slots(mbs, tasks):
    return [(mb, t) for mb, t in zip(mbs, tasks) if mb is not SKIP]


def check_whole_groups(mb, task_rows, tokenizer):
    """Rows come in blocks of N: one prompt each, of the task the batch says ("sum: ..." for toy_sum),
    advantages of one group (they sum to 0; a filler's, task -1, are all 0)."""
    assert len(mb["advantages"]) % N == 0 and len(task_rows) == len(mb["advantages"])
    for i in range(0, len(mb["advantages"]), N):
        assert (mb["prompt_ids"][i:i + N] == mb["prompt_ids"][i]).all()
        assert (task_rows[i:i + N] == task_rows[i]).all()
        assert abs(float(mb["advantages"][i:i + N].sum())) < 1e-4
        if task_rows[i] >= 0:
            assert "toy_" + prompt_kind(mb, i, tokenizer) == TASKS.split(",")[task_rows[i]]


def prompt_kind(mb, i, tokenizer) -> str:
    return tokenizer.decode(mb["prompt_ids"][i], skip_special_tokens=True).split(":")[0]


def adam_state(opt, params):
    """torch AdamW state of each parameter (accelerate wraps the Trainer's optimizer; its groups split
    decay)."""
    return [getattr(opt, "optimizer", opt).state[p] for p in params]


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    """Equal up to float rounding, relative to the tensor's largest entry (the sides pad and batch apart)."""
    return float((a - b).abs().max()) <= rel * float(b.abs().max()) + 1e-12


def rows_of(slots, pad_id=0) -> mtgrpo.Rows:
    """Minibatch slots (TRL's tensors) -> mtgrpo.Rows, in order: the same rows for mtgrpo.py's update."""
    T = max(mb["completion_ids"].shape[1] for mb, _ in slots)
    pad = lambda t, v: F.pad(t, (0, T - t.shape[1]), value=v)  # noqa: E731
    prompts = [ids[m.bool()].tolist() for mb, _ in slots
               for ids, m in zip(mb["prompt_ids"], mb["prompt_mask"])]
    return mtgrpo.Rows(prompts=prompts,
                       responses=torch.cat([pad(mb["completion_ids"], pad_id) for mb, _ in slots]),
                       mask=torch.cat([pad(mb["completion_mask"].float(), 0.0) for mb, _ in slots]),
                       adv=torch.cat([mb["advantages"].float() for mb, _ in slots]),
                       task=torch.cat([t for _, t in slots]))


def test_steps_shares_equal_targets_and_iwu_moves_z(tiny_dir, tmp_path):
    """3 MT-GRPO steps (6 optimizer steps, 2 minibatches each): the trained batch has exactly n_k groups of
    task k, no constant group, and xi follows Subroutine 1 from the logged I and J (re-derived here with
    AdamW). The LR stays at 1e-3 (constant, as the paper), the log counts MT-GRPO steps, and AdamW stepped 6
    times."""
    tr = make_trainer(tiny_dir, tmp_path)
    tr.train()
    hist, B = tr.mt_history, tr.B
    assert len(hist) == 3 and B == 4 and tr.args.lr_scheduler_type == "constant"
    xi = torch.zeros(3, requires_grad=True)
    opt = torch.optim.AdamW([xi], lr=0.1, weight_decay=1e-5)
    for rec, (mbs, tasks) in zip(hist, tr.trained):
        assert sum(rec["targets"]) == B == rec["groups_used"] and rec["optimizer_steps"] == 2
        assert np.allclose(np.array(rec["shares"]) * B, rec["targets"])
        rows = torch.cat([t for t in tasks if (t >= 0).all()])
        assert np.bincount(rows[::N].numpy(), minlength=3).tolist() == rec["targets"]
        for mb, t in zip(mbs, tasks):
            check_whole_groups(mb, t, tr.processing_class)
            adv = mb["advantages"].view(-1, N)
            assert (adv.max(dim=1).values > adv.min(dim=1).values).all()  # the filter left no constant group
        z = torch.softmax(xi.detach(), 0)
        assert np.allclose(rec["z"], z.numpy(), atol=1e-6)
        s = torch.tensor(rec["I"]) + 1.0 * torch.tensor(rec["J"])
        xi.grad = z * (s - (z * s).sum())
        opt.step()
        assert np.allclose(rec["xi"], xi.detach().numpy(), atol=1e-6)
    assert all(0 < i <= 0.1 + 1e-7 for i in hist[0]["I"])  # every task's surrogate rose; clipped at c = 0.1
    absent = [(h, k) for h in hist for k in range(3) if h["shares"][k] == 0]
    assert absent and all(h["I"][k] == 0 for h, k in absent)  # a task absent from the batch did not improve
    assert hist[-1]["z"] != hist[0]["z"] and hist[0]["z"] == [1 / 3] * 3
    logged = [r for r in tr.state.log_history if "mtgrpo/z/toy_sum" in r]
    assert [r["mtgrpo/z/toy_sum"] for r in logged] == [pytest.approx(h["z"][2]) for h in hist]
    assert [r["mtgrpo/rounds"] for r in logged] == [h["rounds"] for h in hist]
    assert [r["mtgrpo/step"] for r in logged] == [1, 2, 3]
    assert {r["learning_rate"] for r in tr.state.log_history if "learning_rate" in r} == {1e-3}
    assert all(s["step"] == 6 for s in adam_state(tr.optimizer, tr.model.parameters()))


def test_short_batch_update_equals_mtgrpo_policy_update(tiny_dir, tmp_path):
    """A scripted short batch, 3 groups where B = 8 (4 minibatches of 2 groups): the trainer takes 2 optimizer
    steps (2 groups, then 1) and skips the 2 empty ones, so AdamW's step count is 2. mtgrpo.policy_update on
    the same rows from the same weights gives the same weights and AdamW moments, and mtgrpo.objective_change
    the same I_k (unclipped here: c = 10). A step on a filler would still move the weights by AdamW's
    momentum; a wrong pi_old or a sum of per-minibatch means would change I_k."""
    tr = make_trainer(tiny_dir, tmp_path, cls=ShortBatch, max_steps=4, steps_per_generation=4,
                      improvement_clip=10.0)
    initial = copy.deepcopy(tr.model)
    tr.train()
    (mbs, tasks), = tr.trained
    assert [mb is SKIP for mb in mbs] == [False, False, True, True]
    slots = real_slots(mbs, tasks)
    assert [len(mb["advantages"]) for mb, _ in slots] == [2 * N, N]
    assert tr.mt_history[0]["optimizer_steps"] == 2
    assert all(s["step"] == 2 for s in adam_state(tr.optimizer, tr.model.parameters()))
    rows = rows_of(slots)
    opt = torch.optim.AdamW(initial.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0)
    logprobs = functools.partial(policy.policy_logprobs, initial, pad_id=0, share_prompts=False)
    cfg = SimpleNamespace(minibatch_size=2, micro_batch_size=64, eps_low=0.2, eps_high=0.28,
                          loss_agg="token_mean", grad_clip=1.0, improvement_agg="mean", improvement_clip=10.0)
    stats, old = mtgrpo.policy_update(logprobs, opt, rows, N, cfg)
    assert stats["updates"] == 2
    improvement = mtgrpo.objective_change(logprobs, rows, old, 3, N, cfg)
    for p, q in zip(tr.model.parameters(), initial.parameters()):
        assert torch.allclose(p, q, atol=1e-5)
    for s, t in zip(adam_state(tr.optimizer, tr.model.parameters()), adam_state(opt, initial.parameters())):
        assert s["step"] == t["step"] == 2
        assert close(s["exp_avg"], t["exp_avg"], rel=1e-4)
        assert close(s["exp_avg_sq"], t["exp_avg_sq"], rel=1e-4)
    sampled = [k for k in range(3) if (rows.task == k).any()]
    assert max(abs(tr.mt_history[0]["I"][k]) for k in sampled) > 1e-3
    assert np.allclose(tr.mt_history[0]["I"], improvement.numpy(), rtol=2e-3, atol=1e-6)


class GradRecorder:
    """Stands in for an optimizer in mtgrpo.grpo_update: step() keeps the gradients."""
    def __init__(self, params):
        self.param_groups, self.grads = [{"params": list(params)}], []

    def step(self):
        self.grads.append([p.grad.clone() for p in self.param_groups[0]["params"]])

    def zero_grad(self, set_to_none=True):
        for p in self.param_groups[0]["params"]:
            p.grad = None


def _trl_grads(tiny_dir, out, **over):
    """One MT-GRPO step at lr 0 without clipping, completions of 1-4 tokens scripted at vLLM's boundary (no
    importance sampling correction); -> (the gradient of each optimizer step, the trainer)."""
    from transformers import TrainerCallback
    grads = []

    class Keep(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            grads.append([p.grad.clone() for p in model.parameters()])
    tr = make_trainer(tiny_dir, out, max_steps=2, learning_rate=0.0, max_grad_norm=0.0,
                      vllm_importance_sampling_correction=False, **over)
    use_fake_vllm(tr, ScriptedVLLM)
    tr.add_callback(Keep())
    tr.train()
    return grads, tr


def test_each_optimizer_step_is_divided_by_its_own_tokens(tiny_dir, tmp_path):
    """Eq. 13's token mean over each optimizer step's minibatch: the trainer's gradient equals
    mtgrpo.grpo_update's on the same minibatch, step by step. loss_normalizer="generation" (TRL's) divides by
    the batch's average tokens per step instead: its gradients are the same times T_step / (T_batch / 2),
    larger for the longer minibatch."""
    grads, tr = _trl_grads(tiny_dir, tmp_path / "mb")
    (mbs, tasks), = tr.trained
    tokens = [float(mb["completion_mask"].sum()) for mb in mbs]
    assert len(grads) == 2 and tokens[0] != tokens[1]  # else the two normalizers would agree
    logprobs = functools.partial(policy.policy_logprobs, tr.model, pad_id=0, share_prompts=False)
    for mb, task, trl_grad in zip(mbs, tasks, grads):
        rec = GradRecorder(tr.model.parameters())
        rows = rows_of([(mb, task)])
        mtgrpo.grpo_update(logprobs, rec, rows, list(range(len(rows.prompts))), mb["old_per_token_logps"], 64,
                           0.2, 0.28, "token_mean", float("inf"))
        assert all(close(a, b) for a, b in zip(trl_grad, rec.grads[0]))
    generation, _ = _trl_grads(tiny_dir, tmp_path / "gen", loss_normalizer="generation")
    for step, (a_step, b_step) in enumerate(zip(generation, grads)):
        scale = tokens[step] / (sum(tokens) / 2)
        assert all(close(a, b * scale) for a, b in zip(a_step, b_step))


class Upfront(Recording):
    """pi_old from one no-grad pass right after sampling (the path the liger loss takes)."""
    def _sample_batch(self):
        out = super()._sample_batch()
        olds = self._pending["olds"]
        self._pending["olds"] = [self._logps(mb) if o is None else o for mb, o in zip(out, olds)]
        return out


def test_pi_old_from_the_training_forward(tiny_dir, tmp_path):
    """One optimizer step per batch (steps_per_generation = gradient_accumulation_steps = 2): TRL keeps no
    pi_old, so I_k's pi_old is the loss forward's own log-probs at theta_t; I_k and z equal those of a
    separate pi_old pass."""
    runs = []
    for cls in (Recording, Upfront):  # each built right before it trains: building seeds torch's RNG
        runs.append(make_trainer(tiny_dir, tmp_path / cls.__name__, cls=cls, max_steps=3,
                                 gradient_accumulation_steps=2))
        runs[-1].train()
    captured, upfront = (tr.mt_history for tr in runs)
    assert len(captured) == 3
    assert not any("old_per_token_logps" in mb for mbs, _ in runs[0].trained for mb in mbs)
    for a, b in zip(captured, upfront):
        assert a["targets"] == b["targets"]
        assert np.allclose(a["I"], b["I"], atol=1e-6) and np.allclose(a["z"], b["z"], atol=1e-6)
    assert max(abs(i) for a in captured for i in a["I"]) > 1e-3


@pytest.mark.parametrize("method", list(mtgrpo.METHODS))
def test_every_method(tiny_dir, tmp_path, method):
    """Each --method of mtgrpo.py sets the sampler, weights, filter and clip as METHODS says, and acts so."""
    tr = make_trainer(tiny_dir, tmp_path, method=method, max_steps=4)
    spec = mtgrpo.METHODS[method]
    assert (tr.args.sampler, tr.args.weighting) == (spec["sampler"], spec["weighting"])
    assert tr.args.epsilon_high == spec["eps_high"]
    assert tr.args.filter == spec.get("filter", "strict")
    tr.train()
    first, last = tr.mt_history
    if spec["sampler"] == "grpo":
        assert first["rounds"] == 1 and sum(first["generated"][0]) == tr.B and first["groups_used"] == tr.B
    if spec["sampler"] == "rp":
        assert np.allclose(np.array(first["shares"]) * tr.B, first["targets"])
    assert (last["z"] == first["z"]) == (spec["weighting"] == "uniform")


def test_sec_values_follow_the_trained_groups(tiny_dir, tmp_path):
    """SEC: Q_k <- 0.5 Q_k + 0.5 mean |A| over task k's trained responses, re-derived from the trained
    minibatches, with each row's task read from its prompt text (groups of N rows share one task)."""
    tr = make_trainer(tiny_dir, tmp_path, method="sec", max_steps=4)
    tr.train()
    q = np.zeros(3)
    for mbs, tasks in tr.trained:
        progress = collections.defaultdict(list)
        for mb, _ in real_slots(mbs, tasks):
            for i in range(len(mb["advantages"])):
                progress[TASKS.split(",").index("toy_" + prompt_kind(mb, i, tr.processing_class))].append(
                    abs(float(mb["advantages"][i])))
        q = 0.5 * q + 0.5 * np.array([np.mean(progress[k]) if progress[k] else 0.0 for k in range(3)])
    assert len(tr.trained) == 2 and np.allclose(tr.mt.sec_q, q, atol=1e-6) and (q > 0).sum() >= 2


def test_reward_weights_combine_the_rewards(tiny_dir, tmp_path):
    """TRL's reward_weights weight each reward function before the groups are scored: a second function at
    weight 0 changes nothing (added in, its 0.5 would leave no reward of exactly 1.0, and the strict filter
    would drop every group)."""
    plain = make_trainer(tiny_dir, tmp_path / "one", max_steps=2)
    plain.train()
    half = lambda completions, **kw: [0.5] * len(completions)  # noqa: E731
    weighted = make_trainer(tiny_dir, tmp_path / "two", reward=[Scripted(), half], reward_weights=[1.0, 0.0],
                            max_steps=2)
    weighted.train()
    keys = ("targets", "generated", "accepted", "J", "groups_used")
    seen = [[{k: h[k] for k in keys} for h in tr.mt_history] for tr in (weighted, plain)]
    assert seen[0] == seen[1]
    assert weighted.mt_history[0]["groups_used"] == 4


def test_per_task_reward_dispatches_by_task():
    calls = []
    def fn(name):
        def f(prompts, completions, **kw):
            calls.append((name, list(prompts), kw["task"]))
            return [float(len(c)) for c in completions]
        return f
    reward = per_task_reward({"a": fn("a"), "b": fn("b")})
    out = reward(prompts=["p0", "p1", "p2"], completions=["x", "yy", "zzz"], task=["b", "a", "b"],
                 trainer_state=None)
    assert out == [1.0, 2.0, 3.0]
    assert calls == [("a", ["p1"], ["a"]), ("b", ["p0", "p2"], ["b", "b"])]


def test_verify_reward_scores_task_dataset_rows():
    """verify_reward on task_dataset's columns is verify.reward: 1.0 correct, 0.1 wrong but in form, 0.0
    none."""
    from integrations.trl_mtgrpo import verify_reward
    data = task_dataset("toy_next,countdown_easy", 3, 0, "r1", n_test=2)
    rows = [data[0], data[3]]  # one toy_next, one countdown_easy
    cols = {k: [r[k] for r in rows] for k in ("answer", "verifier", "info", "task")}
    wrong_toy = "a" if rows[0]["answer"] != "a" else "b"
    assert verify_reward([rows[0]["answer"], f"\\boxed{{{rows[1]['answer']}}}"], **cols) == [1.0, 1.0]
    assert verify_reward([wrong_toy, "\\boxed{1+1}"], **cols) == [0.1, 0.1]
    assert verify_reward(["?", "no box"], **cols) == [0.0, 0.0]
    assert rows[1]["prompt"].startswith("A conversation")
    assert data.column_names == ["prompt", "task", "answer", "verifier", "info"]


def test_layout_and_balance():
    """mtgrpo.py's minibatches (4 groups each, the last short) split evenly over 2 ranks; groups stay home if
    they can."""
    assert minibatch_layout(8, 2, 4) == [[2, 2], [2, 2]]
    assert minibatch_layout(5, 2, 4) == [[2, 2], [1, 0]]  # a short batch: 2 optimizer steps, no group dropped
    assert minibatch_layout(3, 1, 2) == [[2], [1]] and minibatch_layout(0, 2, 4) == []
    assign = balance([0, 0, 0, 1, 0, 1, 1], [4, 3])  # 7 groups: rank 0 trains 4, rank 1 trains 3
    assert assign == [[0, 1, 2, 4], [3, 5, 6]]
    assert balance([0, 0, 0, 1, 0], [3, 2]) == [[0, 1, 2], [3, 4]]  # group 4 (rank 0's 4th) moves to rank 1
    with pytest.raises(ValueError, match="add up"):
        balance([0, 1], [2, 1])


# -----------------------------------------------------------------------------
# Prompts as mtgrpo.py builds them: length cap, stop ids, special tokens


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    """The tiny model behind a tokenizer with a chat template: turns end in <|im_end|>, and the template
    writes a BOS <s> that the tokenizer also adds on its own (add_special_tokens=True), as Llama-style ones
    do. The model's EOS is <|endoftext|> only: a base model, on which chat style must be forced."""
    from tokenizers import processors
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from models import build_tiny_model
    path = build_tiny_model(str(tmp_path_factory.mktemp("chat")), seed=0)
    tok = PreTrainedTokenizerFast.from_pretrained(path)
    tok.add_special_tokens({"bos_token": "<s>", "additional_special_tokens": ["<|im_end|>"]})
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                                  special_tokens=[("<s>", tok.bos_token_id)])
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<|im_end|>"
                         "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    model = AutoModelForCausalLM.from_pretrained(path)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_stop_ids_for_every_prompt_style(chat_dir, tmp_path):
    """For every prompt style the trainer stops where mtgrpo.py does (models.stop_token_ids), in its masks and
    in HF generate: chat style forced on a base model adds <|im_end|>; r1, plain and auto (r1 here) do not."""
    import models
    for style in ("r1", "chat", "plain", "auto"):
        tr = make_trainer(chat_dir, tmp_path / style, max_steps=2, prompt_style=style)
        tok, model = tr.processing_class, tr.model
        want = models.stop_token_ids(model, tok, models.prompt_style(style, model, tok))
        assert sorted(tr.eos_token_ids) == want == sorted(tr.generation_config.eos_token_id)
        assert (tok.convert_tokens_to_ids("<|im_end|>") in want) == (style == "chat") and 1 in want


def test_no_second_bos(chat_dir, tmp_path):
    """A templated prompt is tokenized as mtgrpo.py does: one BOS (the template's), where TRL's default
    (add_special_tokens=True) would add a second; an r1 prompt gets none."""
    from tasks import load_task, make_prompt
    tr = make_trainer(chat_dir, tmp_path, max_steps=2, prompt_style="chat")
    tok = tr.processing_class
    bos = tok.bos_token_id
    ex = load_task("countdown_easy", n_train=2, n_test=1, seed=0)[0][0]
    text = make_prompt(ex, "chat", tok)
    ids = tr._tokenize_prompts([text])[0][0]
    assert ids == tok(text, add_special_tokens=False)["input_ids"] and ids[0] == bos and ids.count(bos) == 1
    assert tok(text)["input_ids"].count(bos) == 2  # what TRL's own tokenization would send to the model
    r1 = make_prompt(ex, "r1", tok)
    r1_ids = tr._tokenize_prompts([r1])[0][0]
    assert r1_ids == tok(r1, add_special_tokens=False)["input_ids"] and bos not in r1_ids


def test_prompt_length_cap_and_note(tiny_dir, capsys):
    """task_datasets drops prompts over max_prompt_len tokens as mtgrpo.py does (models.tokenize_tasks): the
    same rows and the same note. The cap is the longest test prompt (one token per character here: 457)."""
    import models
    from tasks import load_tasks, make_prompt
    tok = models.load_model(tiny_dir)[1]
    train_ex, test_ex = load_tasks("countdown_easy", 40, 4, 0)[0]
    cap = max(len(tok(make_prompt(ex, "r1"), add_special_tokens=False)["input_ids"]) for ex in test_ex)
    capsys.readouterr()
    train, test = task_datasets("countdown_easy", 40, 0, "r1", tok, n_test=4, max_prompt_len=cap)
    ours = capsys.readouterr().out
    _, kept, kept_test = models.tokenize_tasks(load_tasks("countdown_easy", 40, 4, 0), tok, 4, cap, "r1")
    theirs = capsys.readouterr().out
    notes = [line for line in ours.splitlines() if line.startswith("note:")]
    assert notes == [line for line in theirs.splitlines() if line.startswith("note:")]
    dropped = 40 - len(train)
    note = f"note: countdown_easy: dropped {dropped} of 40 prompts longer than --max-prompt-len {cap}"
    assert notes == [note]
    assert 0 < dropped < 40 and len(test) == 4
    assert train["prompt"] == [make_prompt(ex, "r1") for ex in kept[0][0]]
    assert test["prompt"] == [make_prompt(ex, "r1") for ex in kept_test[0][0]]
    assert all(len(tok(p, add_special_tokens=False)["input_ids"]) <= cap for p in train["prompt"])


# -----------------------------------------------------------------------------
# Steps, LR, the README's command, TRL's private methods


def test_steps_count_mtgrpo_steps_and_the_readme_command_trains_720():
    """mtgrpo_steps (and the save and eval twins) count MT-GRPO steps: x 4 optimizer steps in Exp. 1's shape.
    The README's command, parsed as main() parses it, trains 720 MT-GRPO steps of B = 32 prompts x N = 72 on 8
    processes, at the paper's constant LR 1e-6, and each optimizer step is divided by its own tokens."""
    from transformers import HfArgumentParser
    text = open(os.path.join(ROOT, "README.md")).read()
    command = r"accelerate launch --num_processes 8 integrations/trl_mtgrpo.py(.*?)\n```"
    block = re.search(command, text, re.S).group(1)
    argv = shlex.split(block.replace("\\\n", " ")) + ["--use_cpu", "--report_to", "none"]
    script, cfg = HfArgumentParser((ScriptArguments, MTGRPOConfig)).parse_args_into_dataclasses(argv)
    assert cfg.mtgrpo_steps == 720 and cfg.cycle == 4 and cfg.max_steps == 2880
    assert cfg.per_device_train_batch_size * 8 * cfg.steps_per_generation // cfg.num_generations == 32
    assert cfg.num_generations == 72 and cfg.lr_scheduler_type == "constant" and cfg.learning_rate == 1e-6
    assert cfg.loss_normalizer == "minibatch" and cfg.adam_beta2 == 0.99 and cfg.epsilon_high == 0.28
    assert cfg.save_steps % 4 == 0 and cfg.eval_steps % 4 == 0 and cfg.eval_on_start and cfg.eval_k == 8
    assert script.tasks == "countdown_medium,zebra_medium,arc1d_medium" and cfg.prompt_style == "r1"
    assert cfg.per_device_eval_batch_size // cfg.eval_k == 3 * script.eval_prompts // 8 == 75  # a call a rank
    assert -(-round(cfg.os_factor * 32) // 8) * cfg.num_generations == 864  # vLLM's max_num_seqs (README)
    small = dict(output_dir="/tmp/x", use_cpu=True, report_to="none", per_device_train_batch_size=8,
                 num_generations=4, steps_per_generation=2)
    assert MTGRPOConfig(**small, mtgrpo_steps=3).max_steps == 6
    with pytest.raises(ValueError, match="disagree"):
        MTGRPOConfig(**small, mtgrpo_steps=3, max_steps=8)
    with pytest.raises(ValueError, match="multiple of gradient_accumulation_steps"):
        MTGRPOConfig(**small, gradient_accumulation_steps=4)


def test_steps_inside_a_generation_batch_are_refused(tiny_dir, tmp_path):
    """A checkpoint or the run's end inside a generation batch (2 optimizer steps here) could not resume
    exactly."""
    for over in (dict(save_strategy="steps", save_steps=1), dict(max_steps=3)):
        with pytest.raises(ValueError, match="must be a multiple of 2"):
            make_trainer(tiny_dir, tmp_path, **over)
    tr = make_trainer(tiny_dir, tmp_path, max_steps=2)
    tr._pending = {}  # as if a save came mid-batch
    with pytest.raises(ValueError, match="inside a generation batch"):
        tr._save_checkpoint(tr.model, None)


def test_overridden_private_methods_keep_their_trl_signatures():
    """The trainer overrides private methods of trl 1.16's GRPOTrainer and calls one more: a TRL release that
    renames or reorders their parameters fails here, not in a run."""
    import trl
    from trl import GRPOTrainer
    assert trl.__version__.startswith("1.16.")
    expected = {
        "_prepare_inputs": ["self", "generation_batch"],
        "_generate": ["self", "prompts"],
        "_tokenize_prompts": ["self", "prompts"],
        "_calculate_rewards": ["self", "inputs", "prompts", "completions", "completion_ids_list"],
        "_get_per_token_logps_and_entropies": [
            "self", "model", "input_ids", "attention_mask", "logits_to_keep", "batch_size", "compute_entropy",
            "compute_aux_loss", "pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask",
            "spatial_shapes", "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids",
            "image_position_ids"],
        "_save_checkpoint": ["self", "model", "trial"],
        "_load_optimizer_and_scheduler": ["self", "checkpoint"],
        "_generate_and_score_completions": ["self", "inputs"],  # called, not overridden
        "compute_loss": ["self", "model", "inputs", "return_outputs", "num_items_in_batch"],
        "evaluate": ["self", "eval_dataset", "ignore_keys", "metric_key_prefix"],
    }
    for name, params in expected.items():
        assert list(inspect.signature(getattr(GRPOTrainer, name)).parameters) == params, name
    src = inspect.getsource(GRPOTrainer._generate)  # what the overrides read from its result
    assert ("return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, "
            "tool_images") in src


# -----------------------------------------------------------------------------
# Evaluation


def test_evaluation_is_support_evaluate_and_leaves_training_alone(tiny_dir, tmp_path, splits):
    """mtgrpo_eval_steps 1 over 2 MT-GRPO steps: evaluations at steps 0, 1 and 2, logged as
    eval/<task>/mean@4, eval/worst and eval/average, equal to support.evaluate's on the same (scripted)
    samples. The training run is the same as one without evaluation: z, I and the weights."""
    from tasks import load_tasks
    tr = make_trainer(tiny_dir, tmp_path / "eval", eval_dataset=splits[1], max_steps=4,
                      mtgrpo_eval_steps=1)
    tr.train()
    assert [e["step"] for e in tr.eval_history] == [0, 1, 2]
    logged = [r for r in tr.state.log_history if "eval/worst" in r]
    assert len(logged) == 3 and all(f"eval/{t}/mean@4" in r for r in logged for t in TASKS.split(","))
    test = [(te, [[0]] * len(te)) for _, te in load_tasks(TASKS, N_TRAIN, N_TEST, 0)]
    sample = lambda ids, k: [(torch.zeros(k, 1), torch.ones(k, 1)) for _ in ids]  # noqa: E731
    ref = support.evaluate(sample, Scripted().score, test, TASKS.split(","), N, 0, step=0)
    assert 0 < ref["worst"] < ref["avg"] < 1
    for e, r in zip(tr.eval_history, logged):
        assert e["acc"] == pytest.approx(ref["acc"], abs=1e-12)
        assert e["worst"] == pytest.approx(ref["worst"], abs=1e-12)
        assert r["eval/average"] == pytest.approx(ref["avg"], abs=1e-12) and r["eval/worst"] == e["worst"]
    plain = make_trainer(tiny_dir, tmp_path / "plain", max_steps=4)
    plain.train()
    for a, b in zip(tr.mt_history, plain.mt_history):
        assert (a["z"], a["targets"], a["I"], a["xi"]) == (b["z"], b["targets"], b["I"], b["xi"])
    assert all(torch.equal(p, q) for p, q in zip(tr.model.parameters(), plain.model.parameters()))


# -----------------------------------------------------------------------------
# vLLM at its boundary


class FakeVLLM:
    """vLLM colocate at its boundary (GRPOTrainer.vllm_generation): an engine holding its own copy of the
    weights, replaced only by sync_weights(), sampling with HF generate. Records the weights it used, per
    global step."""
    def __init__(self, trainer):
        self.trainer, self.engine, self.events = trainer, copy.deepcopy(trainer.model).eval(), []
        self.generation_kwargs = {}

    @staticmethod
    def checksum(model) -> float:
        return float(sum(p.detach().double().sum() for p in model.parameters()))

    def sync_weights(self):
        self.engine.load_state_dict(self.trainer.model.state_dict())
        self.events.append(("sync", self.trainer.state.global_step, self.checksum(self.engine)))

    def generate(self, prompts, images, num_generations, profiler=None):
        t = self.trainer
        self.events.append(("generate", t.state.global_step, self.checksum(self.engine),
                            self.checksum(t.model)))
        width = max(map(len, prompts))
        ids = torch.tensor([[0] * (width - len(p)) + list(p) for p in prompts])
        with torch.no_grad():
            out = self.engine.generate(input_ids=ids, attention_mask=(ids != 0).long(), do_sample=True,
                                       max_new_tokens=t.max_completion_length, pad_token_id=0, eos_token_id=1)
        completions = [c[:c.index(1) + 1] if 1 in c else c for c in out[:, width:].tolist()]
        return prompts, completions, [[[-1.0] for _ in c] for c in completions], None


class ScriptedVLLM(FakeVLLM):
    """Completions of 1 to 4 tokens, the last an EOS, chosen by a hash of the prompt and the row: minibatches
    of unequal token counts, whatever the model."""
    def generate(self, prompts, images, num_generations, profiler=None):
        lengths = [1 + int(4 * _uniform(p, i)) for i, p in enumerate(prompts)]
        completions = [[2 + int(90 * _uniform(p, i, j)) for j in range(n - 1)] + [1]
                       for i, (p, n) in enumerate(zip(prompts, lengths))]
        return prompts, completions, [[[-1.0] for _ in c] for c in completions], None


def use_fake_vllm(tr, engine=FakeVLLM):
    tr.use_vllm, tr.vllm_mode, tr._last_loaded_step = True, "colocate", -1
    tr.vllm_generation = engine(tr)
    return tr.vllm_generation


def test_vllm_rounds_reuse_the_weights_synced_at_step_start(tiny_dir, tmp_path):
    """use_vllm=True, colocate, vLLM mocked at its boundary: each generation step syncs the weights once,
    before its first round; every round of the step (os_factor 1 and hard tasks force several) generates with
    those weights, which equal the policy's; the next step syncs the updated ones. TRL's old-log-prob pass
    (for its importance sampling correction) runs on the filter's survivors only, and gives them the values a
    pass over all rows gives."""
    rates = {"toy_copy": 0.3, "toy_next": 0.2, "toy_sum": 0.1}
    tr = make_trainer(tiny_dir, tmp_path, reward=Scripted(rates), os_factor=1.0, max_steps=6)
    initial = copy.deepcopy(tr.model)
    fake = use_fake_vllm(tr)
    tr.train()
    by_step = collections.defaultdict(list)
    for e in fake.events:
        by_step[e[1]].append(e)
    assert sorted(by_step) == [0, 2, 4]  # generation steps only (2 optimizer steps per batch)
    for events in by_step.values():
        assert events[0][0] == "sync" and [e[0] for e in events[1:]] == ["generate"] * (len(events) - 1)
        assert all(e[2] == events[0][2] == e[3] for e in events[1:])
    assert [len(by_step[s]) - 1 for s in (0, 2, 4)] == [h["rounds"] for h in tr.mt_history]
    assert max(h["rounds"] for h in tr.mt_history) >= 2
    syncs = [by_step[s][0][2] for s in (0, 2, 4)]
    assert len(set(syncs)) == 3  # the weights changed between steps and each step synced the new ones
    assert all("old_per_token_logps" in mb for step in tr.trained for mb, _ in real_slots(*step))
    for h in tr.mt_history:  # one pass row per surviving rollout
        assert h["rows_logp_pass"] == sum(map(sum, h["accepted"])) * N < h["rows_generated"]
    from trl import GRPOTrainer
    for mb, _ in real_slots(*tr.trained[0]):  # step 1: pi_old at the initial weights
        ids = torch.cat([mb["prompt_ids"], mb["completion_ids"]], 1)
        att = torch.cat([mb["prompt_mask"], mb["completion_mask"]], 1)
        with torch.no_grad():
            T = mb["completion_ids"].shape[1]
            full = GRPOTrainer._get_per_token_logps_and_entropies(tr, initial, ids, att, T)[0]
        m = mb["completion_mask"].bool()
        assert torch.allclose(mb["old_per_token_logps"][m], full[m], atol=1e-5)


def test_vllm_is_sized_for_the_first_round(tiny_dir, tmp_path, monkeypatch):
    """vLLM's max_num_seqs holds the sampler's first round, M_os B prompts x N rows per rank (3 x 4 x 4 = 48
    here; TRL's own sizing: one generation batch, 16), times the tensor-parallel size; and vLLM stops at
    mtgrpo.py's stop ids."""
    import trl.trainer.grpo_trainer as grpo
    made = []

    class Engine:
        def __init__(self, **kw):
            made.append(kw)
            self.generation_kwargs = kw.get("generation_kwargs") or {}
    monkeypatch.setattr(grpo, "VLLMGeneration", Engine)
    tr = make_trainer(tiny_dir, tmp_path, use_vllm=True, vllm_mode="colocate", vllm_tensor_parallel_size=1)
    assert made[0]["max_num_seqs"] == 3 * tr.B * N == 48 and grpo.VLLMGeneration is Engine
    assert tr.vllm_generation.generation_kwargs["stop_token_ids"] == tr.eos_token_ids == [1]


# -----------------------------------------------------------------------------
# Resume, and parity with mtgrpo.train over several steps (one process, then two)


def test_resume_continues_exactly(tiny_dir, tmp_path):
    """A run saved after MT-GRPO step 1 (optimizer step 2) and resumed gives the uninterrupted run's steps
    2-3: z, targets, rho, J, I, xi and the final weights, bit for bit. The reward is a function of prompt and
    completion: nothing outside the checkpoint decides it."""
    full = make_trainer(tiny_dir, tmp_path / "full", reward=Scripted(by="completion"), save_strategy="steps",
                        save_steps=2)
    full.train()
    resumed = make_trainer(tiny_dir, tmp_path / "resumed", reward=Scripted(by="completion"))
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    assert len(full.mt_history) == 3 and len(resumed.mt_history) == 2
    keys = ("step", "z", "targets", "shares", "rho", "J", "I", "xi", "generated", "accepted")
    for a, b in zip(full.mt_history[1:], resumed.mt_history):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    xi_steps = [tr.mt.xi_opt.state_dict()["state"][0]["step"] for tr in (full, resumed)]
    assert xi_steps[0] == xi_steps[1]


# M_os 1.25 and no resampling: of B = 8, steps 1-4 train 6, 5, 8 and 5 groups. 4 optimizer steps of 2 groups
# per MT-GRPO step (with 2 ranks, the README's 8-GPU shape: one group per rank per minibatch)
PARITY = dict(steps=4, os_factor=1.25, rounds=0)


def reference_run(out, monkeypatch) -> tuple[list, list]:
    """mtgrpo.train on the same tasks, B = 8, N, sampler settings and scripted rewards, at lr ~0 (1e-12; its
    flags must be > 0): I_k ~ 0, z moves by J alone, as in the TRL runs at lr 0. -> (train records, eval
    records)."""
    import verify
    monkeypatch.setattr(verify, "score", Scripted().score)
    cfg = mtgrpo.Config(**{**mtgrpo.PRESETS["tiny"], "tasks": TASKS, "steps": PARITY["steps"],
                           "out_dir": str(out), "n_train": N_TRAIN, "eval_prompts": N_TEST, "eval_k": N,
                           "eval_every": 1, "batch_size": 8, "num_rollouts": N, "max_response_len": 2,
                           "minibatch_size": 2, "lr": 1e-12, "lam": 1.0, "xi_lr": 0.1,
                           "os_factor": PARITY["os_factor"], "max_resample_rounds": PARITY["rounds"],
                           "seed": 0})
    mtgrpo.train(cfg)
    log = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    return [r for r in log if r["kind"] == "train"], [r for r in log if r["kind"] == "eval"]


def parity_trainer(model_dir, out, eval_dataset, world):
    return make_trainer(model_dir, out, eval_dataset=eval_dataset, mtgrpo_steps=PARITY["steps"],
                        max_steps=-1, learning_rate=0.0, per_device_train_batch_size=2 // world * N,
                        steps_per_generation=4, max_completion_length=2, os_factor=PARITY["os_factor"],
                        max_resample_rounds=PARITY["rounds"], mtgrpo_eval_steps=1, max_grad_norm=0.0)


def check_parity(ref: list, ref_evals: list, history: list, evals: list) -> None:
    """Step by step: the same z, targets, realized shares, rho, J, rounds and per-round counts; a short batch
    among them; the same evaluations (mean@k per task, worst, average) at steps 0..T."""
    assert len(history) == len(ref) == PARITY["steps"]
    for a, b in zip(ref, history):
        assert a["targets"] == b["targets"]
        assert a["generated"] == b["generated"] and a["accepted"] == b["accepted"]
        assert a["rounds"] == b["rounds"] and a["batch_groups"] == b["groups_used"]
        assert np.allclose(a["z"], b["z"], atol=1e-6) and np.allclose(a["rho"], b["rho"], atol=1e-12)
        assert np.allclose(a["J"], b["J"], atol=1e-7) and np.allclose(a["batch_shares"], b["shares"])
        assert max(map(abs, a["I"])) < 1e-5 and max(map(abs, b["I"])) < 1e-5
    assert ref[-1]["z"] != ref[0]["z"]
    assert [h["groups_used"] for h in history] == [6, 5, 8, 5]  # short batches
    assert [e["step"] for e in ref_evals] == [e["step"] for e in evals] == list(range(PARITY["steps"] + 1))
    for a, b in zip(ref_evals, evals):
        assert a["acc"] == pytest.approx(b["acc"], abs=1e-12)
        assert (a["worst"], a["avg"]) == pytest.approx((b["worst"], b["avg"]), abs=1e-12)


def test_same_method_as_mtgrpo_loop(tiny_dir, tmp_path, monkeypatch, splits):
    """Parity, one process: mtgrpo.train and the TRL subclass (same seed, tasks, B, N, sampler settings,
    scripted rewards) draw the same prompts, so z, targets, shares, rho, J, rounds and the evaluations agree
    step by step, short batches included."""
    ref, ref_evals = reference_run(tmp_path / "ref", monkeypatch)
    tr = parity_trainer(tiny_dir, tmp_path / "trl", splits[1], world=1)
    tr.train()
    assert tr.B == 8
    check_parity(ref, ref_evals, tr.mt_history, tr.eval_history)


def test_two_processes(tiny_dir, tmp_path, monkeypatch):
    """torch.distributed.run, 2 processes, gloo on CPU, the parity run's settings: both ranks log the same
    steps and evaluations, and these equal mtgrpo.train's (check_parity), short batches included. Each rank
    trains whole groups; the ranks' per-task group counts add up to the batch's, no group dropped; both take
    the same optimizer steps, one per non-empty minibatch (AdamW's step count), with equal rows in each
    (fillers); both sample half of each round's and each evaluation's prompts. The first optimizer step's
    gradient, averaged over the ranks, is mtgrpo.grpo_update's on the two ranks' rows together: each rank
    divides by the step's tokens on both ranks."""
    path = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")  # the children import this checkout
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           str(tmp_path)]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    logs = [json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1)]
    here = [os.path.join(ROOT, "integrations", "trl_mtgrpo.py"), os.path.join(ROOT, "mtgrpo.py")]
    assert logs[0]["modules"] == logs[1]["modules"] == here
    assert logs[0]["history"] == logs[1]["history"] and logs[0]["evals"] == logs[1]["evals"]
    ref, ref_evals = reference_run(tmp_path / "ref", monkeypatch)
    check_parity(ref, ref_evals, logs[0]["history"], logs[0]["evals"])
    for t, rec in enumerate(logs[0]["history"]):
        groups = np.round(np.array(rec["shares"]) * rec["groups_used"]).astype(int)
        assert np.add(logs[0]["task_counts"][t], logs[1]["task_counts"][t]).tolist() == groups.tolist()
        assert len(logs[0]["rows"][t]) == len(logs[1]["rows"][t]) == rec["optimizer_steps"]
        assert abs(sum(logs[0]["rows"][t]) - sum(logs[1]["rows"][t])) <= N  # split evenly
        assert logs[0]["slot_rows"][t] == logs[1]["slot_rows"][t]  # fillers even out the rows TRL gathers
    steps = sum(rec["optimizer_steps"] for rec in logs[0]["history"])
    assert steps == 3 + 3 + 4 + 3  # 6, 5, 8 and 5 groups, 2 per step: the empty steps were skipped
    assert logs[0]["adam_steps"] == logs[1]["adam_steps"] == steps
    assert sum(rec["groups_moved"] for rec in logs[0]["history"]) > 0  # the balancing moved groups
    per_round = [sum(g) for rec in logs[0]["history"] for g in rec["generated"]]  # prompts per round
    assert logs[0]["prompts_here"] == logs[1]["prompts_here"] == [-(-p // 2) for p in per_round]  # half each
    evals = [3 * N_TEST // 2] * (PARITY["steps"] + 1)
    assert logs[0]["eval_prompts_here"] == logs[1]["eval_prompts_here"] == evals
    from models import load_model
    first = [torch.load(tmp_path / f"rank{r}_step1.pt") for r in (0, 1)]
    model = load_model(tiny_dir)[0]
    slots = [(f["slot"], f["task"]) for f in first]
    rows = rows_of(slots)
    assert len(rows.prompts) == 2 * N and rows.mask.sum() > 0  # one group on each rank
    T = rows.mask.shape[1]
    old = torch.cat([F.pad(mb["old_per_token_logps"], (0, T - mb["old_per_token_logps"].shape[1]))
                     for mb, _ in slots])
    rec = GradRecorder(model.parameters())
    logprobs = functools.partial(policy.policy_logprobs, model, pad_id=0, share_prompts=False)
    mtgrpo.grpo_update(logprobs, rec, rows, list(range(2 * N)), old, 64, 0.2, 0.28, "token_mean",
                       float("inf"))
    assert all(close(a, b) for f in first for a, b in zip(f["grads"], rec.grads[0]))


def _worker(out: str) -> None:
    """One rank of test_two_processes: B = 8 prompts per step over 2 ranks, 4 minibatches of 1 group each."""
    import integrations.trl_mtgrpo
    import models
    from transformers import TrainerCallback
    rank = int(os.environ["RANK"])
    model_dir = models.build_tiny_model(os.path.join(out, f"tiny{rank}"), seed=0)
    test = task_datasets(TASKS, N_TRAIN, 0, "plain", n_test=N_TEST)[1]
    tr = parity_trainer(model_dir, os.path.join(out, "run"), test, world=2)
    seen, seen_eval = [], []
    inner_generate, inner_evaluate = tr._generate, tr.evaluate
    def generate(prompts):  # how many prompts this rank generated in each round and each evaluation
        if tr.model.training:
            seen.append(len(prompts) // N)
        else:
            seen_eval[-1] += len(prompts) // N
        return inner_generate(prompts)
    def evaluate(*args, **kw):
        seen_eval.append(0)
        return inner_evaluate(*args, **kw)
    tr._generate, tr.evaluate = generate, evaluate
    grads = []

    class Keep(TrainerCallback):  # the first optimizer step's gradient, after DDP averaged it
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            if not grads:
                grads.append([p.grad.clone() for p in model.parameters()])
    tr.add_callback(Keep())
    tr.train()
    mbs, tasks = tr.trained[0]
    first = {k: v for k, v in mbs[0].items() if torch.is_tensor(v) and v.dim()}
    torch.save({"grads": grads[0], "slot": first, "task": tasks[0]},
               os.path.join(out, f"rank{rank}_step1.pt"))
    task_counts, rows, slot_rows = [], [], []
    for mbs, tasks_ in tr.trained:
        for mb, t in real_slots(mbs, tasks_):
            check_whole_groups(mb, t, tr.processing_class)
        ids = torch.cat([t for _, t in real_slots(mbs, tasks_)])[::N]
        task_counts.append(np.bincount(ids[ids >= 0].numpy(), minlength=3).tolist())
        rows.append([int((t >= 0).sum()) for _, t in real_slots(mbs, tasks_)])
        slot_rows.append([0 if mb is SKIP else len(mb["advantages"]) for mb in mbs])
    log = {"history": [{k: v for k, v in h.items() if not k.startswith("seconds")} for h in tr.mt_history],
           "evals": tr.eval_history, "task_counts": task_counts, "rows": rows, "prompts_here": seen,
           "eval_prompts_here": seen_eval,
           "adam_steps": int(adam_state(tr.optimizer, tr.model.parameters())[0]["step"]),
           "slot_rows": slot_rows,
           "modules": [integrations.trl_mtgrpo.__file__, mtgrpo.__file__]}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(log, f)
    # Leave together and tear gloo down before the interpreter does: a rank that exits with its process group
    # still alive can abort in gloo's destructor ("terminate called without an active exception"), seen in CI.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1])
