"""
Tasks for mtgrpo: the paper's three families (arXiv 2602.05547 Sec. 6, App. E) at four
difficulties each, toy tasks a tiny model learns on CPU, and bring-your-own tasks from JSONL.

    countdown_{easy,medium,hard,very_hard}   3/4/5/6 numbers in 1..100, reach an integer target in 1..1000
    zebra_{easy,medium,hard,very_hard}       3x3/4x4/5x5/6x6 people x attributes; who lives in house 1?
    arc1d_{easy,medium,hard,very_hard}       ARC-1D rows of 10/20/30/40 cells, 3 examples + a test input
    toy_copy, toy_next, toy_first, toy_sum   one-character answers (the CPU testbed and tests)
    rg:<dataset>[:<level>]                   reasoning-gym's generators (rg_tasks.py)
    FILE[:key=column...]                     .jsonl / .parquet / save_to_disk data, 1+ tasks (datafiles.py)

The paper used reasoning-gym's generators (Chen et al. 2025 released the data); ours are written from
scratch to the same recipe, with no dependency: every Countdown target is confirmed reachable by an
exact solver and every Zebra solution unique by a search solver, at generation time. Instance i of a
task is drawn from its own RNG seeded by sha256(task, seed, i), so a (task, seed) gives the same bytes
on any machine; the test split is the first n_test distinct instances and train the next n_train that
share nothing with test (for ARC-1D not even a test pair under other examples), so the two are disjoint
and the test set does not change with n_train. An ARC-1D instance that a second rule also explains, with
another test output, is drawn again.

    train, test = load_task("countdown_medium", n_train=1000, n_test=200, seed=0)
    text = make_prompt(train[0], style="r1")        # the released code's raw wrapper

This module says what to learn, and which prompts each generation round draws (step_draws, pool_draws); it needs
only the standard library. models.py loads what learns it (the model, its tokenizer, the tiny CPU testbed) and
tokenizes these prompts for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from fractions import Fraction
from typing import TYPE_CHECKING, Callable

from example import LEVELS, Example

if TYPE_CHECKING:
    import numpy as np

COUNTDOWN_NUMBERS = dict(easy=3, medium=4, hard=5, very_hard=6)
ZEBRA_SIZE = dict(easy=3, medium=4, hard=5, very_hard=6)
ARC_LENGTH = dict(easy=10, medium=20, hard=30, very_hard=40)
TOY_TASKS = ("toy_copy", "toy_next", "toy_first", "toy_sum")
TASK_NAMES = tuple(f"{family}_{level}" for family in ("countdown", "zebra", "arc1d") for level in LEVELS) + TOY_TASKS
MAX_TRAIN = 10_000   # the released data's largest split


# -----------------------------------------------------------------------------
# Countdown

def solve_countdown(numbers: list[int], target: int) -> str | None:
    """An expression using every number exactly once with + - * / that equals target, or None. Searches
    the expressions whose intermediate results are non-negative integers (the class `_countdown` draws
    targets from, so it finds every generated target; all integers keep it fast): depth-first over
    "combine two of the remaining values", remembering multisets already shown to fail."""
    failed: set[tuple[int, ...]] = set()

    def search(items: list[tuple[int, str]]) -> str | None:
        if len(items) == 1:
            return items[0][1] if items[0][0] == target else None
        key = tuple(sorted(v for v, _ in items))
        if key in failed:
            return None
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                (a, ea), (b, eb) = max(items[i], items[j]), min(items[i], items[j])   # a >= b
                rest = items[:i] + items[i + 1:j] + items[j + 1:]
                options = [(a + b, f"{ea} + {eb}"), (a * b, f"{ea} * {eb}"), (a - b, f"{ea} - {eb}")]
                if b and a % b == 0:
                    options.append((a // b, f"{ea} / {eb}"))
                for value, expr in options:
                    found = search(rest + [(value, f"({expr})")])
                    if found:
                        return found
        failed.add(key)
        return None

    found = search([(n, str(n)) for n in numbers])
    return found[1:-1] if found and found.startswith("(") else found


def _countdown(rng: random.Random, level: str) -> tuple[str, str, dict]:
    """A random expression tree over n random numbers fixes a target; keep it if the target is an integer
    in 1..1000 (integer intermediate results only, so targets look like the released data's)."""
    n = COUNTDOWN_NUMBERS[level]
    while True:
        numbers = [rng.randint(1, 100) for _ in range(n)]
        items = [(Fraction(x), str(x)) for x in numbers]
        while len(items) > 1:
            (a, ea), (b, eb) = items.pop(rng.randrange(len(items))), items.pop(rng.randrange(len(items)))
            op = rng.choice("+-*/")
            if op == "-" and a < b:
                (a, ea), (b, eb) = (b, eb), (a, ea)
            if op == "/" and (b == 0 or a % b):
                op = "+"
            value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
            items.append((value, f"({ea} {op} {eb})"))
        target, witness = items[0]
        if target.denominator == 1 and 1 <= target <= 1000:
            break
    if solve_countdown(numbers, int(target)) is None:   # an independent check of reachability
        raise RuntimeError(f"countdown generator bug: {witness} = {target} but the solver finds no solution")
    listed = ", ".join(map(str, numbers))
    question = (f"Using all of the numbers {listed}, each exactly once, write an arithmetic expression that "
                f"equals {int(target)}. You may use +, -, *, / and parentheses. "
                f"Give the final expression, without '= {int(target)}', in \\boxed{{}}.")
    return question, witness[1:-1], {"numbers": numbers, "target": int(target)}


# -----------------------------------------------------------------------------
# Zebra puzzles

ZEBRA_ATTRIBUTES = {   # attribute -> (values, how a clue names the person with value v)
    "name": (("Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry"), "{}"),
    "color": (("red", "green", "blue", "yellow", "white", "purple", "orange"), "the person who likes {}"),
    "pet": (("cat", "dog", "bird", "fish", "horse", "rabbit", "turtle"), "the {} owner"),
    "drink": (("tea", "coffee", "milk", "water", "juice", "soda", "cocoa"), "the person who drinks {}"),
    "food": (("pizza", "soup", "salad", "pasta", "rice", "bread", "curry"), "the person who eats {}"),
    "hobby": (("chess", "painting", "hiking", "reading", "cooking", "dancing", "fishing"), "the person who enjoys {}"),
}

# A clue is (kind, a, b) with a, b = (attribute, value) or, for "in_house", b = the house index (0-based):
#   in_house: a lives in house b          same: a is b
#   left_of:  a lives directly left of b  next_to: a and b live next to each other


def _supported(kind: str, other: int, forward: bool, full: int) -> int:
    """Houses (bitmask) of one side of a clue that have a partner among the `other` side's houses.
    forward: we are side a of (kind, a, b). left_of means house(a) + 1 == house(b)."""
    if kind == "same":
        return other
    if kind == "next_to":
        return ((other << 1) | (other >> 1)) & full
    return (other >> 1) if forward else (other << 1) & full   # left_of


def _propagate(domains: dict, clues: list, attributes: dict, n: int) -> bool:
    """Shrink each (attribute, value)'s set of possible houses (a bitmask) to a fixpoint. False if some
    set empties. Sound: it only removes houses that no solution can use."""
    full = (1 << n) - 1
    changed = True
    while changed:
        changed = False
        for kind, a, b in clues:
            if kind == "in_house":
                new = domains[a] & (1 << b)
                if new != domains[a]:
                    domains[a], changed = new, True
                continue
            for x, y, forward in ((a, b, True), (b, a, False)):   # keep houses of x with a partner in y
                keep = domains[x] & _supported(kind, domains[y], forward, full)
                if keep != domains[x]:
                    domains[x], changed = keep, True
        for attr, values in attributes.items():   # all-different: placed values leave the others' sets
            for v in values:
                d = domains[(attr, v)]
                if d.bit_count() == 1:
                    for w in values:
                        if w != v and domains[(attr, w)] & d:
                            domains[(attr, w)] &= ~d
                            changed = True
            for p in range(n):                     # a house only one value can take gets it
                holders = [v for v in values if domains[(attr, v)] >> p & 1]
                if len(holders) == 1 and domains[(attr, holders[0])] != 1 << p:
                    domains[(attr, holders[0])], changed = 1 << p, True
            union = 0
            for v in values:
                union |= domains[(attr, v)]
            if union != full:
                return False
        if any(d == 0 for d in domains.values()):
            return False
    return True


def zebra_solutions(clues: list, attributes: dict, n: int, limit: int = 2) -> list[dict]:
    """Up to `limit` solutions ({(attribute, value): house}) of a puzzle: propagation plus branching on the
    value with the fewest possible houses. limit=2 decides uniqueness."""
    found: list[dict] = []

    def search(domains: dict) -> None:
        if len(found) >= limit or not _propagate(domains, clues, attributes, n):
            return
        open_ = [k for k, d in domains.items() if d.bit_count() > 1]
        if not open_:
            found.append({k: d.bit_length() - 1 for k, d in domains.items()})
            return
        k = min(open_, key=lambda k: domains[k].bit_count())
        for p in range(n):
            if domains[k] >> p & 1:
                search({**domains, k: 1 << p})

    search({(attr, v): (1 << n) - 1 for attr, values in attributes.items() for v in values})
    return found


def _zebra_phrase(person: tuple[str, str]) -> str:
    return ZEBRA_ATTRIBUTES[person[0]][1].format(person[1])


def _zebra_clue_text(clue: tuple) -> str:
    kind, a, b = clue
    a_text = _zebra_phrase(a)
    text = {"in_house": lambda: f"{a_text} lives in house {b + 1}",
            "same": lambda: f"{a_text} is {_zebra_phrase(b)}",
            "left_of": lambda: f"{a_text} lives directly left of {_zebra_phrase(b)}",
            "next_to": lambda: f"{a_text} and {_zebra_phrase(b)} live next to each other"}[kind]()
    return text[0].upper() + text[1:] + "."


def _zebra(rng: random.Random, level: str) -> tuple[str, str, dict]:
    """Random solution, then random true clues (relations preferred over "lives in house N") added one at
    a time, skipping any that tells propagation nothing new, until propagation alone pins every value.
    So the puzzle needs no guessing; `zebra_solutions` then confirms the solution is unique."""
    n = ZEBRA_SIZE[level]
    chosen = ["name"] + sorted(rng.sample(sorted(a for a in ZEBRA_ATTRIBUTES if a != "name"), n - 1))
    attributes = {a: sorted(rng.sample(ZEBRA_ATTRIBUTES[a][0], n)) for a in chosen}
    house = {}
    for attr, values in attributes.items():
        for p, v in enumerate(rng.sample(values, n)):
            house[(attr, v)] = p
    people = sorted(house)
    candidates = [("in_house", x, house[x]) for x in people]
    for i, x in enumerate(people):
        for y in people[i + 1:]:
            if x[0] != y[0] and house[x] == house[y]:
                candidates += [("same", x, y)] * 2
            if abs(house[x] - house[y]) == 1:
                left, right = (x, y) if house[x] < house[y] else (y, x)
                candidates += [("left_of", left, right), ("next_to", x, y)] * 2
    rng.shuffle(candidates)
    clues: list = []
    domains = {x: (1 << n) - 1 for x in people}
    for clue in candidates:
        trial = dict(domains)
        if not _propagate(trial, clues + [clue], attributes, n):   # every candidate clue is true
            raise RuntimeError(f"zebra generator bug: true clue {clue} contradicts clues {clues}")
        if trial != domains:
            clues.append(clue)
            domains = trial
        if all(d.bit_count() == 1 for d in domains.values()):
            break
    if len(zebra_solutions(clues, attributes, n)) != 1:
        raise RuntimeError(f"zebra generator bug: clues {clues} do not have exactly one solution")
    rng.shuffle(clues)
    first = next(v for (attr, v), p in house.items() if attr == "name" and p == 0)
    listing = "\n".join(f" - {attr}: {', '.join(values)}" for attr, values in attributes.items())
    numbered = "\n".join(f"{i}. {_zebra_clue_text(c)}" for i, c in enumerate(clues, 1))
    question = (f"This is a logic puzzle. There are {n} houses in a row, numbered 1 to {n} from left to right. "
                f"Each house holds one person, and each person has a different value for each attribute:\n"
                f"{listing}\n\nClues:\n{numbered}\n\n"
                f"What is the name of the person who lives in house 1? Give the name in \\boxed{{}}.")
    as_json = [[kind, list(a), b if kind == "in_house" else list(b)] for kind, a, b in clues]
    return question, first, {"attributes": attributes, "clues": as_json}


# -----------------------------------------------------------------------------
# ARC-1D: rows of colors 0..9 (0 = background); each rule draws its own parameters once per puzzle
# and returns a function making one (input, output) pair under them.

Row = list[int]
PairMaker = Callable[[random.Random], tuple[Row, Row]]


def _block(rng: random.Random, n: int, min_len: int = 1, margin: int = 0) -> tuple[int, int, int]:
    """(color, start, length) of a random one-color block, at most n // 3 long (but at least min_len), that
    leaves `margin` free cells on each side."""
    length = rng.randint(min_len, max(min_len, n // 3))
    start = rng.randint(margin, n - margin - length)
    return rng.randint(1, 9), start, length


def _paint(n: int, *blocks: tuple[int, int, int]) -> Row:
    row = [0] * n
    for color, start, length in blocks:
        row[start:start + length] = [color] * length
    return row


def _rule_shift(rng: random.Random, n: int) -> PairMaker:
    k, sign = rng.randint(1, 3), rng.choice((-1, 1))

    def pair(rng):
        c, s, L = _block(rng, n, margin=k)
        return _paint(n, (c, s, L)), _paint(n, (c, s + sign * k, L))
    return pair


def _rule_rotate(rng: random.Random, n: int) -> PairMaker:
    k = rng.randint(1, 3)

    def pair(rng):
        row = [rng.choice((0, 0, rng.randint(1, 9))) for _ in range(n)]
        return row, row[-k:] + row[:-k]
    return pair


def _rule_mirror(rng: random.Random, n: int) -> PairMaker:
    def pair(rng):
        row = _paint(n, _block(rng, n), _block(rng, n))
        return row, row[::-1]
    return pair


def _rule_recolor(rng: random.Random, n: int) -> PairMaker:
    a, b = rng.sample(range(1, 10), 2)

    def pair(rng):
        row = [rng.choice((0, 0, a)) for _ in range(n)]
        return row, [b if x == a else x for x in row]
    return pair


def _rule_swap_colors(rng: random.Random, n: int) -> PairMaker:
    a, b = rng.sample(range(1, 10), 2)

    def pair(rng):
        row = [rng.choice((0, a, b)) for _ in range(n)]
        return row, [b if x == a else a if x == b else x for x in row]
    return pair


def _rule_fill_gap(rng: random.Random, n: int) -> PairMaker:
    def pair(rng):
        i = rng.randrange(n - 2)
        j, c = rng.randint(i + 2, n - 1), rng.randint(1, 9)
        row = [0] * n
        row[i] = row[j] = c
        return row, _paint(n, (c, i, j - i + 1))
    return pair


def _rule_gravity(rng: random.Random, n: int) -> PairMaker:
    to_right = rng.random() < 0.5

    def pair(rng):
        row = [rng.choice((0, 0, 0, rng.randint(1, 9))) for _ in range(n)]
        cells = [x for x in row if x]
        pad = [0] * (n - len(cells))
        return row, pad + cells if to_right else cells + pad
    return pair


def _rule_extend(rng: random.Random, n: int) -> PairMaker:
    to_right = rng.random() < 0.5

    def pair(rng):
        c, s, L = _block(rng, n, margin=1)
        return _paint(n, (c, s, L)), _paint(n, (c, s, n - s) if to_right else (c, 0, s + L))
    return pair


def _rule_hollow(rng: random.Random, n: int) -> PairMaker:
    def pair(rng):
        c, s, L = _block(rng, n, min_len=3)
        out = [0] * n
        out[s] = out[s + L - 1] = c
        return _paint(n, (c, s, L)), out
    return pair


def _rule_grow(rng: random.Random, n: int) -> PairMaker:
    def pair(rng):
        c, s, L = _block(rng, n, margin=1)
        return _paint(n, (c, s, L)), _paint(n, (c, s - 1, L + 2))
    return pair


def _rule_shrink(rng: random.Random, n: int) -> PairMaker:
    def pair(rng):
        c, s, L = _block(rng, n, min_len=3)
        return _paint(n, (c, s, L)), _paint(n, (c, s + 1, L - 2))
    return pair


def _rule_denoise(rng: random.Random, n: int) -> PairMaker:
    def pair(rng):
        c, s, L = _block(rng, n, min_len=3)
        out = _paint(n, (c, s, L))
        row = list(out)
        for p in rng.sample(range(n), rng.randint(1, 3)):   # isolated single cells of the block's color
            if all(row[q] == 0 for q in range(max(0, p - 1), min(n, p + 2))):
                row[p] = c
        return row, out
    return pair


def _rule_keep_largest(rng: random.Random, n: int) -> PairMaker:
    def pair(rng):
        lengths = rng.sample(range(1, max(4, n // 4) + 1), 2)
        first = rng.randint(0, n // 2 - max(lengths) - 1) if n // 2 - max(lengths) - 1 > 0 else 0
        second = rng.randint(n // 2, n - max(lengths))
        blocks = [(rng.randint(1, 9), first, lengths[0]), (rng.randint(1, 9), second, lengths[1])]
        return _paint(n, *blocks), _paint(n, max(blocks, key=lambda b: b[2]))
    return pair


def _rule_move_to_marker(rng: random.Random, n: int) -> PairMaker:
    marker = rng.randint(1, 9)

    def pair(rng):
        m = rng.randint(n // 2, n - 1)
        c = rng.choice([x for x in range(1, 10) if x != marker])
        L = rng.randint(1, max(1, m // 3))
        s = rng.randint(0, m - L - 1)
        row, out = _paint(n, (c, s, L)), _paint(n, (c, m - L, L))
        row[m] = out[m] = marker
        return row, out
    return pair


def _rule_duplicate(rng: random.Random, n: int) -> PairMaker:
    def pair(rng):
        L = rng.randint(1, max(1, n // 5))
        c, s = rng.randint(1, 9), rng.randint(0, n - 2 * L - 1)
        return _paint(n, (c, s, L)), _paint(n, (c, s, L), (c, s + L + 1, L))
    return pair


ARC_RULES = (_rule_shift, _rule_rotate, _rule_mirror, _rule_recolor, _rule_swap_colors, _rule_fill_gap,
             _rule_gravity, _rule_extend, _rule_hollow, _rule_grow, _rule_shrink, _rule_denoise,
             _rule_keep_largest, _rule_move_to_marker, _rule_duplicate)


# Each rule's natural reading as a deterministic function of any row, for the ambiguity check: the
# generators above draw their rows from narrow shapes, a solver sees only the rows. A reading returns
# None where it is undefined (a block would leave the row, no single marker, a tie for largest, ...).
# Blocks here are maximal runs of one nonzero color. Every rule is read, with every parameter its
# generator draws, so every pair of rules is checked. Without the check, 24-27 of 9,600 instances
# (seeds 0, 1, 2; 2,400 per level) had a second reading with another test output: keep_largest vs
# denoise 22-23 (the smaller block one cell in every example), and at most once each shift vs gravity,
# shift vs mirror, gravity vs rotate, move_to_marker vs gravity; none at very_hard.

Reading = Callable[[Row], Row | None]


def _runs(row: Row) -> list[tuple[int, int, int]]:
    """(color, start, length) of each maximal run of one nonzero color."""
    runs: list[tuple[int, int, int]] = []
    for p, x in enumerate(row):
        if x and runs and runs[-1][0] == x and runs[-1][1] + runs[-1][2] == p:
            runs[-1] = (x, runs[-1][1], runs[-1][2] + 1)
        elif x:
            runs.append((x, p, 1))
    return runs


def _shift_row(row: Row, d: int) -> Row | None:
    if any(row[-d:] if d > 0 else row[:-d]):   # a cell would leave the row
        return None
    return [0] * d + row[:-d] if d > 0 else row[-d:] + [0] * -d


def _fill_span(row: Row) -> Row | None:
    cells = [p for p, x in enumerate(row) if x]
    if len(cells) < 2 or len({row[p] for p in cells}) > 1:
        return None
    return _paint(len(row), (row[cells[0]], cells[0], cells[-1] - cells[0] + 1))


def _gravity_row(row: Row, to_right: bool) -> Row:
    cells = [x for x in row if x]
    pad = [0] * (len(row) - len(cells))
    return pad + cells if to_right else cells + pad


def _extend_row(row: Row, to_right: bool) -> Row | None:
    runs = _runs(row)
    if len(runs) != 1:
        return None
    c, s, L = runs[0]
    return _paint(len(row), (c, s, len(row) - s) if to_right else (c, 0, s + L))


def _hollow_row(row: Row) -> Row:
    out = list(row)
    for _, s, L in _runs(row):
        out[s + 1:s + L - 1] = [0] * max(0, L - 2)
    return out


def _grow_row(row: Row) -> Row | None:
    runs, n = _runs(row), len(row)
    if not runs or runs[0][1] == 0 or runs[-1][1] + runs[-1][2] == n:   # a block at an edge
        return None
    if any(s2 - (s1 + L1) < 2 for (_, s1, L1), (_, s2, _) in zip(runs, runs[1:])):   # grown blocks would overlap
        return None
    return _paint(n, *[(c, s - 1, L + 2) for c, s, L in runs])


def _shrink_row(row: Row) -> Row:   # blocks of 1 or 2 cells vanish
    return _paint(len(row), *[(c, s + 1, L - 2) for c, s, L in _runs(row) if L > 2])


def _denoise_row(row: Row) -> Row:   # drop cells with no nonzero neighbor
    padded = [0] + row + [0]
    return [x if padded[p] or padded[p + 2] else 0 for p, x in enumerate(row)]


def _keep_largest_row(row: Row) -> Row | None:
    runs = sorted(_runs(row), key=lambda r: r[2])
    if not runs or (len(runs) > 1 and runs[-1][2] == runs[-2][2]):
        return None
    return _paint(len(row), runs[-1])


def _move_to_marker_row(row: Row, marker: int) -> Row | None:
    if row.count(marker) != 1:
        return None
    m = row.index(marker)
    runs = _runs(row[:m])
    if len(runs) != 1 or any(row[m + 1:]):
        return None
    c, _, L = runs[0]
    out = _paint(len(row), (c, m - L, L))
    out[m] = marker
    return out


def _duplicate_row(row: Row) -> Row | None:
    runs = _runs(row)
    if len(runs) != 1 or runs[0][1] + 2 * runs[0][2] + 1 > len(row):   # no room for the copy
        return None
    c, s, L = runs[0]
    return _paint(len(row), (c, s, L), (c, s + L + 1, L))


def _recolor_row(row: Row, a: int, b: int) -> Row:
    return [b if x == a else x for x in row]


def _swap_row(row: Row, a: int, b: int) -> Row:
    return [b if x == a else a if x == b else x for x in row]


# (rule, reading) for every parameter the generators draw; recolor and swap are in _color_readings
ARC_READINGS: tuple[tuple[str, Reading], ...] = (
    *[("shift", lambda r, d=d: _shift_row(r, d)) for d in (-3, -2, -1, 1, 2, 3)],
    *[("rotate", lambda r, k=k: r[-k:] + r[:-k]) for k in (1, 2, 3)],
    ("mirror", lambda r: r[::-1]),
    ("fill_gap", _fill_span),
    *[("gravity", lambda r, t=t: _gravity_row(r, t)) for t in (False, True)],
    *[("extend", lambda r, t=t: _extend_row(r, t)) for t in (False, True)],
    ("hollow", _hollow_row), ("grow", _grow_row), ("shrink", _shrink_row), ("denoise", _denoise_row),
    ("keep_largest", _keep_largest_row),
    *[("move_to_marker", lambda r, m=m: _move_to_marker_row(r, m)) for m in range(1, 10)],
    ("duplicate", _duplicate_row),
)


def _color_readings(inp: Row, out: Row) -> list[tuple[str, Reading]]:
    """The recolor and swap readings that can fit the pair (inp, out): its first changed cell x -> y fixes
    their colors (recolor x -> y, swap x <-> y), so 2 candidates stand for all 108."""
    x, y = next(((a, b) for a, b in zip(inp, out) if a != b), (0, 0))
    if not x or not y:   # no color rule touches background
        return []
    return [("recolor", lambda r: _recolor_row(r, x, y)), ("swap_colors", lambda r: _swap_row(r, x, y))]


def arc1d_readings_fitting(examples: list[tuple[Row, Row]]) -> list[tuple[str, Reading]]:
    """Every (rule, reading) that maps each example input to its output (examples change their rows)."""
    candidates = ARC_READINGS + tuple(_color_readings(*examples[0]))
    return [(name, f) for name, f in candidates if all(f(a) == b for a, b in examples)]


def arc1d_ambiguity(examples: list[tuple[Row, Row]], test_input: Row, answer: Row) -> str | None:
    """The name of a rule that fits every example but gives test_input another output (the instance then
    has two defensible answers), or None."""
    for name, f in arc1d_readings_fitting(examples):
        out = f(test_input)
        if out is not None and out != answer:
            return name
    return None


def _grid(row: Row) -> str:
    return " ".join(map(str, row))


def _arc_pairs(pair: PairMaker, rng: random.Random) -> list[tuple[Row, Row]]:
    """3 example pairs and a test pair, all distinct and each changed by the rule (an unchanged pair would
    not show it)."""
    pairs: list[tuple[Row, Row]] = []
    while len(pairs) < 4:
        inp, out = pair(rng)
        if inp != out and all(inp != p for p, _ in pairs):
            pairs.append((inp, out))
    return pairs


def _arc1d(rng: random.Random, level: str) -> tuple[str, str, dict]:
    """Pick a rule, then draw its parameters and the pairs; draw them again (same rule, so the mix of rules
    stays uniform) while another rule's reading fits the examples but answers the test input differently:
    such an instance has two defensible answers and marks one wrong (0.3% of instances, most of them
    keep_largest examples whose smaller block is one cell, which denoise also explains)."""
    n = ARC_LENGTH[level]
    rule = rng.choice(ARC_RULES)
    pairs = _arc_pairs(rule(rng, n), rng)
    while arc1d_ambiguity(pairs[:3], *pairs[3]):
        pairs = _arc_pairs(rule(rng, n), rng)
    shown = "\n\n".join(f"Example {i}:\nInput:  {_grid(a)}\nOutput: {_grid(b)}" for i, (a, b) in enumerate(pairs[:3], 1))
    question = (f"Find the rule that turns each input row into its output row in these examples.\n\n{shown}\n\n"
                f"Apply the rule to this test input:\nInput:  {_grid(pairs[3][0])}\n"
                f"Give the output row, cells separated by spaces, in \\boxed{{}}.")
    return question, _grid(pairs[3][1]), {"rule": rule.__name__[len("_rule_"):]}


# -----------------------------------------------------------------------------
# Toy tasks: one-character answers for a tiny model on CPU. copy, next and first are learned in seconds of
# supervision (the testbed's warm start, models.warm_start); sum ((a + b) mod 10) a tiny model does not learn
# quickly.

TOY_LETTERS = "abcdef"


def _toy(rng: random.Random, name: str) -> tuple[str, str, dict]:
    s = "".join(rng.choice(TOY_LETTERS) for _ in range(5))
    if name == "toy_copy":     # answer: the last letter
        return f"copy: {s}", s[-1], {"alphabet": TOY_LETTERS}
    if name == "toy_next":     # answer: the letter after the last one, cyclic over abcdef
        return f"next: {s}", TOY_LETTERS[(TOY_LETTERS.index(s[-1]) + 1) % len(TOY_LETTERS)], {"alphabet": TOY_LETTERS}
    if name == "toy_first":    # answer: the first letter
        return f"first: {s}", s[0], {"alphabet": TOY_LETTERS}
    a, b = rng.randrange(10), rng.randrange(10)   # toy_sum: last digit of a + b, after two noise letters
    return f"sum: {s[:2]} {a}+{b}", str((a + b) % 10), {"alphabet": "0123456789"}


# -----------------------------------------------------------------------------
# Loading and prompts

def _instance_rng(name: str, seed: int, i: int) -> random.Random:
    digest = hashlib.sha256(f"{name}|{seed}|{i}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def make_example(name: str, rng: random.Random) -> Example:
    """One instance of a built-in task."""
    family, _, level = name.partition("_")
    if name in TOY_TASKS:
        question, answer, info = _toy(rng, name)
        return Example(name, question, answer, "toy", info)
    make, verifier = {"countdown": (_countdown, "countdown"), "zebra": (_zebra, "name"), "arc1d": (_arc1d, "grid")}[family]
    question, answer, info = make(rng, level)
    return Example(name, question, answer, verifier, info)


def _arc_test_pair(ex: Example) -> tuple[str, str] | None:
    """An ARC-1D instance's (test input, answer); None for other tasks. Small rows repeat: at 10 cells, 15%
    of test items shared their pair with some of 1000 train items under other examples, so a model could
    learn the test answer in training. load_task keeps such train items out."""
    if not ex.task.startswith("arc1d_"):
        return None
    return ex.question.rsplit("Input:  ", 1)[1].split("\n", 1)[0], ex.answer


def _check_sizes(n_train: int, n_test: int) -> None:
    if not 1 <= n_train <= MAX_TRAIN:
        raise ValueError(f"n_train must be in 1..{MAX_TRAIN}, got {n_train}")
    if n_test < 1:
        raise ValueError(f"n_test must be >= 1, got {n_test}")


def load_task(name: str, n_train: int = 1000, n_test: int = 200, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(train, test) examples of a built-in task, a reasoning-gym task or a one-task data file. Deterministic
    in (name, seed); the test split is drawn first, so it does not depend on n_train; the two splits share no
    question, and for ARC-1D no (test input, answer) pair: train skips instances repeating a test item's pair."""
    _check_sizes(n_train, n_test)
    if name.startswith("rg:"):
        from rg_tasks import load_rg
        return load_rg(name, n_train, n_test, seed)
    if _is_file_spec(name):
        loaded = _load_file(name, n_train, n_test, seed)
        if len(loaded) > 1:
            held = ", ".join(train[0].task for train, _ in loaded)
            raise ValueError(f"{name} holds {len(loaded)} tasks ({held}); load it with load_tasks")
        return loaded[0]
    if name not in TASK_NAMES:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}, rg:<dataset>, "
                         "or a data file")
    examples: list[Example] = []
    seen: set[str] = set()
    test_pairs: set[tuple[str, str]] = set()
    i = 0
    while len(examples) < n_test + n_train:
        ex = make_example(name, _instance_rng(name, seed, i))
        i += 1
        pair = _arc_test_pair(ex)
        if ex.question not in seen and (len(examples) < n_test or pair not in test_pairs):
            seen.add(ex.question)
            examples.append(ex)
            if pair and len(examples) <= n_test:
                test_pairs.add(pair)
        if i > 20 * (n_test + n_train) + 1000:   # the toy tasks have finitely many distinct questions
            raise ValueError(f"task {name} has {len(examples)} distinct questions; n_train {n_train} + "
                             f"n_test {n_test} asks for more")
    return examples[n_test:], examples[:n_test]


def _is_file_spec(name: str) -> bool:
    from datafiles import is_file_spec
    return is_file_spec(name)


def _load_file(spec: str, n_train: int, n_test: int, seed: int) -> list[tuple[list[Example], list[Example]]]:
    from datafiles import load_file
    return load_file(spec, n_train, n_test, seed)


R1_TEMPLATE = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
               "The assistant first thinks about the reasoning process in the mind and then provides the user "
               "with the answer.\nUser: {question}\nAssistant: Let me solve this step by step.")


def make_prompt(ex: Example, style: str = "r1", tokenizer=None) -> str:
    """The prompt text. "r1": the released setup's raw wrapper for base models (the released code's); "chat":
    the tokenizer's chat template with the question as the user turn (instruct models); "plain": the
    question alone. Toy tasks are always plain: they are for a tiny model with a short context."""
    if style not in ("r1", "chat", "plain"):
        raise ValueError(f"prompt style must be r1, chat or plain, got {style!r}")
    if style == "plain" or ex.verifier == "toy":
        return ex.question
    if style == "r1":
        return R1_TEMPLATE.format(question=ex.question)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("prompt style 'chat' needs a tokenizer with a chat template; use --prompt-style r1 for base models")
    return tokenizer.apply_chat_template([{"role": "user", "content": ex.question}], tokenize=False, add_generation_prompt=True)


# -----------------------------------------------------------------------------
# Which of task k's train prompts a generation round draws (Alg. 2, lines 5 and 17: sample from D_k)

def step_draws(rng: np.random.Generator, K: int) -> Callable[[int, int, int], list[int]]:
    """draw(k, count, size) -> count of task k's `size` prompts, without replacement within a step (across its
    rounds); a task that runs out draws from all its prompts again."""
    used: list[set] = [set() for _ in range(K)]

    def draw(k: int, count: int, size: int) -> list[int]:
        free = [i for i in range(size) if i not in used[k]]
        if len(free) < count:  # a small task set runs out: reuse
            free = list(range(size))
        idx = rng.choice(free, size=count, replace=len(free) < count).tolist()
        used[k].update(idx)
        return idx
    return draw


def pool_draws(rng: np.random.Generator, pools: list[list[int]],
               refill_below: int) -> Callable[[int, int, int], list[int]]:
    """The released code's draws: each task's pool is drawn from the front, without replacement across steps;
    a pool with fewer than refill_below (3B) prompts left gets a reshuffled full list appended to the rest."""
    def draw(k: int, count: int, size: int) -> list[int]:
        while len(pools[k]) < max(refill_below, count):
            pools[k] += rng.permutation(size).tolist()
        idx = pools[k][:count]
        del pools[k][:count]
        return idx
    return draw


def prompt_draws(rng: np.random.Generator, K: int, pools: list[list[int]] | None,
                 refill_below: int) -> Callable[[int, int, int], list[int]]:
    """A step's draw(k, count, size): from prompt pools across steps when there are any (--prompt-pools, the
    released code), else step_draws."""
    return step_draws(rng, K) if pools is None else pool_draws(rng, pools, refill_below)


# -----------------------------------------------------------------------------
# The trainer's side: --list-tasks, the --tasks check, and loading a --tasks list (models.py tokenizes it)

TASK_INFO = {  # one line per built-in family, for --list-tasks
    "countdown": "reach the target with + - * / on the given numbers, each used once (3/4/5/6 numbers)",
    "zebra": "who lives in house 1? a logic grid of 3x3/4x4/5x5/6x6 people and attributes",
    "arc1d": "apply the rule shown by 3 examples to a row of 10/20/30/40 cells",
    "toy": "one-character answers for the tiny CPU model: last letter, next letter, first letter, (a + b) mod 10",
}


def describe_tasks() -> str:
    """The built-in tasks, a line each, then the other sources (mtgrpo.py --list-tasks)."""
    lines = [f"{family + '_{' + ','.join(LEVELS) + '}':38s} {TASK_INFO[family]}" for family in ("countdown", "zebra", "arc1d")]
    lines.append(f"{','.join(TOY_TASKS):38s} {TASK_INFO['toy']}")
    return "\n".join(lines + [
        f"{'rg:DATASET:LEVEL':38s} reasoning-gym's countdown, zebra_puzzles, arc_1d at the paper's configs "
        "(LEVEL as above; requirements-rg.txt)",
        f"{'rg:<dataset>':38s} any reasoning-gym dataset, default config, scored by its score_answer",
        f"{'FILE[:key=column...]':38s} your own .jsonl / .parquet / save_to_disk directory "
        "(requirements-data.txt): columns prompt, answer, verifier, optional task (several tasks in one file), "
        "info, split; e.g. data.parquet:prompt=question:verifier=math (a verifier name, no such column)"])


def check_task_list(tasks: str) -> None:
    """Reject a --tasks value naming an unknown task, a missing file, a task twice, or none, with one line."""
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise ValueError("--tasks is empty: give a comma-separated list of task names, rg:<dataset> or data "
                         "files")
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"--tasks names {', '.join(twice)} more than once; each task gets one weight, so list it once")
    for name in names:
        if name.startswith("rg:"):
            from rg_tasks import parse_spec
            parse_spec(name)
        elif _is_file_spec(name):
            from datafiles import parse_spec
            parse_spec(name)
        elif name not in TASK_NAMES:
            raise ValueError(f"--tasks: unknown task {name!r}; known: {', '.join(TASK_NAMES)}, rg:<dataset>, "
                             "or a data file (python mtgrpo.py --list-tasks)")


def load_tasks(tasks: str, n_train: int, n_test: int, seed: int) -> list[tuple[list[Example], list[Example]]]:
    """(train, test) examples of every task in a --tasks list, with progress; a data file yields one pair per
    task it holds. A bad task file fails here, before any model is loaded."""
    out = []
    for name in (t.strip() for t in tasks.split(",") if t.strip()):
        t0 = time.perf_counter()
        _check_sizes(n_train, n_test)
        if _is_file_spec(name):
            loaded = _load_file(name, n_train, n_test, seed)
        else:
            loaded = [load_task(name, n_train, n_test, seed)]
        seconds = time.perf_counter() - t0
        for train, test in loaded:
            print(f"task {train[0].task}: {len(train)} train / {len(test)} test prompts ({seconds:.1f} s)")
        out += loaded
    names = [train[0].task for train, _ in out]
    if len(set(names)) < len(names):   # each task is logged and weighted by its name
        twice = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"--tasks yields task {twice!r} twice; rename one (a file's task column or stem)")
    return out
