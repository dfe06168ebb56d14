"""trackers.py: records shaped like mtgrpo.py's log.jsonl go to TensorBoard, W&B (offline) and Trackio (a
local store), and the numbers are read back from what each wrote. Needs requirements-trackers.txt."""

import glob
import json
import sqlite3
import struct
import sys

import pytest

import trackers

TASKS = ["alpha", "beta"]
CONFIG = {"tasks": "alpha,beta", "eval_k": 8, "lr": 1e-6}
TRAIN = {"kind": "train", "step": 1, "z": [0.25, 0.75], "z_next": [0.5, 0.5], "batch_shares": [0.5, 0.5],
         "batch_groups": 4, "targets": [1, 3], "rho": [0.125, 0.0], "J": [0.5, 0.25], "I": [0.01, -0.02],
         "train_acc": [0.5, 0.25], "rounds": 2, "generated": [[2, 4], [1, 0]], "accepted": [[1, 2], [1, 0]],
         "prompts_generated": 7, "prompts_used": 4, "loss": 0.375, "grad_norm": 1.5, "reward_mean": 0.3,
         "response_len": 12.5, "seconds": 2.0, "seconds_gen": 1.5}
EVAL = {"kind": "eval", "step": 2, "acc": {"alpha": 0.625, "beta": 0.125}, "worst": 0.125, "avg": 0.375}
EXPECTED = {"z/alpha": 0.25, "z/beta": 0.75, "rho/alpha": 0.125, "J/beta": 0.25, "I/beta": -0.02,
            "train_acc/alpha": 0.5, "batch_shares/beta": 0.5, "targets/beta": 3, "generated/alpha": 3,
            "accepted/beta": 2, "rounds": 2, "loss": 0.375, "reward_mean": 0.3, "seconds_gen": 1.5}   # step 1
EXPECTED_EVAL = {"eval/alpha/mean@8": 0.625, "eval/beta/mean@8": 0.125, "eval/worst": 0.125,
                 "eval/average": 0.375}


def log_run(report_to: str, out_dir: str) -> None:
    tracker = trackers.open_trackers(report_to, out_dir, CONFIG)
    for record in ({"kind": "config", "lr": 1e-6}, TRAIN, {**TRAIN, "step": 2, "z": [0.5, 0.5]}, EVAL):
        tracker.log(record)
    tracker.close()


def check(series: dict[str, dict[int, float]]) -> None:
    """series[name][step] holds the values logged in TRAIN, its step-2 copy and EVAL."""
    for name, value in EXPECTED.items():
        assert series[name][1] == pytest.approx(value), name
    assert series["z/alpha"][2] == 0.5 and series["loss"][2] == 0.375
    for name, value in EXPECTED_EVAL.items():
        assert series[name] == {2: pytest.approx(value)}, name


def test_flatten_names_and_sums_per_round_lists():
    flat = trackers.flatten(TRAIN, TASKS, 8)
    assert {k: flat[k] for k in EXPECTED} == pytest.approx(EXPECTED)
    assert len(flat) == 8 * 2 + 2 * 2 + 10   # 8 per-task vectors, 2 per-round lists, 10 scalars
    assert trackers.flatten(EVAL, TASKS, 8) == EXPECTED_EVAL
    assert trackers.flatten({"kind": "config"}, TASKS, 8) == {}
    with pytest.raises(ValueError, match="record 'z' has 2 values for 3 task names"):
        trackers.flatten(TRAIN, ["a", "b", "c"], 8)


def test_none_is_a_null_tracker_and_bad_names_are_one_line(tmp_path):
    for report_to in ("", "none"):
        tracker = trackers.open_trackers(report_to, str(tmp_path), CONFIG)
        tracker.log(TRAIN)
        tracker.close()
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="unknown tracker 'mlflow'; choose from tensorboard, wandb, trackio"):
        trackers.open_trackers("tensorboard,mlflow", str(tmp_path), CONFIG)


def test_a_missing_package_names_the_requirements_file(tmp_path, monkeypatch):
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="wandb package: pip install -r requirements-trackers.txt"):
        trackers.open_trackers("wandb", str(tmp_path), CONFIG)


def test_tensorboard_event_file_reads_back(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install -r requirements-trackers.txt")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_run("tensorboard", str(tmp_path))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    check({name: {e.step: e.value for e in events.Scalars(name)} for name in events.Tags()["scalars"]})


def wandb_history(path: str) -> list[dict]:
    """The history rows of an offline run's .wandb file. wandb 0.31 writes it from its Go core and ships no
    Python reader, so this undoes its framing (LevelDB's log format: 32 KiB blocks of chunks, each with a
    7-byte header crc32 / length / type, after a 7-byte file header) and parses records with its protobuf."""
    from wandb.proto import wandb_internal_pb2

    data, block = open(path, "rb").read(), 32768
    pos, pending, rows = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:   # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):   # a FULL record, or the LAST chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items})
    return rows


def test_wandb_offline_run_reads_back(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="pip install -r requirements-trackers.txt")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log_run("wandb", str(tmp_path))
    [run_file] = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    series: dict[str, dict[int, float]] = {}
    for row in wandb_history(run_file):
        for name, value in row.items():
            series.setdefault(name, {})[row["_step"]] = value
    check(series)


def test_trackio_local_store_reads_back(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKIO_PROJECT", "mtgrpo-test")
    pytest.importorskip("trackio", reason="pip install -r requirements-trackers.txt")
    from trackio.sqlite_storage import SQLiteStorage

    for module in [m for name, m in sys.modules.items() if name.split(".")[0] == "trackio"]:
        if hasattr(module, "TRACKIO_DIR"):   # read from $TRACKIO_DIR once, at import (TRL may import trackio)
            monkeypatch.setattr(module, "TRACKIO_DIR", tmp_path / "store")

    log_run("trackio", str(tmp_path))
    db_path = SQLiteStorage.get_project_db_path("mtgrpo-test")
    assert str(db_path).startswith(str(tmp_path)), f"trackio imported before TRACKIO_DIR was set: {db_path}"
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT step, metrics FROM metrics ORDER BY id").fetchall()
    series: dict[str, dict[int, float]] = {}
    for step, metrics in rows:
        for name, value in json.loads(metrics).items():
            series.setdefault(name, {})[step] = value
    check(series)
