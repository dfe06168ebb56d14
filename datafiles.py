"""
Bring-your-own tasks from data files: `--tasks FILE[:key=column...]`, FILE a .jsonl file (one JSON object
per line), a .parquet file, or a directory written by datasets' save_to_disk (the last two need
pip install -r requirements-data.txt). Each row is one example:

    prompt     the question (a string; a list of chat messages gives its last user turn's content)
    answer     the gold answer (made a string)
    verifier   one of verify.VERIFIERS; `verifier=NAME`, NAME a verifier, not a column: the same for all rows
    task       optional: the row's task; one file then holds several tasks (default: the file's stem)
    info       optional: what the verifier needs, a dict or a JSON string (countdown: {"numbers", "target"})
    split      optional: "train" or "test", on every row or on none; without it a seeded shuffle puts n_test
               rows of each task in test and the rest in train

Each key reads the column of its own name unless the spec maps it, as in
`data.parquet:prompt=question:answer=solution`. A column may be a field of a struct column:
`answer=reward_model.ground_truth`. Every prompt must be distinct, so no test question is trained on. A file
yields one (train, test) pair per task, in order of first appearance.

    load_file("mix.parquet:verifier=math", n_train=1000, n_test=200, seed=0)   -> [(train, test), ...]
"""

from __future__ import annotations

import json
import os
import random
from typing import Iterator

from example import Example

EXTENSIONS = (".jsonl", ".parquet")
KEYS = ("prompt", "answer", "verifier", "task", "info", "split")
REQUIRED = ("prompt", "answer", "verifier")
INSTALL = "pip install -r requirements-data.txt"


def is_file_spec(name: str) -> bool:
    """A data file or directory, not a task name: a known extension, or a path (it contains a slash)."""
    path = name.split(":", 1)[0]
    return path.endswith(EXTENSIONS) or os.sep in path or os.path.isdir(path)


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`FILE[:key=column...]` -> (FILE, {key: column}) with every key defaulting to its own name."""
    path, *pairs = spec.split(":")
    mapping = dict(zip(KEYS, KEYS))
    for pair in pairs:
        key, eq, column = pair.partition("=")
        if not eq or key not in KEYS or not column:
            raise ValueError(f"--tasks {spec}: {pair!r} is not key=column with key one of {', '.join(KEYS)}")
        mapping[key] = column
    if not (os.path.isfile(path) or os.path.isdir(path)):
        raise ValueError(f"--tasks: task file {path} does not exist")
    if not (path.endswith(EXTENSIONS) or os.path.isdir(path)):
        raise ValueError(f"--tasks: {path}: give a .jsonl or .parquet file or a save_to_disk directory")
    return path, mapping


def _jsonl_rows(path: str) -> Iterator[tuple[int, object]]:
    """(line number, object) per non-blank line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text; save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:   # JSON's own position would be a second line number
                why = f"{e.msg} at column {e.colno}"
                raise ValueError(f"{path}:{lineno}: need a JSON object ({why})") from None


def _table_rows(path: str) -> Iterator[tuple[int, object]]:
    """(row number from 1, row dict) of a parquet file or a save_to_disk directory; a DatasetDict's "train"
    and "test" splits set each row's split."""
    try:
        import pyarrow.parquet
        if os.path.isdir(path):
            import datasets
    except ImportError as e:
        raise ValueError(f"{path}: reading it needs {e.name}: {INSTALL}") from None
    if not os.path.isdir(path):
        parts = {None: pyarrow.parquet.read_table(path).to_pylist()}
    else:
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict) and not set(loaded) <= {"train", "test"}:
            raise ValueError(f"{path}: splits {', '.join(loaded)}; keep only train and test (or one Dataset)")
        if isinstance(loaded, datasets.DatasetDict):
            parts = {split: d.to_list() for split, d in loaded.items()}
        else:
            parts = {None: loaded.to_list()}
    n = 0
    for split, rows in parts.items():
        for row in rows:
            n += 1
            yield n, row if split is None else {**row, "split": split}


def _get(row: dict, column: str):
    """row[column], or a dotted path into struct columns (reward_model.ground_truth); KeyError if absent."""
    if column in row:
        return row[column]
    value = row
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(column)
        value = value[part]
    return value


def _prompt_text(prompt) -> object:
    """A chat-message list's last user turn, else the prompt as it is."""
    if isinstance(prompt, list) and all(isinstance(m, dict) and "content" in m for m in prompt):
        users = [m["content"] for m in prompt if m.get("role") == "user"]
        return users[-1] if users else prompt
    return prompt


def _example(where: str, row, mapping: dict[str, str], stem: str) -> tuple[str | None, Example]:
    """(split, Example) of one row, checked: one ValueError line naming the row and the fix."""
    from verify import VERIFIERS, check_info

    if not isinstance(row, dict):
        raise ValueError(f"{where}: need a JSON object with \"prompt\", \"answer\" and \"verifier\", "
                         f"got {type(row).__name__}")
    values = {}
    for key in KEYS:
        try:
            values[key] = _get(row, mapping[key])
        except KeyError:
            if key == "verifier" and mapping[key] in VERIFIERS:
                values[key] = mapping[key]
            elif key in REQUIRED or mapping[key] != key:
                columns = ", ".join(map(str, row))
                raise ValueError(f"{where}: no column {mapping[key]!r} for {key} (columns: {columns}); need "
                                 f"prompt, answer and verifier, or map one: FILE:{key}=COLUMN") from None
    prompt, verifier, info = _prompt_text(values["prompt"]), values["verifier"], values.get("info") or {}
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: \"info\" is a string but not JSON ({e.msg})") from None
    try:
        check_info(verifier, info)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if values.get("split") not in (None, "train", "test"):
        raise ValueError(f"{where}: \"split\" must be \"train\" or \"test\", got {values['split']!r}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: \"prompt\" must be a non-empty string, got {prompt!r:.80}")
    task = stem if values.get("task") is None else str(values["task"])
    return values.get("split"), Example(task, prompt, str(values["answer"]), verifier, info)


def load_file(spec: str, n_train: int, n_test: int, seed: int) -> list[tuple[list[Example], list[Example]]]:
    """(train, test) per task of a data file: with "split", the rows' own; else a seeded shuffle per task."""
    path, mapping = parse_spec(spec)
    stem = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
    jsonl = path.endswith(".jsonl")
    unit = "line" if jsonl else "row"
    by_task: dict[str, list[tuple[str | None, Example]]] = {}
    first: dict[str, int] = {}
    has_split = None
    for n, row in _jsonl_rows(path) if jsonl else _table_rows(path):
        where = f"{path}:{n}" if jsonl else f"{path}: row {n}"
        split, ex = _example(where, row, mapping, stem)
        if ex.question in first:
            raise ValueError(f"{where}: repeats the prompt of {unit} {first[ex.question]}; "
                             f"remove duplicates (a repeat could land in both train and test)")
        if first and (split is None) != (has_split is None):   # a row without a split would be dropped
            raise ValueError(f"{where}: give \"split\" on every {unit} or on none")
        first[ex.question], has_split = n, split
        by_task.setdefault(ex.task, []).append((split, ex))
    if not by_task:
        raise ValueError(f"{path}: no rows; need {n_test} test (--eval-prompts) and at least one train")
    return [_split(path, task, rows, n_train, n_test, seed) for task, rows in by_task.items()]


def _split(path: str, task: str, rows: list, n_train: int, n_test: int,
           seed: int) -> tuple[list[Example], list[Example]]:
    """One task's (train, test): the rows' own splits, else a seeded shuffle with n_test rows in test."""
    if rows[0][0] is not None:
        train = [ex for split, ex in rows if split == "train"][:n_train]
        test = [ex for split, ex in rows if split == "test"]
    else:
        order = [ex for _, ex in rows]
        random.Random(seed).shuffle(order)
        test, train = order[:n_test], order[n_test:n_test + n_train]
    if len(test) < n_test or not train:
        raise ValueError(f"{path}: task {task}: {len(test)} test and {len(train)} train examples; need "
                         f"{n_test} test (--eval-prompts) and at least one train")
    return train, test[:n_test]
