"""A FIFO queue in front of the one decoder: one worker thread runs requests one at a time.

The decoder holds one request's cache and is not thread-safe, so a single thread owns it. The
event loop submits jobs and reads their results through a `Channel`; it never waits on the
decoder, so a long generation cannot stall other connections, health checks or metrics.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable

log = logging.getLogger("skipspec.server")

# A job's work: gets the job's cancel flag, which it checks between decode steps.
Work = Callable[[threading.Event], None]


class QueueFull(Exception):
    """More requests are waiting than the server accepts (`max_waiting`)."""


class Job:
    """One queued piece of work; `cancel()` drops it if it waits, or asks it to stop if it runs."""

    def __init__(self, work: Work, scheduler: FifoScheduler) -> None:
        self.work = work
        self.cancelled = threading.Event()
        self._scheduler = scheduler

    def cancel(self) -> None:
        self.cancelled.set()
        self._scheduler._drop(self)


class FifoScheduler:
    """Runs jobs in arrival order on one worker thread; at most `max_waiting` wait behind the running one."""

    def __init__(self, max_waiting: int) -> None:
        if max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {max_waiting}")
        self.max_waiting = max_waiting
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._running = 0
        self._current: Job | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return self._running

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="skipspec-decoder", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Cancel what waits, let the running job see its cancel flag, and stop the worker."""
        with self._cond:
            self._closed = True
            for job in [*self._queue, self._current]:
                if job is not None:
                    job.cancelled.set()
            self._queue.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, work: Work, *, force: bool = False) -> Job:
        """Queue `work`; raises QueueFull when `max_waiting` jobs already wait (`force`: queue anyway)."""
        job = Job(work, self)
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            # A job only waits when another runs or waits; an idle server always takes one.
            busy = self._running or self._queue
            if not force and busy and len(self._queue) >= self.max_waiting:
                raise QueueFull(f"{len(self._queue)} requests are already waiting")
            self._queue.append(job)
            self._cond.notify()
        return job

    def _drop(self, job: Job) -> None:
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._current = self._queue.popleft()
                self._running = 1
            try:
                job.work(job.cancelled)
            except Exception:  # work reports its own failures; this only keeps the worker alive
                log.exception("a queued job failed")
            finally:
                with self._cond:
                    self._running, self._current = 0, None


class Channel:
    """Items from the worker thread to one request's coroutine, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()

    def put(self, item) -> None:
        """Called from the worker thread."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop has closed: the server is going down, nobody reads this
            pass

    async def get(self):
        return await self._queue.get()
