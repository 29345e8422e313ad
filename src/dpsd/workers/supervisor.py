"""The supervisor of ``dpsd serve --workers N``: starts N worker processes, starts again one
that dies, and stops them all on SIGTERM or SIGINT.

The listening sockets are bound once, by the supervisor, before it starts the workers;
each worker is a fork of it and inherits them, so every worker accepts on the same sockets
(port 0 still means one port, found before any worker runs) and a connection waiting in a
socket's backlog is taken by whichever worker is free first, also while another is busy,
stopped or starting again. A worker that dies leaves the sockets open in the others.

The supervisor itself runs no event loop and no thread (a fork copies only the thread that
calls it): a loop over ``selectors`` waits for signals (through ``signal.set_wakeup_fd``),
for the workers' messages (dpsd.workers.channel) and for the time to start a worker again.
Each worker is told to end with SIGTERM when the supervisor does, even when it is killed
(``PR_SET_PDEATHSIG``), so no worker outlives it.

- A worker that dies before every worker has once been ready ends the start: the others
  are stopped and the supervisor exits with the worker's exit status (the worker has said
  why, in one line).
- Later, a worker that dies is started again: at once when it had run for
  ``STEADY_SECONDS`` at least; else after ``FIRST_BACKOFF_SECONDS``, then twice as long
  each time it dies that soon again (up to ``MAX_BACKOFF_SECONDS``).
- SIGTERM or SIGINT: every worker gets SIGTERM and finishes what it is doing (its requests
  in flight, its assignments talking to webhooks and hubs); one still running after
  ``stop_seconds`` is killed. The supervisor then exits with 0.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from dpsd.workers.channel import READY, TRUST, ChannelError, Lines

STEADY_SECONDS = 10.0
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
SEND_TIMEOUT_SECONDS = 2.0
READ_SIZE = 256 * 1024
PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
HANDLED_SIGNALS = (*STOP_SIGNALS, signal.SIGCHLD)
logger = logging.getLogger("dpsd.supervisor")

Work = Callable[[int, socket.socket], int]
"""What a worker does, given its number (1 to N) and its end of the channel: its exit code."""


@dataclass(slots=True)
class _Worker:
    number: int
    pid: int
    channel: socket.socket
    started: float
    lines: Lines = field(default_factory=Lines)
    ready: bool = False


class Supervisor:
    """``work`` runs in each worker process. ``on_serving`` is told the worker process ids
    once every worker is ready, and again whenever a worker started again is ready;
    ``on_exit`` is told of each worker process that ended."""

    def __init__(
        self,
        count: int,
        work: Work,
        *,
        on_serving: Callable[[list[int]], None],
        on_exit: Callable[[int], None] = lambda _pid: None,
        stop_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._count = count
        self._work = work
        self._on_serving = on_serving
        self._on_exit = on_exit
        self._stop_seconds = stop_seconds
        self._clock = clock
        self._selector = selectors.DefaultSelector()
        self._workers: dict[int, _Worker] = {}
        self._due: dict[int, float] = {}  # worker number -> when to start it again
        self._backoff: dict[int, float] = {}
        self._serving = False
        self._stopping = False
        self._kill_at: float | None = None
        self._exit_code = 0
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._pid = os.getpid()

    def run(self) -> int:
        """Start the workers and supervise them until they have all ended: the exit code."""
        wake_read, wake_write = socket.socketpair()
        self._wakeup = (wake_read, wake_write)
        for end in self._wakeup:
            end.setblocking(False)
        previous = signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        handlers = {signum: signal.signal(signum, _note) for signum in HANDLED_SIGNALS}
        self._selector.register(wake_read, selectors.EVENT_READ)
        try:
            for number in range(1, self._count + 1):
                if not self._start(number):
                    self._exit_code = 1
                    self.stop()
                    break
            while self._workers or (self._due and not self._stopping):
                for key, _ in self._selector.select(self._wait_time()):
                    if key.fileobj is wake_read:
                        self._on_signals(wake_read)
                    else:
                        self._on_readable(key.data)
                self._reap()
                self._start_due()
                self._kill_late()
            return self._exit_code
        finally:
            signal.set_wakeup_fd(previous)
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            self._selector.close()
            for end in self._wakeup:
                end.close()

    def _start(self, number: int) -> bool:
        """Fork worker ``number``; False when the system would not (said in the log)."""
        try:
            parent_end, child_end = socket.socketpair()
        except OSError as error:
            return _cannot_start(number, error)
        # Signals wait until the worker has its own handlers: the supervisor's would take a
        # signal meant for the worker as its own.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as error:
            parent_end.close()
            child_end.close()
            return _cannot_start(number, error)
        finally:
            if os.getpid() == self._pid:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        if pid == 0:  # the worker: never returns
            self._become_worker(number, parent_end, child_end)
        child_end.close()
        parent_end.settimeout(SEND_TIMEOUT_SECONDS)
        worker = _Worker(number, pid, parent_end, self._clock())
        self._workers[pid] = worker
        self._selector.register(parent_end, selectors.EVENT_READ, worker)
        logger.info("worker %(worker)d started", {"worker": number, "pid": pid, "event": "started"})
        return True

    def _become_worker(
        self, number: int, parent_end: socket.socket, child_end: socket.socket
    ) -> NoReturn:
        code = 1
        try:
            supervisor = os.getppid()
            signal.set_wakeup_fd(-1)
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
            parent_end.close()
            for other in self._workers.values():
                other.channel.close()
            if self._wakeup is not None:
                for end in self._wakeup:
                    end.close()
            self._selector.close()  # the worker's copy only: nothing is unregistered
            _end_with_parent()
            if os.getppid() != supervisor:  # it died before the line above
                os._exit(1)
            code = self._work(number, child_end)
        except BaseException:  # noqa: BLE001  the worker ends here, whatever happened
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _wait_time(self) -> float | None:
        moments = list(self._due.values())
        if self._kill_at is not None:
            moments.append(self._kill_at)
        if not moments:
            return None
        return max(0.0, min(moments) - self._clock())

    def _on_signals(self, wake_read: socket.socket) -> None:
        with contextlib.suppress(BlockingIOError):
            received = wake_read.recv(READ_SIZE)
            if any(signum in received for signum in STOP_SIGNALS):
                self.stop()

    def stop(self) -> None:
        """Tell every worker to finish and end; none is started again."""
        if self._stopping:
            return
        self._stopping = True
        self._due.clear()
        self._kill_at = self._clock() + self._stop_seconds
        for pid in self._workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _on_readable(self, worker: _Worker) -> None:
        try:
            data = worker.channel.recv(READ_SIZE)
        except OSError:
            data = b""
        if not data:  # the worker is ending; _reap hears of it
            self._selector.unregister(worker.channel)
            return
        try:
            messages = worker.lines.feed(data)
        except ChannelError as error:
            logger.error(
                "worker %(worker)d sent %(error)s", {"worker": worker.number, "error": str(error)}
            )
            self._selector.unregister(worker.channel)
            return
        for line, content in messages:
            if content["kind"] == READY:
                worker.ready = True
                self._check_serving()
            elif content["kind"] == TRUST:
                self._pass_on(worker, line)

    def _pass_on(self, sender: _Worker, line: bytes) -> None:
        for worker in self._workers.values():
            if worker is sender:
                continue
            try:
                worker.channel.sendall(line)
            except OSError as error:
                logger.warning(
                    "worker %(worker)d was not told of certificates trusted by another "
                    "(it reloads them from the store within 30 s): %(error)s",
                    {"worker": worker.number, "error": str(error)},
                )

    def _check_serving(self) -> None:
        ready = [worker for worker in self._workers.values() if worker.ready]
        if self._stopping or len(ready) < self._count:
            return
        self._serving = True
        self._on_serving(sorted((w.pid for w in ready), key=self._number_of))

    def _number_of(self, pid: int) -> int:
        return self._workers[pid].number

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._workers.pop(pid, None)
            if worker is not None:
                self._ended(worker, os.waitstatus_to_exitcode(status))

    def _ended(self, worker: _Worker, code: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(worker.channel)
        worker.channel.close()
        self._on_exit(worker.pid)
        facts = {"worker": worker.number, "pid": worker.pid, "exit": _exit_reason(code)}
        if self._stopping:
            logger.info("worker %(worker)d stopped", {**facts, "event": "stopped"})
            return
        if not self._serving:
            logger.error(
                "worker %(worker)d ended before serving (%(exit)s): dpsd stops",
                {**facts, "event": "failed"},
            )
            self._exit_code = code if code > 0 else 1
            self.stop()
            return
        lived = self._clock() - worker.started
        backoff = 0.0
        if lived < STEADY_SECONDS:
            last = self._backoff.get(worker.number, 0.0)
            backoff = min(MAX_BACKOFF_SECONDS, max(FIRST_BACKOFF_SECONDS, 2 * last))
        self._backoff[worker.number] = backoff
        self._due[worker.number] = self._clock() + backoff
        logger.warning(
            "worker %(worker)d ended (%(exit)s); starting it again in %(backoff)gs",
            {**facts, "backoff": backoff, "event": "died"},
        )

    def _start_due(self) -> None:
        now = self._clock()
        for number, due in list(self._due.items()):
            if due <= now and not self._stopping:
                del self._due[number]
                if not self._start(number):
                    self._due[number] = now + MAX_BACKOFF_SECONDS

    def _kill_late(self) -> None:
        if self._kill_at is None or self._clock() < self._kill_at:
            return
        for worker in self._workers.values():
            logger.warning(
                "worker %(worker)d did not stop within %(seconds)gs: killed",
                {"worker": worker.number, "pid": worker.pid, "seconds": self._stop_seconds},
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
        self._kill_at = None


def _cannot_start(number: int, error: OSError) -> bool:
    logger.error(
        "cannot start worker %(worker)d: %(error)s", {"worker": number, "error": str(error)}
    )
    return False


def _note(_signum: int, _frame: object) -> None:
    """Signals are read from the wakeup socket; the handler only has to exist."""


def _end_with_parent() -> None:
    """This process gets SIGTERM when its parent ends (Linux; elsewhere nothing)."""
    name = ctypes.util.find_library("c")
    try:
        prctl = ctypes.CDLL(name, use_errno=True).prctl if name else None
    except (OSError, AttributeError):
        prctl = None
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _exit_reason(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
