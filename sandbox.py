"""
Score in a child process with a time limit. Some scorers parse model output with sympy, whose parser calls
Python `eval` (reasoning-gym's `score_answer`s, math-verify): an answer like `9**9**9` never returns and
`__import__("os").system(...)` runs. Such scorers run here, in one persistent worker process, never in the
trainer's: a call that overruns its limit (or crashes the worker) gets the default value, and the worker is
killed, with any process it started, and replaced.

    results = call_all(scorers.math_equal, [(gold, answer), ...], timeout=5.0, default=None,
                       warmup=scorers.warm_math)

The worker is a plain `python -c` child talking over two pipes, not a multiprocessing "spawn" process:
spawn re-imports the parent's __main__ (mtgrpo.py, hence torch) in every worker it starts, and a worker
restarts after each timeout. Functions travel by reference (pickle), so they must be module-level and
importable from the parent's sys.path, which the worker inherits. A batch is one message and results stream
back one per call, so a call costs a pipe round trip, not a process start, and each call has its own limit.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any, Callable

STARTUP_TIMEOUT = 120.0   # seconds for a warmup (imports: reasoning_gym takes ~4 s), not counted as a call


class Sandbox:
    """One worker process, started on first use and restarted after a timeout or a crash."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._send: Connection | None = None
        self._recv: Connection | None = None
        self._warm: set[Callable] = set()
        self._lock = threading.Lock()

    def _start(self) -> None:
        """Start the worker: it reads requests from one pipe and writes results to the other."""
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(os.path.abspath(p or ".") for p in sys.path))
        code = f"import sandbox; sandbox._serve({to_child_r}, {from_child_w})"
        self._proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(to_child_r, from_child_w),
                                      env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      start_new_session=True)
        os.close(to_child_r)
        os.close(from_child_w)
        self._send = Connection(to_child_w, readable=False)
        self._recv = Connection(from_child_r, writable=False)
        self._warm = set()

    def kill(self) -> None:
        """End the worker and everything it started (its own session's process group)."""
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._proc.wait()
        self._send.close()
        self._recv.close()
        self._proc = None

    def _reply(self, timeout: float) -> tuple[str, Any] | None:
        """The worker's next message; None (the worker killed) if none comes within `timeout` or it died."""
        try:
            if self._recv.poll(timeout):
                return self._recv.recv()
        except (EOFError, OSError):
            pass
        self.kill()
        return None

    def call_all(self, func: Callable, args: list[tuple], timeout: float, default: Any,
                 warmup: Callable | None = None) -> list:
        """[func(*a) for a in args], each call within `timeout` seconds, else `default` (so is an exception).
        `warmup()` runs first in a fresh worker with a long limit (imports): it never eats a call's time."""
        out: list = []
        with self._lock:
            while len(out) < len(args):
                if self._proc is None:
                    self._start()
                if warmup is not None and warmup not in self._warm:
                    self._send.send(("run", warmup, [()]))
                    message = self._reply(STARTUP_TIMEOUT)
                    if message is None or message[0] != "ok":
                        raise RuntimeError(f"sandbox: warmup {warmup.__qualname__} failed: "
                                           f"{message[1] if message else f'no reply in {STARTUP_TIMEOUT} s'}")
                    self._warm.add(warmup)
                pending = args[len(out):]
                self._send.send(("run", func, pending))
                for _ in pending:
                    message = self._reply(timeout)
                    if message is None:   # over the limit or crashed: this call fails, the rest go again
                        out.append(default)
                        break
                    out.append(message[1] if message[0] == "ok" else default)   # a raised exception: default
        return out


def _serve(read_fd: int, write_fd: int) -> None:
    """The worker's loop: per ("run", func, args) request, one ("ok", result) or ("error", text) per call."""
    requests, results = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    while True:
        try:
            _, func, args = requests.recv()
        except EOFError:       # the parent is gone
            return
        for a in args:
            try:
                results.send(("ok", func(*a)))
            except BaseException as e:   # noqa: BLE001 - a scorer's failure is a score; the worker lives on
                results.send(("error", f"{type(e).__name__}: {e}"[:200]))


_SANDBOX = Sandbox()
atexit.register(_SANDBOX.kill)


def call_all(func: Callable, args: list[tuple], timeout: float, default: Any,
             warmup: Callable | None = None) -> list:
    """Sandbox.call_all on the process's shared worker."""
    return _SANDBOX.call_all(func, args, timeout, default, warmup)
