"""
reasoning-gym tasks for --tasks (pip install -r requirements-rg.txt): `rg:<dataset>:<level>` for the paper's
three families at its difficulty levels, `rg:<dataset>` for any reasoning-gym dataset with its default config.

    rg:countdown:{easy,medium,hard,very_hard}       3/4/5/6 numbers in 1..100, target in 1..1000
    rg:zebra_puzzles:{easy,medium,hard,very_hard}   3x3/4x4/5x5/6x6 people x characteristics
    rg:arc_1d:{easy,medium,hard,very_hard}          rows of 10/20/30/40 cells, 3 training examples
    rg:<dataset>                                    e.g. rg:basic_arithmetic; scored by its own score_answer

The configs are issue 22's table of the paper's (not re-checked here). The question is the item's own,
plus one line asking for the answer in \\boxed{}; make_prompt wraps it like the built-in tasks. The three
families are scored by verify.py's own parsers (countdown with the item's numbers and target, zebra by name,
ARC by cells); any other dataset by its score_answer inside sandbox.py's worker (verifier "rg"): some parse
with sympy.

Test and train come from two reasoning-gym seeds RG_SEED_STRIDE // 2 apart (an item is drawn from
seed + index), so they share no item; train also skips any question that test holds. Same (spec, seed), same
items.
Generation runs here and is slow for large zebra puzzles (~0.5 s per 5x5, ~2 s per 6x6 item).
"""

from __future__ import annotations

import difflib

from example import LEVELS, Example

PREFIX = "rg:"
RG_SEED_STRIDE = 1_000_000   # run seed s: test from seed s * STRIDE, train from s * STRIDE + STRIDE // 2
BOX_LINE = "\n\nGive your final answer in \\boxed{}."
FAMILIES = {   # dataset -> (level -> config, verifier): the paper's three task families
    "countdown": ({level: dict(min_numbers=n, max_numbers=n, min_value=1, max_value=100, min_target=1,
                               max_target=1000) for level, n in zip(LEVELS, (3, 4, 5, 6))}, "countdown"),
    "zebra_puzzles": ({level: dict(num_people=n, num_characteristics=n)
                       for level, n in zip(LEVELS, (3, 4, 5, 6))}, "name"),
    "arc_1d": ({level: dict(min_size=n, max_size=n, num_train=3)
                for level, n in zip(LEVELS, (10, 20, 30, 40))}, "grid"),
}
INSTALL = "pip install -r requirements-rg.txt"


def is_rg(name: str) -> bool:
    return name.startswith(PREFIX)


def _datasets() -> list[str]:
    try:
        import reasoning_gym
    except ImportError:
        raise ValueError(f"--tasks: reasoning-gym tasks need the reasoning_gym package: {INSTALL}") from None
    return sorted(reasoning_gym.factory.DATASETS)


def parse_spec(spec: str) -> tuple[str, dict, str]:
    """`rg:<dataset>[:<level>]` -> (dataset, config, verifier). Raises one ValueError line naming the fix."""
    dataset, _, level = spec[len(PREFIX):].partition(":")
    known = _datasets()
    if dataset not in known:
        close = [PREFIX + c for c in difflib.get_close_matches(dataset, known, n=5, cutoff=0.6)]
        hint = f"close matches: {', '.join(close)}" if close else f"known: {', '.join(known)}"
        raise ValueError(f"--tasks: no reasoning-gym dataset {dataset!r} in {spec!r}; {hint}")
    if dataset in FAMILIES and level:
        configs, verifier = FAMILIES[dataset]
        if level not in configs:
            raise ValueError(f"--tasks: {spec!r}: level must be one of {', '.join(LEVELS)}")
        return dataset, configs[level], verifier
    if level:
        raise ValueError(f"--tasks: {spec!r}: levels exist for {', '.join(FAMILIES)}; "
                         f"give rg:{dataset} for its default config")
    return dataset, {}, "rg"


def _example(spec: str, dataset: str, config: dict, verifier: str, entry: dict, where: dict) -> Example:
    """One reasoning-gym item as an Example, with the info its verifier needs ("rg": how to regenerate it)."""
    meta = entry["metadata"]
    info = {"countdown": lambda: {"numbers": list(meta["numbers"]), "target": int(meta["target"])},
            "rg": lambda: {"dataset": dataset, "config": config, **where}}.get(verifier, dict)()
    return Example(spec, entry["question"] + BOX_LINE, str(entry["answer"]), verifier, info)


def load_rg(spec: str, n_train: int, n_test: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, test) of a reasoning-gym task: test from one seed, train from another, no question in both."""
    import reasoning_gym

    dataset, config, verifier = parse_spec(spec)
    splits = []
    seen: set[str] = set()
    for offset, n in ((0, n_test), (RG_SEED_STRIDE // 2, n_train)):
        ds_seed, size = seed * RG_SEED_STRIDE + offset, 2 * n + 100
        data = reasoning_gym.create_dataset(dataset, seed=ds_seed, size=size, **config)
        split = []
        for index in range(size):
            entry = data[index]
            if entry["question"] not in seen:
                seen.add(entry["question"])
                where = dict(seed=ds_seed, size=size, index=index)
                split.append(_example(spec, dataset, config, verifier, entry, where))
            if len(split) == n:
                break
        if len(split) < n:
            raise ValueError(f"{spec}: {len(split)} distinct questions in {size} items; ask for fewer "
                             f"than {n}")
        splits.append(split)
    test, train = splits
    return train, test
