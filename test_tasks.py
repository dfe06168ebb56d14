"""Tests for tasks.py (generators, splits, solvers, JSONL, prompts) and verify.py (extraction, rewards,
safety on adversarial completions). CPU only, a few seconds in all."""

import hashlib
import itertools
import json
import os
import subprocess
import sys
import time

import pytest

import tasks
import verify
from example import Example


def boxed(answer: str) -> str:
    return f"Let me think.\nThe answer is \\boxed{{{answer}}}."


REAL_TASKS = [t for t in tasks.TASK_NAMES if not t.startswith("toy_")]


# -----------------------------------------------------------------------------
# Generators: gold answers, determinism, splits

@pytest.mark.parametrize("name", REAL_TASKS)
def test_gold_scores_one_wrong_box_point_one_no_box_zero(name):
    train, test = tasks.load_task(name, n_train=20, n_test=10, seed=3)
    wrong = {"countdown": "1 + 1", "name": "Nobody", "grid": "0"}
    for ex in train + test:
        assert ex.task == name
        assert verify.reward(boxed(ex.answer), ex) == 1.0, ex
        assert verify.reward(boxed(wrong[ex.verifier]), ex) == 0.1
        assert verify.reward(f"The answer is {ex.answer}.", ex) == 0.0   # right answer, no box: no credit
        assert verify.is_correct(boxed(ex.answer), ex) and not verify.is_correct(boxed(wrong[ex.verifier]), ex)


def test_toy_tasks_score_their_answer_and_alphabet():
    for name in tasks.TOY_TASKS:
        train, test = tasks.load_task(name, n_train=50, n_test=10)
        for ex in train + test:
            assert verify.reward(" " + ex.answer + " more", ex) == 1.0
            other = next(c for c in ex.info["alphabet"] if c != ex.answer)
            assert verify.reward(other, ex) == 0.1
            assert verify.reward("?", ex) == 0.0 and verify.reward("", ex) == 0.0
    ex = tasks.load_task("toy_next", n_train=1, n_test=1)[1][0]   # hand check of one instance's rule
    last = ex.question[-1]
    assert ex.answer == "abcdef"[("abcdef".index(last) + 1) % 6]
    ex = tasks.load_task("toy_first", n_train=1, n_test=1)[1][0]
    assert ex.question.startswith("first: ") and ex.answer == ex.question[len("first: ")]
    ex = tasks.load_task("toy_sum", n_train=1, n_test=1)[1][0]
    a, b = ex.question.split()[-1].split("+")
    assert ex.answer == str((int(a) + int(b)) % 10)


# Pinned: sha256 of the JSON of (test + train) for n_train=5, n_test=3, seed=0. A change here means the
# generated data changed: every saved result on it is no longer comparable. Change only on purpose.
PINNED = {
    "countdown_easy": "210400d3936a81cd",
    "countdown_medium": "50c77e7c8ea57cfe",
    "countdown_hard": "29186299c32d1ff0",
    "countdown_very_hard": "8067bc31894779af",
    "zebra_easy": "31734f4b13837db0",
    "zebra_medium": "0bc874c7782d92f2",
    "zebra_hard": "759ebda4c31aff6c",
    "zebra_very_hard": "4d90d810d65afdfe",
    "arc1d_easy": "a9a3352b571fc9dc",
    "arc1d_medium": "5a531048b1f6e87a",
    "arc1d_hard": "d2ccc612ace4a855",
    "arc1d_very_hard": "991f33292915b3c5",
    "toy_copy": "4435c3ad676c40c9",
    "toy_next": "5cc906f32c4e9f1c",
    "toy_first": "3557057d1837a2bc",
    "toy_sum": "2e640db200f53c02",
}


def _digest(examples: list[Example]) -> str:
    blob = json.dumps([[e.task, e.question, e.answer, e.verifier, e.info] for e in examples], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", tasks.TASK_NAMES)
def test_generation_is_pinned_and_deterministic(name):
    train, test = tasks.load_task(name, n_train=5, n_test=3, seed=0)
    assert _digest(test + train) == PINNED[name]
    other_seed = tasks.load_task(name, n_train=5, n_test=3, seed=1)
    assert _digest(other_seed[1] + other_seed[0]) != PINNED[name]


@pytest.mark.parametrize("name", ["countdown_medium", "zebra_medium", "arc1d_medium", "toy_sum"])
def test_splits_are_disjoint_and_test_does_not_depend_on_n_train(name):
    train, test = tasks.load_task(name, n_train=300, n_test=100, seed=0)
    assert len(train) == 300 and len(test) == 100
    questions = [e.question for e in train + test]
    assert len(set(questions)) == len(questions)
    assert tasks.load_task(name, n_train=7, n_test=100, seed=0)[1] == test


def test_difficulty_levels_have_the_sizes_of_the_spec():
    for level, k in tasks.COUNTDOWN_NUMBERS.items():
        for ex in tasks.load_task(f"countdown_{level}", n_train=10, n_test=1)[0]:
            assert len(ex.info["numbers"]) == k and all(1 <= x <= 100 for x in ex.info["numbers"])
            assert 1 <= ex.info["target"] <= 1000
    for level, n in tasks.ZEBRA_SIZE.items():
        ex = tasks.load_task(f"zebra_{level}", n_train=1, n_test=1)[0][0]
        assert len(ex.info["attributes"]) == n and all(len(v) == n for v in ex.info["attributes"].values())
    for level, n in tasks.ARC_LENGTH.items():
        ex = tasks.load_task(f"arc1d_{level}", n_train=1, n_test=1)[0][0]
        assert len(ex.answer.split()) == n
        assert ex.question.count("Input:") == 4 and ex.question.count("Output:") == 3


def test_arc_uses_many_rules():
    train = tasks.load_task("arc1d_medium", n_train=600, n_test=1)[0]
    rules = {e.info["rule"] for e in train}
    assert len(tasks.ARC_RULES) >= 12 and rules == {r.__name__[len("_rule_"):] for r in tasks.ARC_RULES}


def _arc_rows(ex: Example) -> tuple[list[tuple[list[int], list[int]]], list[int], list[int]]:
    """(examples, test input, answer) of an ARC-1D instance, read back from its text."""
    lines = ex.question.splitlines()
    ins = [[int(x) for x in line.split()[1:]] for line in lines if line.startswith("Input:")]
    outs = [[int(x) for x in line.split()[1:]] for line in lines if line.startswith("Output:")]
    return list(zip(ins[:3], outs)), ins[3], [int(x) for x in ex.answer.split()]


@pytest.mark.parametrize("level", ["easy", "medium"])
def test_arc_train_repeats_no_test_pair(level):
    """The same test input and answer under other examples is the same question to answer; at seed 0,
    without the filter, 30 of 200 easy and 10 of 200 medium test items had their pair in train."""
    train, test = tasks.load_task(f"arc1d_{level}", n_train=1000, n_test=200, seed=0)
    assert len(train) == 1000 and len(test) == 200

    def pair(ex):
        _, test_input, answer = _arc_rows(ex)
        return tuple(test_input), tuple(answer)
    shared = {pair(e) for e in train} & {pair(e) for e in test}
    assert not shared, f"{len(shared)} test pairs occur in train"


@pytest.mark.parametrize("level", tasks.LEVELS)
def test_arc_instances_have_one_answer_and_fit_their_rule(level):
    """No second rule fits the examples with another test output (unfiltered, instances 137 and 143 of
    easy and 55 of medium, seed 0, were keep_largest rows that denoise also explains); and each
    instance fits its own rule's reading, so the readings describe what the generators make."""
    name = f"arc1d_{level}"
    for i in range(300):
        ex = tasks.make_example(name, tasks._instance_rng(name, 0, i))
        examples, test_input, answer = _arc_rows(ex)
        assert tasks.arc1d_ambiguity(examples, test_input, answer) is None, (i, ex.info["rule"])
        assert ex.info["rule"] in {rule for rule, _ in tasks.arc1d_readings_fitting(examples + [(test_input, answer)])}, i


def test_arc_ambiguity_check_finds_a_second_rule():
    """keep_largest examples whose smaller block is always one cell: denoise (drop cells with no nonzero
    neighbor) explains them too, and the two disagree once the smaller test block has two cells."""
    examples = [([3, 0, 0, 0, 0, 0, 5, 5, 5, 0], [0, 0, 0, 0, 0, 0, 5, 5, 5, 0]),
                ([0, 0, 7, 7, 0, 0, 0, 1, 0, 0], [0, 0, 7, 7, 0, 0, 0, 0, 0, 0]),
                ([2, 2, 2, 2, 0, 0, 0, 0, 6, 0], [2, 2, 2, 2, 0, 0, 0, 0, 0, 0])]
    fitting = {rule for rule, _ in tasks.arc1d_readings_fitting(examples)}
    assert {"keep_largest", "denoise"} <= fitting
    test_input = [0, 8, 8, 0, 0, 0, 3, 3, 3, 0]
    assert tasks.arc1d_ambiguity(examples, test_input, [0, 0, 0, 0, 0, 0, 3, 3, 3, 0]) == "denoise"
    assert tasks.arc1d_ambiguity(examples, test_input, test_input) == "keep_largest"   # denoise's answer
    single = [0, 8, 0, 0, 0, 0, 3, 3, 3, 0]   # a one-cell smaller block: both rules agree, one answer
    assert tasks.arc1d_ambiguity(examples, single, [0, 0, 0, 0, 0, 0, 3, 3, 3, 0]) is None
    recolor = [([0, 4, 4, 0, 4], [0, 6, 6, 0, 6])] * 3   # colors come from the examples, not a fixed list
    assert {rule for rule, _ in tasks.arc1d_readings_fitting(recolor)} >= {"recolor", "swap_colors"}
    assert tasks.arc1d_ambiguity(recolor, [4, 0, 6, 0, 0], [6, 0, 6, 0, 0]) == "swap_colors"


# -----------------------------------------------------------------------------
# Solvers

def test_countdown_solver_confirms_reachability_and_reports_unreachable():
    for level in ("easy", "medium", "hard"):
        for ex in tasks.load_task(f"countdown_{level}", n_train=15, n_test=1)[0]:
            expr = tasks.solve_countdown(ex.info["numbers"], ex.info["target"])
            assert expr is not None and verify.countdown_correct(expr, ex.info["numbers"], ex.info["target"])
    assert tasks.solve_countdown([1, 1, 1], 1000) is None    # largest reachable is 3 (1 + 1 + 1)
    for numbers, target in (([1, 1, 1], 3), ([2, 3, 7], 42), ([6, 4, 4], 6)):   # 1+1+1, 2*3*7, 6/4*4
        assert verify.countdown_correct(tasks.solve_countdown(numbers, target), numbers, target)


def _brute_force_zebra(ex: Example) -> list[dict]:
    """Every assignment of the attributes' values to houses, checked against the clues (no propagation)."""
    attrs = ex.info["attributes"]
    n = len(next(iter(attrs.values())))
    sols = []
    for perms in itertools.product(*(itertools.permutations(range(n)) for _ in attrs)):
        house = {(a, v): p for (a, values), perm in zip(attrs.items(), perms) for v, p in zip(values, perm)}
        ok = True
        for kind, x, y in ex.info["clues"]:
            px = house[tuple(x)]
            ok &= {"in_house": lambda: px == y, "same": lambda: px == house[tuple(y)],
                   "left_of": lambda: px + 1 == house[tuple(y)],
                   "next_to": lambda: abs(px - house[tuple(y)]) == 1}[kind]()
        if ok:
            sols.append(house)
    return sols


def test_zebra_solution_is_unique_by_brute_force_and_answers_house_one():
    for ex in tasks.load_task("zebra_easy", n_train=10, n_test=1)[0]:
        sols = _brute_force_zebra(ex)   # (3!)^3 = 216 assignments
        assert len(sols) == 1
        assert next(v for (a, v), p in sols[0].items() if a == "name" and p == 0) == ex.answer


def test_zebra_generation_does_not_depend_on_asserts():
    """python -O strips asserts; the generator must give the same puzzles with and without them."""
    code = "import tasks; print([e.question for e in tasks.load_task('zebra_medium', n_train=3, n_test=1)[0]])"
    here = os.path.dirname(os.path.abspath(__file__))
    p = subprocess.run([sys.executable, "-O", "-c", code], cwd=here, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str([e.question for e in tasks.load_task("zebra_medium", n_train=3, n_test=1)[0]])


def test_zebra_solver_counts_solutions():
    for ex in tasks.load_task("zebra_hard", n_train=5, n_test=1)[0]:
        clues = [(k, tuple(a), b if k == "in_house" else tuple(b)) for k, a, b in ex.info["clues"]]
        attrs = ex.info["attributes"]
        n = len(next(iter(attrs.values())))   # houses = values per attribute
        (sol,) = tasks.zebra_solutions(clues, attrs, n)
        assert next(v for (a, v), p in sol.items() if a == "name" and p == 0) == ex.answer
        assert len(tasks.zebra_solutions(clues[:-3], attrs, n)) >= 1   # fewer clues never zero
    # Hand case: 2 people, 1 attribute, no clues -> 2 solutions; one clue pins it.
    attrs = {"name": ["Alice", "Bob"]}
    assert len(tasks.zebra_solutions([], attrs, 2)) == 2
    assert tasks.zebra_solutions([("left_of", ("name", "Bob"), ("name", "Alice"))], attrs, 2) == [
        {("name", "Alice"): 1, ("name", "Bob"): 0}]


# -----------------------------------------------------------------------------
# verify.py

def test_extract_boxed_rules():
    assert verify.extract_boxed("a \\boxed{1} b \\boxed{ {2} }") == "{2}"
    assert verify.extract_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert verify.extract_boxed("no box") is None
    assert verify.extract_boxed("\\boxed{5} then \\boxed{6") is None   # the last box never closes
    assert verify.extract_boxed("\\boxed{5}\nso that is it") == "5"
    assert verify.extract_boxed("\\boxed{5}\nso that is it", rule="last_line") is None
    assert verify.extract_boxed("text\n\\boxed{5}  \n\n", rule="last_line") == "5"
    with pytest.raises(ValueError, match="box rule"):
        verify.extract_boxed("x", rule="first")


def test_parse_countdown_hand_values():
    from fractions import Fraction
    assert verify.parse_countdown("(1 + 2) * 3") == (9, [1, 2, 3])
    assert verify.parse_countdown("-3 + 5") == (2, [3, 5])
    assert verify.parse_countdown("6 / 4")[0] == Fraction(3, 2)
    assert verify.parse_countdown("2 - (3 - 4)")[0] == 3       # right operand grouped, left-assoc minus
    assert verify.parse_countdown("8 / 2 / 2")[0] == 2
    for bad in ("1 / 0", "2 ** 3", "1e3", "2.0", "(1 + 2", "1 2", "", "x", "1 +"):
        with pytest.raises(ValueError):
            verify.parse_countdown(bad)


def test_countdown_accepts_any_valid_expression_and_rejects_misuse():
    ex = Example("countdown_easy", "q", "3 * 5 + 7", "countdown", {"numbers": [3, 5, 7], "target": 22})
    for good in ("3 * 5 + 7", "7 + 5 * 3", "(7 + (3 * 5))", "5*3+7"):
        assert verify.reward(boxed(good), ex) == 1.0, good
    for wrong in ("3 * 5 + 7 + 0", "3 * 5 * 7", "22", "3 * 5 + 7 = 22", "15 + 7", "3 * 5 + 7 - 7 + 7"):
        assert verify.reward(boxed(wrong), ex) == 0.1, wrong
    ex2 = Example("countdown_easy", "q", "(6 / 4) * 4", "countdown", {"numbers": [6, 4, 4], "target": 6})
    assert verify.reward(boxed("6 / 4 * 4"), ex2) == 1.0                  # exact fractions in between
    assert verify.reward(boxed("6 / (4 - 4)"), ex2) == 0.1                # division by zero: wrong


def test_countdown_accepts_unary_plus_as_it_accepts_unary_minus():
    # The oracle's failing forms (363 reasoning-gym instances, 123 rejected): 87 - 40 - 31 = 16 by hand.
    ex = Example("countdown_easy", "q", "87 - 40 - 31", "countdown", {"numbers": [87, 40, 31], "target": 16})
    for good in ("+87-40-31", "87 - +40 - 31", "+(87-40)-31", "87-+40-+31", "-(-87)+ -40 - 31",
                 "+(-(-87)) + -40 + -31", "--87-40-31", "++87-40-31", "+-(-87)-40-31", "87 ++ -40 -+ 31"):
        assert verify.reward(boxed(good), ex) == 1.0, good
    for wrong in ("+87-40+31",          # 78
                  "-+87-40-31",         # -158
                  "87 + +40 - 31",      # 96
                  "+87 - +40",          # 47, and 31 unused
                  "+87-40-31+0",        # 16, but 0 is not a given number
                  "+87-40-31-40+40",    # 16, but 40 used twice
                  "+87-40-+",           # dangling sign
                  "+ +"):
        assert verify.reward(boxed(wrong), ex) == 0.1, wrong
    assert verify.parse_countdown("+3") == (3, [3])
    assert verify.parse_countdown("+-3")[0] == verify.parse_countdown("-+3")[0] == -3
    assert verify.parse_countdown("2 * +3")[0] == 6 and verify.parse_countdown("2 - +3")[0] == -1
    assert verify.parse_countdown("1 ++ 2")[0] == verify.parse_countdown("1 -- 2")[0] == 3


@pytest.mark.parametrize("sign", ["+", "-"])
def test_countdown_sign_runs_share_the_nesting_cap(sign):
    # MAX_DEPTH signs in a row parse, one more is rejected, as with parentheses.
    assert verify.parse_countdown(sign * verify.MAX_DEPTH + "3")[0] == 3    # an even number of signs
    assert verify.parse_countdown("(" * verify.MAX_DEPTH + "3" + ")" * verify.MAX_DEPTH)[0] == 3
    for bad in (sign * (verify.MAX_DEPTH + 1) + "3", "(" * (verify.MAX_DEPTH + 1) + "3" + ")" * (verify.MAX_DEPTH + 1)):
        with pytest.raises(ValueError):
            verify.parse_countdown(bad)
    for n in (200, 1_000_000):             # under and over MAX_EXPR_CHARS: a clean False, fast
        t = time.perf_counter()
        assert verify.countdown_correct(sign * n + "16", [16], 16) is False
        with pytest.raises(ValueError):
            verify.parse_countdown(sign * n + "16")
        assert time.perf_counter() - t < 0.05, (sign, n)


COUNTDOWN = Example("countdown_easy", "q", "3 * 5 + 7", "countdown", {"numbers": [3, 5, 7], "target": 22})
ZEBRA = Example("zebra_easy", "q", "Alice", "name")
ARC = Example("arc1d_easy", "q", "0 0 3 3 0", "grid")

ADVERSARIAL = [   # (completion, example, expected reward)
    (boxed("9" * 1_000_000), COUNTDOWN, 0.0),                    # a box too long to be an answer
    (boxed("9" * 200), COUNTDOWN, 0.1),                          # a huge integer: not parsed, wrong
    (boxed("9**9**9"), COUNTDOWN, 0.1),
    (boxed("3**5**7**22"), COUNTDOWN, 0.1),                      # a power tower of the given numbers
    (boxed("(" * 100_000 + "3" + ")" * 100_000), COUNTDOWN, 0.0),  # over the box cap
    (boxed("(" * 60 + "3*5+7" + ")" * 60), COUNTDOWN, 0.1),      # nesting over MAX_DEPTH: wrong, no crash
    (boxed("-" * 200 + "22"), COUNTDOWN, 0.1),
    (boxed("+" * 200 + "22"), COUNTDOWN, 0.1),                   # unary plus nests no deeper than minus
    (boxed("+" * 1_000_000 + "22"), COUNTDOWN, 0.0),             # over the box cap
    (boxed("+" * 1_000_000 + "3*5+7"), COUNTDOWN, 0.0),
    (boxed("+" * 20 + "3*5+7"), COUNTDOWN, 1.0),                 # nested plus under MAX_DEPTH, like "--"
    (boxed("+3*+5-+-7"), COUNTDOWN, 1.0),                        # 3 * 5 - (-7) = 22
    (boxed("__import__('os').system('echo hi')"), COUNTDOWN, 0.1),
    (boxed("3*5+7+x-x"), COUNTDOWN, 0.1),                        # symbols are not numbers
    (boxed("3*5+7+0e0"), COUNTDOWN, 0.1),
    (boxed("3.0*5+7"), COUNTDOWN, 0.1),                          # decimals
    (boxed("3*5+7\x00"), COUNTDOWN, 0.1),                        # NUL byte
    (boxed("３*５+７"), COUNTDOWN, 0.1),                          # full-width unicode digits
    (boxed("٣*5+7"), COUNTDOWN, 0.1),                            # Arabic-Indic digit
    ("\\boxed{" * 150_000, COUNTDOWN, 0.0),                      # ~1 MB of unclosed boxes
    ("\\boxed{" * 150_000 + "3*5+7}", COUNTDOWN, 1.0),           # ... closed by an honest answer
    ("}" * 1_000_000 + boxed("Alice"), ZEBRA, 1.0),
    ("x" * 1_000_000, ZEBRA, 0.0),
    (boxed(" ALICE "), ZEBRA, 1.0),                              # stripped, case-insensitive
    (boxed("Alice Bob"), ZEBRA, 0.1),
    (boxed("0 0 3 3 0") + "\x00" * 1_000_000, ARC, 1.0),
    (boxed("0 0 3 3 0 0"), ARC, 0.1),                            # no partial credit
    (boxed("0 0 ３ 3 0"), ARC, 0.1),
    ("\n" * 1_000_000, ARC, 0.0),
]


@pytest.mark.parametrize("i", range(len(ADVERSARIAL)))
def test_adversarial_completions_are_scored_fast_and_correctly(i):
    completion, ex, expected = ADVERSARIAL[i]
    for rule in ("last", "last_line"):
        t = time.perf_counter()
        r = verify.reward(completion, ex, box_rule=rule)
        elapsed = time.perf_counter() - t
        assert elapsed < 0.05, (i, rule, elapsed)
        assert r == expected, (i, rule, r)   # every answer above is boxed on the last line


@pytest.mark.parametrize("completion,ex,last,last_line", [
    (boxed("3*5+7") + "\nSo that is it.", COUNTDOWN, 1.0, 0.0),       # boxed, then more text
    (boxed("3*5+7") + "\n" + "x" * 1_000_000, COUNTDOWN, 1.0, 0.0),
    (boxed("Alice") + "\n" + boxed("Bob"), ZEBRA, 0.1, 0.1),          # the last box counts, not any box
    ("\\boxed{\\boxed{Alice} Bob}", ZEBRA, 1.0, 1.0),                  # nested: the last opening, the inner box
    (boxed("3*5+7") + "\n\n  \n", COUNTDOWN, 1.0, 1.0),               # trailing blank lines are not a last line
])
def test_reward_passes_the_box_rule_through(completion, ex, last, last_line):
    t = time.perf_counter()
    assert verify.reward(completion, ex, box_rule="last") == last
    assert verify.reward(completion, ex, box_rule="last_line") == last_line
    assert time.perf_counter() - t < 0.1


def test_unknown_verifier_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown verifier 'nope'"):
        verify.reward("x", Example("t", "q", "a", "nope"))


# -----------------------------------------------------------------------------
# Loading, JSONL, prompts

def test_load_task_rejects_bad_names_and_sizes():
    with pytest.raises(ValueError, match="unknown task 'chess'.*countdown_easy"):
        tasks.load_task("chess")
    with pytest.raises(ValueError, match="n_train"):
        tasks.load_task("toy_copy", n_train=0)
    with pytest.raises(ValueError, match="n_train"):
        tasks.load_task("toy_copy", n_train=10_001)
    with pytest.raises(ValueError, match="n_test"):
        tasks.load_task("toy_copy", n_test=0)
    with pytest.raises(ValueError, match="toy_sum has 3600 distinct questions"):   # 6 * 6 letter pairs x 10 x 10 digits
        tasks.load_task("toy_sum", n_train=3600, n_test=1)


def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_jsonl_task_loads_splits_and_scores(tmp_path):
    rows = [{"prompt": f"What is {i}+1? Box it.", "answer": str(i + 1), "verifier": "exact"} for i in range(30)]
    rows.append({"prompt": "Make 10 from 2, 5.", "answer": "2*5", "verifier": "countdown", "info": {"numbers": [2, 5], "target": 10}})
    path = _write_jsonl(tmp_path / "mine.jsonl", rows)
    train, test = tasks.load_task(path, n_train=100, n_test=10, seed=0)
    assert len(test) == 10 and len(train) == 21 and {e.task for e in train} == {"mine"}
    assert not {e.question for e in train} & {e.question for e in test}
    assert (train, test) == tasks.load_task(path, n_train=100, n_test=10, seed=0)
    for ex in train + test:
        assert verify.reward(boxed(ex.answer), ex) == 1.0
    split = [dict(r, split="test" if i < 3 else "train") for i, r in enumerate(rows)]
    train, test = tasks.load_task(_write_jsonl(tmp_path / "split.jsonl", split), n_train=5, n_test=3)
    assert [e.answer for e in test] == ["1", "2", "3"] and len(train) == 5


@pytest.mark.parametrize("rows,message", [
    ([{"prompt": "p", "answer": "a"}], "bad.jsonl:1: no column 'verifier'"),
    ([{"prompt": "p", "answer": "a", "verifier": "regex"}], "unknown verifier 'regex'"),
    ([{"prompt": "p", "answer": "a", "verifier": "countdown"}], "bad.jsonl:1: verifier \"countdown\" needs"),
    ([{"prompt": "p", "answer": "a", "verifier": "countdown", "info": {"numbers": ["3", "4"], "target": 7}}],
     "bad.jsonl:1: verifier \"countdown\" needs \"info\": {\"numbers\": \\[integers\\]"),
    ([{"prompt": "p", "answer": "a", "verifier": "countdown", "info": {"numbers": [3, 4], "target": 7.0}}],
     "target\": integer"),
    ([{"prompt": "p", "answer": "a", "verifier": "toy", "info": {"alphabet": 12}}], "verifier \"toy\" needs"),
    ([{"prompt": "p", "answer": "a", "verifier": "exact", "info": [1]}], "\"info\" must be a JSON object"),
    ([{"prompt": ["p"], "answer": "a", "verifier": "exact"}], "bad.jsonl:1: \"prompt\" must be a non-empty string"),
    ([{"prompt": "p", "answer": "a", "verifier": "exact", "split": "validation"}],
     "bad.jsonl:1: \"split\" must be \"train\" or \"test\", got 'validation'"),
    ([{"prompt": "p", "answer": "a", "verifier": "exact", "split": "test"}, {"prompt": "q", "answer": "a", "verifier": "exact"}],
     "bad.jsonl:2: give \"split\" on every line or on none"),
    ([{"prompt": "p", "answer": "a", "verifier": "exact"}, {"prompt": "q", "answer": "b", "verifier": "exact"},
      {"prompt": "p", "answer": "c", "verifier": "exact"}], "bad.jsonl:3: repeats the prompt of line 1"),
    ([{"prompt": f"p{i}", "answer": "a", "verifier": "exact"} for i in range(3)], "need 5 test"),
])
def test_jsonl_errors_name_the_problem(tmp_path, rows, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=message):
        tasks.load_task(path, n_train=10, n_test=5)


def test_jsonl_file_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        tasks.load_task(str(tmp_path / "missing.jsonl"))
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"prompt": "p", "answer": "a", "verifier": "exact"}\n{"prompt": "caf\xe9", "answer": "a", "verifier": "exact"}\n')
    with pytest.raises(ValueError, match="latin1.jsonl:2: not UTF-8"):
        tasks.load_task(str(latin1))


def test_prompt_styles():
    ex = tasks.load_task("countdown_easy", n_train=1, n_test=1)[1][0]
    r1 = tasks.make_prompt(ex, "r1")
    assert r1.startswith("A conversation between User and Assistant.") and f"User: {ex.question}\n" in r1
    assert r1.endswith("Assistant: Let me solve this step by step.") and "\\boxed{}" in r1
    assert tasks.make_prompt(ex, "plain") == ex.question
    with pytest.raises(ValueError, match="chat template"):
        tasks.make_prompt(ex, "chat", tokenizer=None)

    class Templated:   # the one method make_prompt needs from a HF tokenizer
        chat_template = "<user>{{ messages[0]['content'] }}</user><assistant>"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt
            return f"<user>{messages[0]['content']}</user><assistant>"

    assert tasks.make_prompt(ex, "chat", Templated()) == f"<user>{ex.question}</user><assistant>"
    toy = tasks.load_task("toy_copy", n_train=1, n_test=1)[1][0]
    assert tasks.make_prompt(toy, "r1") == toy.question    # toy tasks are always plain


# -----------------------------------------------------------------------------
# Optional: agreement with reasoning-gym's own scorer on its own instances

@pytest.mark.parametrize("rg_name", ["countdown", "zebra_puzzles", "arc_1d"])
def test_agrees_with_reasoning_gym_on_honest_answers(rg_name):
    rg = pytest.importorskip("reasoning_gym", reason="pip install -r requirements-rg.txt")
    data = rg.create_dataset(rg_name, size=30, seed=1)
    for entry in data:
        gold = entry["answer"]
        if rg_name == "countdown":
            meta = entry["metadata"]
            ex = Example("countdown", entry["question"], gold, "countdown", {"numbers": meta["numbers"], "target": meta["target"]})
        else:
            ex = Example(rg_name, entry["question"], gold, "name" if rg_name == "zebra_puzzles" else "grid")
        assert data.score_answer(gold, entry) == 1.0
        assert verify.reward(boxed(gold), ex) == 1.0, (rg_name, gold)


# -----------------------------------------------------------------------------
# bench/plot.py reads logs (drawing needs matplotlib; reading does not)


def test_plot_names_a_malformed_line_and_an_empty_log(tmp_path):
    """A cut-short record is named by file and line; an empty log, or one with only its config, says its run failed."""
    from bench import plot

    log = tmp_path / "log.jsonl"
    log.write_text("")
    with pytest.raises(ValueError, match="is empty: its run failed"):
        plot.load_run(str(tmp_path))
    config = json.dumps({"kind": "config", "method": "mtgrpo", "tasks": "toy_copy", "seed": 0}) + "\n"
    log.write_text(config)
    with pytest.raises(ValueError, match="holds no training step: its run failed or was stopped"):
        plot.load_run(str(tmp_path))
    log.write_text(config + json.dumps({"kind": "train", "step": 1}) + "\n" + '{"kind": "train", "st\n')
    with pytest.raises(ValueError, match=r"log.jsonl, line 3: malformed record"):
        plot.load_run(str(tmp_path))
