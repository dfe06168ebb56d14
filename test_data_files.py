"""Data files as tasks (datafiles.py): parquet and save_to_disk directories written here, column mappings, one
file holding several tasks, and one-line errors naming the file, the row and the column. Needs
requirements-data.txt."""

import json

import pytest

pa = pytest.importorskip("pyarrow", reason="pip install -r requirements-data.txt")
datasets = pytest.importorskip("datasets", reason="pip install -r requirements-data.txt")
import pyarrow.parquet as pq  # noqa: E402

import tasks  # noqa: E402
import verify  # noqa: E402


def boxed(answer: str) -> str:
    return f"The answer is \\boxed{{{answer}}}."


def write_parquet(path, rows: list[dict]) -> str:
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return str(path)


def qa_rows(n: int, task: str | None = None) -> list[dict]:
    """n arithmetic rows under custom column names (question / solution), optionally tagged with a task."""
    tag = {"kind": task} if task else {}
    return [{"question": f"{task or 'sum'}: what is {i} + {i}?", "solution": str(2 * i), **tag}
            for i in range(n)]


def test_parquet_with_a_mapping_and_a_verifier_name_loads_and_scores(tmp_path):
    path = write_parquet(tmp_path / "arith.parquet", qa_rows(30))
    spec = f"{path}:prompt=question:answer=solution:verifier=exact"
    tasks.check_task_list(f"{spec},toy_copy")
    train, test = tasks.load_task(spec, n_train=100, n_test=10, seed=0)
    assert len(test) == 10 and len(train) == 20
    assert {e.task for e in train + test} == {"arith"}   # the file's stem
    assert not {e.question for e in train} & {e.question for e in test}
    assert (train, test) == tasks.load_task(spec, n_train=100, n_test=10, seed=0)
    assert all(verify.reward(boxed(e.answer), e) == 1.0 for e in train + test)
    assert all(verify.reward(boxed("x"), e) == 0.1 for e in train + test)


def test_one_file_with_a_task_column_is_several_tasks(tmp_path):
    rows = [r for pair in zip(qa_rows(12, "alpha"), qa_rows(12, "beta"), qa_rows(12, "gamma")) for r in pair]
    path = write_parquet(tmp_path / "mix.parquet", rows)
    loaded = tasks.load_tasks(f"{path}:prompt=question:answer=solution:verifier=exact:task=kind,toy_copy",
                              n_train=50, n_test=4, seed=0)
    assert [tr[0].task for tr, _ in loaded] == ["alpha", "beta", "gamma", "toy_copy"]
    for train, test in loaded[:3]:
        assert len(test) == 4 and len(train) == 8 and len({e.task for e in train + test}) == 1
        assert all(e.question.startswith(e.task) for e in train + test)
    with pytest.raises(ValueError, match="holds 3 tasks \\(alpha, beta, gamma\\); load it with load_tasks"):
        tasks.load_task(f"{path}:prompt=question:answer=solution:verifier=exact:task=kind", 5, 2)


def test_default_columns_info_split_struct_fields_and_chat_prompts(tmp_path):
    rows = [{"prompt": f"Make {i + 5} from 5 and {i}.", "answer": f"5 + {i}", "verifier": "countdown",
             "info": json.dumps({"numbers": [5, i], "target": i + 5}), "split": "test" if i < 2 else "train"}
            for i in range(7)]
    train, test = tasks.load_task(write_parquet(tmp_path / "cd.parquet", rows), n_train=10, n_test=2)
    assert [e.answer for e in test] == ["5 + 0", "5 + 1"] and len(train) == 5
    assert verify.reward(boxed("1 + 5"), test[1]) == 1.0 and verify.reward(boxed("5 + 5 - 4"), test[1]) == 0.1
    verl = [{"prompt": [{"role": "system", "content": "be brief"},
                        {"role": "user", "content": f"{i} squared?"}],
             "reward_model": {"ground_truth": str(i * i), "style": "rule"}, "data_source": "squares"}
            for i in range(6)]
    path = write_parquet(tmp_path / "verl.parquet", verl)
    spec = f"{path}:answer=reward_model.ground_truth:task=data_source:verifier=exact"
    train, test = tasks.load_task(spec, n_train=10, n_test=2)
    assert {e.task for e in train} == {"squares"}
    assert all(e.question.endswith("squared?") for e in train + test)
    assert all(e.answer == str(int(e.question.split()[0]) ** 2) for e in train + test)


def test_save_to_disk_directories_a_dataset_and_a_train_test_dict(tmp_path):
    rows = [{"prompt": f"p{i}", "answer": str(i), "verifier": "exact"} for i in range(9)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "one"))
    train, test = tasks.load_task(str(tmp_path / "one"), n_train=10, n_test=3, seed=1)
    assert len(train) == 6 and len(test) == 3 and train[0].task == "one"
    parts = {"train": datasets.Dataset.from_list(rows[:6]), "test": datasets.Dataset.from_list(rows[6:])}
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "two"))
    train, test = tasks.load_task(str(tmp_path / "two"), n_train=10, n_test=3)
    assert [e.answer for e in test] == ["6", "7", "8"]
    assert [e.answer for e in train] == [str(i) for i in range(6)]


def test_jsonl_takes_the_same_mapping_and_task_column(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [{"q": f"q{i}", "a": str(i), "verifier": "exact", "task": f"t{i % 2}"} for i in range(10)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    loaded = tasks.load_tasks(f"{path}:prompt=q:answer=a", n_train=10, n_test=2, seed=0)
    assert [(tr[0].task, len(tr), len(te)) for tr, te in loaded] == [("t0", 3, 2), ("t1", 3, 2)]


@pytest.mark.parametrize("rows,spec_tail,message", [
    (qa_rows(5), "", r"data.parquet: row 1: no column 'prompt' for prompt \(columns: question, solution\)"),
    (qa_rows(5), ":prompt=question:verifier=exact", r"data.parquet: row 1: no column 'answer' for answer"),
    (qa_rows(5), ":prompt=question:answer=solution:verifier=exact:task=kindd",
     r"row 1: no column 'kindd' for task"),
    ([{"prompt": "p", "answer": "a", "verifier": "exact"}] * 2, "",
     r"data.parquet: row 2: repeats the prompt of row 1"),
    ([{"prompt": f"p{i}", "answer": "a", "verifier": "exact" if i != 2 else "regex"} for i in range(4)], "",
     r"data.parquet: row 3: unknown verifier 'regex'"),
    (qa_rows(5), ":prompt=question:answer=solution:verifier=math:answr=x", r"'answr=x' is not key=column"),
])
def test_bad_files_get_one_line_naming_file_row_and_column(tmp_path, rows, spec_tail, message):
    spec = write_parquet(tmp_path / "data.parquet", rows) + spec_tail
    with pytest.raises(ValueError, match=message) as e:
        tasks.load_tasks(spec, n_train=10, n_test=1, seed=0)
    assert "\n" not in str(e.value)


def test_task_list_rejects_missing_files_and_duplicate_task_names(tmp_path):
    with pytest.raises(ValueError, match=r"^--tasks: task file .*nope.parquet does not exist$"):
        tasks.check_task_list(f"toy_copy,{tmp_path}/nope.parquet:prompt=q")
    rows = [{"prompt": f"p{i}", "answer": "1", "verifier": "exact", "task": "x"} for i in range(4)]
    a = write_parquet(tmp_path / "a.parquet", rows)
    b = write_parquet(tmp_path / "b.parquet", [{**row, "prompt": "q" + row["prompt"]} for row in rows])
    with pytest.raises(ValueError, match="yields task 'x' twice"):
        tasks.load_tasks(f"{a},{b}", n_train=5, n_test=1, seed=0)
