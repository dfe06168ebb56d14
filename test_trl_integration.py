"""Tests of integrations/trl_mtgrpo.py, MT-GRPO inside TRL's GRPOTrainer (issue 15), on the tiny model and CPU.

Rewards are scripted (`Scripted`): 1.0 with a fixed probability per task, decided by a hash of the prompt, how often
it was drawn before and the rollout's index, so two trainers that draw the same prompts get the same rewards.

    python3 -m pytest -q test_trl_integration.py        # ~1 min on 2 cores; skipped without trl
This file is also the 2-process worker of test_two_processes (run under torch.distributed.run, gloo on CPU).
"""

import collections, copy, hashlib, json, os, subprocess, sys

import numpy as np
import pytest
import torch

pytest.importorskip("trl", reason="trl is not installed: pip install -r requirements-trl.txt")

import mtgrpo  # noqa: E402
from integrations.trl_mtgrpo import MTGRPOConfig, MTGRPOTrainer, balance, per_task_reward, task_dataset  # noqa: E402

TASKS = "toy_copy,toy_next,toy_sum"
RATES = {"toy_copy": 0.6, "toy_next": 0.35, "toy_sum": 0.15}
N, N_TRAIN, N_TEST = 4, 64, 4
ROOT = os.path.dirname(os.path.abspath(__file__))


def _uniform(*key) -> float:
    return int.from_bytes(hashlib.sha256("|".join(map(str, key)).encode()).digest()[:8], "big") / 2**64


class Scripted:
    """Fixed per-task success rates. A TRL reward function (rows come N per prompt, in draw order) and, as
    `score`, a stand-in for verify.score in mtgrpo.py's loop."""
    __name__ = "scripted"

    def __init__(self, rates=RATES, n=N):
        self.rates, self.n, self.seen = rates, n, collections.Counter()

    def group(self, question: str, task: str) -> list[float]:
        c, self.seen[question] = self.seen[question], self.seen[question] + 1
        return [float(_uniform(question, c, j) < self.rates[task]) for j in range(self.n)]

    def __call__(self, prompts, completions, task, **kw):
        return [r for i in range(0, len(prompts), self.n) for r in self.group(prompts[i], task[i])]

    def score(self, examples, outputs, tokenizer=None, box_rule="last"):
        return [torch.tensor(self.group(ex.question, ex.task)) for ex in examples]


class Recording(MTGRPOTrainer):
    """Keeps what each step hands TRL: this rank's minibatches and the task of every row."""
    def _distribute(self, batch):
        out = super()._distribute(batch)
        self.trained = getattr(self, "trained", []) + [out]
        return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from models import build_tiny_model
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny")), seed=0)


def make_trainer(model_dir, out, reward=None, cls=Recording, **over):
    from models import load_model
    torch.set_num_threads(1)
    model, tokenizer = load_model(model_dir)
    cfg = dict(output_dir=str(out), use_cpu=True, seed=0, max_steps=6, per_device_train_batch_size=2 * N, num_generations=N,
               steps_per_generation=2, gradient_accumulation_steps=1, max_completion_length=4, learning_rate=1e-3,
               logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, lam=1.0, xi_lr=0.1)
    dataset = task_dataset(TASKS, N_TRAIN, 0, "plain", n_test=N_TEST)
    return cls(model=model, reward_funcs=reward or Scripted(), args=MTGRPOConfig(**{**cfg, **over}),
               train_dataset=dataset, processing_class=tokenizer)


def check_whole_groups(mb, task_rows, tokenizer):
    """Rows come in blocks of N: one prompt each, of the task the batch says ("sum: ..." for toy_sum), advantages of
    one group (they sum to 0; a filler's, task -1, are all 0)."""
    assert len(mb["advantages"]) % N == 0 and len(task_rows) == len(mb["advantages"])
    for i in range(0, len(mb["advantages"]), N):
        assert (mb["prompt_ids"][i:i + N] == mb["prompt_ids"][i]).all() and (task_rows[i:i + N] == task_rows[i]).all()
        assert abs(float(mb["advantages"][i:i + N].sum())) < 1e-4
        if task_rows[i] >= 0:
            kind = tokenizer.decode(mb["prompt_ids"][i], skip_special_tokens=True).split(":")[0]
            assert "toy_" + kind == TASKS.split(",")[task_rows[i]]


def test_steps_shares_equal_targets_and_iwu_moves_z(tiny_dir, tmp_path):
    """3 MT-GRPO steps (6 optimizer steps, 2 minibatches each): the trained batch has exactly n_k groups of task k,
    no constant group, and xi follows Subroutine 1 from the logged I and J (re-derived here with AdamW)."""
    tr = make_trainer(tiny_dir, tmp_path)
    tr.train()
    hist, B = tr.mt_history, tr.B
    assert len(hist) == 3 and B == 4
    xi = torch.zeros(3, requires_grad=True)
    opt = torch.optim.AdamW([xi], lr=0.1, weight_decay=1e-5)
    for rec, (mbs, tasks, _) in zip(hist, tr.trained):
        assert sum(rec["targets"]) == B == rec["groups_used"]
        assert np.allclose(np.array(rec["shares"]) * B, rec["targets"])
        rows = torch.cat([t for t in tasks if (t >= 0).all()])
        assert np.bincount(rows[::N].numpy(), minlength=3).tolist() == rec["targets"]
        for mb, t in zip(mbs, tasks):
            check_whole_groups(mb, t, tr.processing_class)
            adv = mb["advantages"].view(-1, N)
            assert (adv.max(dim=1).values > adv.min(dim=1).values).all()  # strict filter: no constant group survived
        z = torch.softmax(xi.detach(), 0)
        assert np.allclose(rec["z"], z.numpy(), atol=1e-6)
        s = torch.tensor(rec["I"]) + 1.0 * torch.tensor(rec["J"])
        xi.grad = z * (s - (z * s).sum())
        opt.step()
        assert np.allclose(rec["xi"], xi.detach().numpy(), atol=1e-6)
    assert all(0 < i <= 0.1 + 1e-7 for i in hist[0]["I"])  # the update raised every task's surrogate, clipped at c = 0.1
    assert hist[1]["targets"][2] == 0 and hist[1]["I"][2] == 0  # a task absent from the batch did not improve
    assert hist[-1]["z"] != hist[0]["z"] and hist[0]["z"] == [1 / 3] * 3
    logged = [r for r in tr.state.log_history if "mtgrpo/z/toy_sum" in r]
    assert [r["mtgrpo/z/toy_sum"] for r in logged] == [pytest.approx(h["z"][2]) for h in hist]
    assert [r["mtgrpo/rounds"] for r in logged] == [h["rounds"] for h in hist]


class Upfront(Recording):
    """pi_old from one no-grad pass right after sampling (the path the liger loss takes)."""
    def _sample_batch(self):
        out = super()._sample_batch()
        self._pending["olds"] = [self._logps(mb) if o is None else o for mb, o in zip(out, self._pending["olds"])]
        return out


def test_pi_old_from_the_training_forward(tiny_dir, tmp_path):
    """One optimizer step per batch (steps_per_generation = gradient_accumulation_steps = 2): TRL keeps no pi_old, so
    I_k's pi_old is the loss forward's own log-probs at theta_t; I_k and z equal those of a separate pi_old pass."""
    runs = []
    for cls in (Recording, Upfront):  # each built right before it trains: the trainer seeds torch's RNG when built
        runs.append(make_trainer(tiny_dir, tmp_path / cls.__name__, cls=cls, max_steps=3, gradient_accumulation_steps=2))
        runs[-1].train()
    captured, upfront = (tr.mt_history for tr in runs)
    assert len(captured) == 3 and not any("old_per_token_logps" in mb for mbs, _, _ in runs[0].trained for mb in mbs)
    for a, b in zip(captured, upfront):
        assert a["targets"] == b["targets"] and np.allclose(a["I"], b["I"], atol=1e-6) and np.allclose(a["z"], b["z"], atol=1e-6)
    assert max(abs(i) for a in captured for i in a["I"]) > 1e-3


@pytest.mark.parametrize("method", list(mtgrpo.METHODS))
def test_every_method(tiny_dir, tmp_path, method):
    """Each --method of mtgrpo.py sets the sampler, weights, filter and clip as METHODS says, and behaves so."""
    tr = make_trainer(tiny_dir, tmp_path, method=method, max_steps=4)
    spec = mtgrpo.METHODS[method]
    assert (tr.args.sampler, tr.args.weighting, tr.args.epsilon_high) == (spec["sampler"], spec["weighting"], spec["eps_high"])
    assert tr.args.filter == spec.get("filter", "strict")
    tr.train()
    first, last = tr.mt_history
    if spec["sampler"] == "grpo":
        assert first["rounds"] == 1 and sum(first["generated"][0]) == tr.B and first["groups_used"] == tr.B
    if spec["sampler"] == "rp":
        assert np.allclose(np.array(first["shares"]) * tr.B, first["targets"])
    assert (last["z"] == first["z"]) == (spec["weighting"] == "uniform")


def test_per_task_reward_dispatches_by_task():
    calls = []
    def fn(name):
        def f(prompts, completions, **kw):
            calls.append((name, list(prompts), kw["task"]))
            return [float(len(c)) for c in completions]
        return f
    reward = per_task_reward({"a": fn("a"), "b": fn("b")})
    out = reward(prompts=["p0", "p1", "p2"], completions=["x", "yy", "zzz"], task=["b", "a", "b"], trainer_state=None)
    assert out == [1.0, 2.0, 3.0]
    assert calls == [("a", ["p1"], ["a"]), ("b", ["p0", "p2"], ["b", "b"])]


def test_verify_reward_scores_task_dataset_rows():
    """verify_reward on task_dataset's columns is verify.reward: 1.0 correct, 0.1 a wrong answer in form, 0.0 none."""
    from integrations.trl_mtgrpo import verify_reward
    data = task_dataset("toy_next,countdown_easy", 3, 0, "r1", n_test=2)
    rows = [data[0], data[3]]  # one toy_next, one countdown_easy
    cols = {k: [r[k] for r in rows] for k in ("answer", "verifier", "info", "task")}
    wrong_toy = "a" if rows[0]["answer"] != "a" else "b"
    assert verify_reward([rows[0]["answer"], f"\\boxed{{{rows[1]['answer']}}}"], **cols) == [1.0, 1.0]
    assert verify_reward([wrong_toy, "\\boxed{1+1}"], **cols) == [0.1, 0.1]
    assert verify_reward(["?", "no box"], **cols) == [0.0, 0.0]
    assert rows[1]["prompt"].startswith("A conversation") and data.column_names == ["prompt", "task", "answer", "verifier", "info"]


def test_balance_keeps_groups_home_and_ranks_equal():
    assign = balance([0, 0, 0, 1, 0, 1, 1], 2)  # 7 groups, 2 ranks: 3 each, the last dropped
    assert [len(a) for a in assign] == [3, 3] and sorted(sum(assign, [])) == [0, 1, 2, 3, 4, 5]
    assert assign[0] == [0, 1, 2] and assign[1] == [3, 4, 5]  # group 4 (rank 0's 4th) moves to rank 1


def test_same_method_as_mtgrpo_loop(tiny_dir, tmp_path, monkeypatch):
    """Parity: mtgrpo.train and the TRL subclass, same seed, tasks, B, N, sampler settings and scripted rewards, draw
    the same prompts, so their z, targets, rho, J, rounds and per-round generated / accepted counts agree step by step.
    One difference is removed by design: the two policy updates differ (TRL's loss normalises over the generation
    batch and its LR decays; its pi_old passes differ), so I_k (Eq. 8) would differ. The learning rate is ~0 on both
    sides (1e-12 in mtgrpo.py, whose flags must be > 0; 0 in TRL): I_k is ~0 (exactly 0 in TRL, where both passes are
    the same forward) and z moves by J alone."""
    import verify
    steps = 4
    ref_reward, trl_reward = Scripted(), Scripted()
    monkeypatch.setattr(verify, "score", ref_reward.score)
    cfg = mtgrpo.Config(**{**mtgrpo.PRESETS["tiny"], "tasks": TASKS, "steps": steps, "out_dir": str(tmp_path / "ref"),
                           "n_train": N_TRAIN, "eval_prompts": N_TEST, "eval_k": 1, "eval_every": 0, "batch_size": 8,
                           "num_rollouts": N, "max_response_len": 2, "minibatch_size": 4, "lr": 1e-12, "lam": 1.0,
                           "xi_lr": 0.1, "max_resample_rounds": 3, "seed": 0})
    mtgrpo.train(cfg)
    ref = [json.loads(line) for line in open(tmp_path / "ref" / "log.jsonl")]
    ref = [r for r in ref if r["kind"] == "train"]
    tr = make_trainer(tiny_dir, tmp_path / "trl", reward=trl_reward, max_steps=2 * steps, per_device_train_batch_size=4 * N,
                      learning_rate=0.0, max_completion_length=2, max_resample_rounds=3)
    tr.train()
    assert tr.B == 8 and len(tr.mt_history) == len(ref) == steps
    for a, b in zip(ref, tr.mt_history):
        assert a["targets"] == b["targets"] and a["generated"] == b["generated"] and a["accepted"] == b["accepted"]
        assert a["rounds"] == b["rounds"]
        assert np.allclose(a["z"], b["z"], atol=1e-6) and np.allclose(a["rho"], b["rho"], atol=1e-12)
        assert np.allclose(a["J"], b["J"], atol=1e-7) and np.allclose(a["batch_shares"], b["shares"])
        assert max(map(abs, a["I"])) < 1e-5 and b["I"] == [0.0, 0.0, 0.0]
    assert ref[-1]["z"] != ref[0]["z"]


class FakeVLLM:
    """vLLM colocate at its boundary (GRPOTrainer.vllm_generation): an engine holding its own copy of the weights,
    replaced only by sync_weights(), sampling with HF generate. Records the weights it used, per global step."""
    def __init__(self, trainer):
        self.trainer, self.engine, self.events = trainer, copy.deepcopy(trainer.model).eval(), []

    @staticmethod
    def checksum(model) -> float:
        return float(sum(p.detach().double().sum() for p in model.parameters()))

    def sync_weights(self):
        self.engine.load_state_dict(self.trainer.model.state_dict())
        self.events.append(("sync", self.trainer.state.global_step, self.checksum(self.engine)))

    def generate(self, prompts, images, num_generations, profiler=None):
        t = self.trainer
        self.events.append(("generate", t.state.global_step, self.checksum(self.engine), self.checksum(t.model)))
        width = max(map(len, prompts))
        ids = torch.tensor([[0] * (width - len(p)) + list(p) for p in prompts])
        with torch.no_grad():
            out = self.engine.generate(input_ids=ids, attention_mask=(ids != 0).long(), do_sample=True, max_new_tokens=t.max_completion_length,
                                       pad_token_id=0, eos_token_id=1)[:, width:].tolist()
        completions = [c[:c.index(1) + 1] if 1 in c else c for c in out]
        return prompts, completions, [[[-1.0] for _ in c] for c in completions], None


def test_vllm_rounds_reuse_the_weights_synced_at_step_start(tiny_dir, tmp_path):
    """use_vllm=True, colocate, vLLM mocked at its boundary: each generation step syncs the weights once, before its
    first round; every round of the step (os_factor 1 and hard tasks force several) generates with those weights,
    which equal the policy's; the next step syncs the updated ones."""
    rates = {"toy_copy": 0.3, "toy_next": 0.2, "toy_sum": 0.1}
    tr = make_trainer(tiny_dir, tmp_path, reward=Scripted(rates), os_factor=1.0, max_steps=6)
    tr.use_vllm, tr.vllm_mode, tr._last_loaded_step = True, "colocate", -1
    tr.vllm_generation = fake = FakeVLLM(tr)
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
    assert all("old_per_token_logps" in mb for mbs, _, _ in tr.trained for mb in mbs)  # IS correction's pi_old kept


def test_resume_continues_exactly(tiny_dir, tmp_path):
    """A run saved after MT-GRPO step 1 (optimizer step 2) and resumed gives the uninterrupted run's steps 2-3:
    z, targets, rho, J, I, xi and the final weights, bit for bit."""
    full = make_trainer(tiny_dir, tmp_path / "full", save_strategy="steps", save_steps=2)
    full.train()
    resumed = make_trainer(tiny_dir, tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    assert len(full.mt_history) == 3 and len(resumed.mt_history) == 2
    keys = ("step", "z", "targets", "shares", "rho", "J", "I", "xi", "generated", "accepted")
    for a, b in zip(full.mt_history[1:], resumed.mt_history):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    assert resumed.mt.xi_opt.state_dict()["state"][0]["step"] == full.mt.xi_opt.state_dict()["state"][0]["step"]


def test_steps_inside_a_generation_batch_are_refused(tiny_dir, tmp_path):
    """A checkpoint or the run's end inside a generation batch (2 optimizer steps here) could not resume exactly."""
    for over in (dict(save_strategy="steps", save_steps=1), dict(max_steps=3)):
        with pytest.raises(ValueError, match="must be a multiple of 2"):
            make_trainer(tiny_dir, tmp_path, **over)
    tr = make_trainer(tiny_dir, tmp_path, max_steps=2)
    tr._pending = {}  # as if a save came mid-batch
    with pytest.raises(ValueError, match="inside a generation batch"):
        tr._save_checkpoint(tr.model, None)


def test_two_processes(tmp_path):
    """torch.distributed.run, 2 processes, gloo on CPU: every rank logs the same z, targets, shares, rho, J, I, xi and
    per-round accepted counts (the filter's decisions come from the gathered rewards); realized shares equal the
    targets; the ranks' per-task group counts add up to the targets; each rank trains whole groups, as many as the
    other, in every minibatch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__, str(tmp_path)]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    logs = [json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1)]
    assert logs[0]["history"] == logs[1]["history"] and len(logs[0]["history"]) == 3
    for t, rec in enumerate(logs[0]["history"]):
        assert rec["groups_used"] == 8 and np.allclose(np.array(rec["shares"]) * 8, rec["targets"])
        assert np.add(logs[0]["task_counts"][t], logs[1]["task_counts"][t]).tolist() == rec["targets"]
        assert logs[0]["rows"][t] == logs[1]["rows"][t] == [8, 8]
    assert logs[0]["history"][-1]["z"] != logs[0]["history"][0]["z"]
    assert sum(rec["groups_moved"] for rec in logs[0]["history"]) > 0  # the balancing moved groups between ranks
    per_round = [sum(g) for rec in logs[0]["history"] for g in rec["generated"]]  # prompts per round, both ranks
    assert logs[0]["prompts_here"] == logs[1]["prompts_here"] == [-(-p // 2) for p in per_round]  # half each, padded


def _worker(out: str) -> None:
    """One rank of test_two_processes: B = 8 prompts per step over 2 ranks, 2 minibatches of 2 groups per rank."""
    import models
    rank = int(os.environ["RANK"])
    model_dir = models.build_tiny_model(os.path.join(out, f"tiny{rank}"), seed=0)
    tr = make_trainer(model_dir, os.path.join(out, "run"), per_device_train_batch_size=2 * N)
    seen = []
    inner = tr._generate_and_score_completions
    def spy(inputs):  # how many prompts this rank generated in each round
        seen.append(len(inputs) // N)
        return inner(inputs)
    tr._generate_and_score_completions = spy
    tr.train()
    for mbs, tasks_, _ in tr.trained:
        for mb, t in zip(mbs, tasks_):
            check_whole_groups(mb, t, tr.processing_class)
    log = {"history": [{k: v for k, v in h.items() if not k.startswith("seconds")} for h in tr.mt_history],
           "task_counts": [np.bincount(torch.cat(t)[::N][torch.cat(t)[::N] >= 0].numpy(), minlength=3).tolist() for _, t, _ in tr.trained],
           "rows": [[len(mb["advantages"]) for mb in mbs] for mbs, _, _ in tr.trained], "prompts_here": seen}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(log, f)
    # Leave together and tear gloo down before the interpreter does: a rank that exits with its process group still
    # alive can abort in gloo's destructor ("terminate called without an active exception"), seen once in CI.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1])
