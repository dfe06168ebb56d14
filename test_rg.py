"""reasoning-gym tasks (rg_tasks.py): the paper's configs per level, the prompt frame, seeds, sandboxed
scoring of any other dataset, errors, and a 9-task run of the trainer on the tiny model. Needs
requirements-rg.txt."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

pytest.importorskip("reasoning_gym", reason="pip install -r requirements-rg.txt")

import rg_tasks  # noqa: E402
import tasks  # noqa: E402
import verify  # noqa: E402


def boxed(answer: str) -> str:
    return f"Let me think.\nThe answer is \\boxed{{{answer}}}."


@pytest.mark.parametrize("level,n", [("easy", 3), ("medium", 4), ("hard", 5), ("very_hard", 6)])
def test_countdown_levels_have_the_papers_numbers_and_targets(level, n):
    train, test = tasks.load_task(f"rg:countdown:{level}", n_train=20, n_test=5, seed=0)
    for ex in train + test:
        assert ex.verifier == "countdown" and len(ex.info["numbers"]) == n
        assert all(1 <= x <= 100 for x in ex.info["numbers"]) and 1 <= ex.info["target"] <= 1000
        stated = re.split(r"\n\s*\n", ex.question)[0]   # its first paragraph states numbers and target
        stated_numbers = sorted(map(int, re.findall(r"\d+", stated)))
        assert stated_numbers == sorted(ex.info["numbers"] + [ex.info["target"]])
        assert verify.reward(boxed(ex.answer), ex) == 1.0


def test_zebra_and_arc_levels_have_the_papers_sizes():
    for level, n in (("easy", 3), ("medium", 4), ("hard", 5)):   # very_hard (6x6): 2 s an item, config only
        ex = tasks.load_task(f"rg:zebra_puzzles:{level}", n_train=1, n_test=1, seed=0)[0][0]
        assert ex.verifier == "name" and f"There are {n} houses" in ex.question
        assert len(re.findall(r"^ - ", ex.question, flags=re.M)) == n   # one line per characteristic
    six = dict(num_people=6, num_characteristics=6)
    assert rg_tasks.parse_spec("rg:zebra_puzzles:very_hard") == ("zebra_puzzles", six, "name")
    for level, n in (("easy", 10), ("medium", 20), ("hard", 30), ("very_hard", 40)):
        train, test = tasks.load_task(f"rg:arc_1d:{level}", n_train=5, n_test=2, seed=0)
        for ex in train + test:
            assert ex.verifier == "grid" and len(ex.answer.split()) == n
            assert ex.question.count("Example ") == 3   # num_train 3
            assert verify.reward(boxed(ex.answer), ex) == 1.0


def test_prompt_is_the_papers_frame_and_rewards_follow_the_convention():
    for spec in ("rg:countdown:medium", "rg:zebra_puzzles:easy", "rg:arc_1d:medium"):
        ex = tasks.load_task(spec, n_train=1, n_test=1, seed=0)[1][0]
        prompt = tasks.make_prompt(ex, "r1")
        assert prompt == tasks.R1_TEMPLATE.format(question=ex.question)
        assert ex.question.endswith(rg_tasks.BOX_LINE)
        assert ex.task == spec
        assert verify.reward(boxed(ex.answer), ex) == 1.0
        assert verify.reward(boxed("7"), ex) == 0.1 and verify.reward(ex.answer, ex) == 0.0


def test_same_seed_same_items_and_train_test_disjoint():
    a = tasks.load_task("rg:countdown:easy", n_train=30, n_test=10, seed=3)
    assert a == tasks.load_task("rg:countdown:easy", n_train=30, n_test=10, seed=3)
    assert a[1] == tasks.load_task("rg:countdown:easy", n_train=5, n_test=10, seed=3)[1]   # test stays
    assert not {e.question for e in a[0]} & {e.question for e in a[1]}
    other = tasks.load_task("rg:countdown:easy", n_train=30, n_test=10, seed=4)
    assert not {e.question for e in a[0] + a[1]} & {e.question for e in other[0] + other[1]}


def test_other_datasets_are_scored_by_their_own_score_answer():
    train, test = tasks.load_task("rg:basic_arithmetic", n_train=3, n_test=2, seed=0)
    ex = test[0]
    assert ex.verifier == "rg" and ex.info["dataset"] == "basic_arithmetic" and ex.info["config"] == {}
    completions = [boxed(e.answer) for e in train + test] + [boxed("no"), "no box"]
    rewards = verify.rewards(completions, train + test + [ex, ex])
    assert rewards == [1.0] * 5 + [0.1, 0.0]


def test_hostile_answers_are_cut_off_and_never_run_here(tmp_path, monkeypatch):
    """puzzle24's score_answer calls sympy's parse_expr (eval) on the answer: a power tower never returns, and
    code runs. Both go to the worker: the tower scores 0.0 at the limit, the code runs in another process."""
    monkeypatch.setattr(verify, "SANDBOX_TIMEOUT", 1.0)
    ex = tasks.load_task("rg:puzzle24", n_train=1, n_test=1, seed=0)[1][0]
    assert verify.reward(boxed(ex.answer), ex) == 1.0   # warms the worker (imports) outside the timed call
    t0 = time.perf_counter()
    assert verify.reward(boxed("9**9**9"), ex) == 0.0
    elapsed = time.perf_counter() - t0
    assert 0.9 <= elapsed < 2.0, elapsed
    marker = tmp_path / "pid"
    code = f"__import__('os').system('echo $PPID > {marker}')"   # the shell's parent: the process that ran it
    assert verify.reward(boxed(code), ex) in (0.0, 0.1)
    assert int(marker.read_text()) != os.getpid()       # it ran, in the worker, not here
    assert verify.reward(boxed(ex.answer), ex) == 1.0   # the worker was replaced and works


def test_bad_specs_get_one_line_with_the_fix():
    with pytest.raises(ValueError, match=r"no reasoning-gym dataset 'countdwn'.*matches: rg:countdown") as e:
        tasks.check_task_list("rg:countdwn:medium,toy_copy")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="level must be one of easy, medium, hard, very_hard"):
        tasks.check_task_list("rg:countdown:extreme")
    with pytest.raises(ValueError, match="levels exist for countdown, zebra_puzzles, arc_1d; give rg:basic"):
        tasks.load_task("rg:basic_arithmetic:hard")
    tasks.check_task_list("rg:countdown:medium,rg:zebra_puzzles:medium,rg:arc_1d:medium,rg:basic_arithmetic")


NINE = ",".join(f"rg:{d}:{level}" for d in ("countdown", "zebra_puzzles", "arc_1d")
                for level in ("easy", "medium", "hard"))


def test_nine_rg_tasks_run_a_few_steps_on_the_tiny_model(tmp_path):
    """Character-level tiny model, so prompts are 400-2500 tokens: a raised --max-prompt-len, small splits,
    one sampler round."""
    args = ["--model", "tiny", "--tasks", NINE, "--steps", "2", "--batch-size", "4", "--minibatch-size", "4",
            "--num-rollouts", "2", "--eval-every", "0", "--eval-prompts", "2", "--eval-k", "1",
            "--n-train", "4", "--max-prompt-len", "4096", "--max-response-len", "4", "--os-factor", "1",
            "--max-resample-rounds", "0", "--out-dir", str(tmp_path / "out")]
    run = subprocess.run([sys.executable, "mtgrpo.py", *args], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    records = [json.loads(line) for line in open(tmp_path / "out" / "log.jsonl")]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [1, 2] and all(len(r["z"]) == 9 for r in train)
    assert [r["step"] for r in evals] == [0, 2] and list(evals[-1]["acc"]) == NINE.split(",")
