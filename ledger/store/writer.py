"""The store's writer thread, group commit on it, and how callers on any thread wait for it.

Every write transaction of a store runs on that store's one writer thread, which owns the
write connection (see DESIGN in `ledger/store/base.py`). Callers reach it with one hand-off:
a job goes into a queue the thread is blocked on, and the caller is woken once:
- a plain thread (the blocking `ThreadSafePositionManager`) waits on a `threading.Event`;
- an asyncio task awaits a future resolved through `loop.call_soon_threadsafe` (one loop
  wake-up); other async backends wait for the Event on a worker thread (correct, slower).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

import anyio

from ledger.errors import StoreUnavailable

log = logging.getLogger("ledger.store")

T = TypeVar("T")
J = TypeVar("J")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # a cancelled caller no longer waits
        future.set_result(None)


class Completion:
    """A one-shot signal: set once on the writer thread, waited for by the caller.

    Made on the caller's side: `Completion(blocking=True)` for a thread that will block,
    `Completion()` inside a running event loop for a task that will await.
    """

    __slots__ = ("_event", "_future", "_loop")

    def __init__(self, *, blocking: bool = False) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._future: asyncio.Future[None] | None = None
        self._event: threading.Event | None = None
        if not blocking:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:  # another async backend: wait for the Event on a thread
                self._loop = None
        if self._loop is not None:
            self._future = self._loop.create_future()
        else:
            self._event = threading.Event()

    def set(self) -> None:
        """Wake the waiter (from any thread); never raises."""
        if self._event is not None:
            self._event.set()
            return
        assert self._loop is not None and self._future is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(_resolve, self._future)

    def wait_blocking(self) -> None:
        if self._event is None:
            raise RuntimeError("this Completion was made for an event loop")
        self._event.wait()

    async def wait(self) -> None:
        if self._future is not None:
            await self._future
            return
        assert self._event is not None
        await anyio.to_thread.run_sync(self._event.wait, abandon_on_cancel=True)


class _Call(Generic[T]):
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[], T], done: Completion) -> None:
        self.fn = fn
        self.done = done
        self.result: T | None = None
        self.error: BaseException | None = None

    def __call__(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the caller's thread, never lost here
            self.error = exc
        finally:
            self.done.set()

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class WriterThread:
    """One daemon thread running submitted callables in order; it never dies of one."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            fn = self._queue.get()
            if fn is None:
                return
            try:
                fn()
            except BaseException:  # the callables settle their own callers; keep going
                log.exception("a job on the store's writer thread failed")

    @property
    def on_thread(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def submit(self, fn: Callable[[], None]) -> None:
        """Queue fn; raises StoreUnavailable once the thread is stopping."""
        with self._lock:
            if self._stopped:
                raise StoreUnavailable("the store is closed")
            self._queue.put(fn)

    async def call(self, fn: Callable[[], T]) -> T:
        """Run fn on the writer thread and return its result: one hand-off each way."""
        call = _Call(fn, Completion())
        self.submit(call)
        await call.done.wait()
        return call.outcome()

    def call_blocking(self, fn: Callable[[], T]) -> T:
        """The same from a plain thread (inline when already on the writer thread)."""
        if self.on_thread:
            return fn()
        call = _Call(fn, Completion(blocking=True))
        self.submit(call)
        call.done.wait_blocking()
        return call.outcome()

    def stop(self) -> None:
        """Run what is queued, then end the thread (waits for it unless called from it)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._queue.put(None)
        if not self.on_thread:
            self._thread.join()


class GroupCommit(Generic[J]):
    """Group commit: jobs from any thread queue up, and the writer thread takes everything
    queued (up to max_group) as one group, so callers arriving during a transaction share the
    next one and its fsync. `process(group)` runs on the writer thread and settles each job.
    """

    def __init__(
        self,
        writer: WriterThread,
        process: Callable[[list[J]], None],
        *,
        max_group: int = 1000,
    ) -> None:
        self._writer = writer
        self._process = process
        self._max_group = max_group
        self._lock = threading.Lock()
        self._pending: deque[J] = deque()
        self._draining = False

    def submit(self, job: J) -> None:
        """Queue a job; raises StoreUnavailable when the store is closed."""
        with self._lock:
            self._pending.append(job)
            if self._draining:  # the writer takes it with the next group
                return
            self._draining = True
        try:
            self._writer.submit(self._drain)
        except BaseException:
            with self._lock:
                self._pending.remove(job)
                self._draining = False
            raise

    def _drain(self) -> None:
        pending = self._pending
        while True:
            with self._lock:
                if not pending:
                    self._draining = False
                    return
                count = min(len(pending), self._max_group)
                group = [pending.popleft() for _ in range(count)]
            try:
                self._process(group)
            except BaseException:  # process settles its jobs in a finally; keep draining
                log.exception("group commit failed outside its own guards")
