"""Who runs a store's write transactions, group commit, and how callers wait for them.

DESIGN: the writer's role, taken by the caller when it is free
--------------------------------------------------------------
Write transactions of a store never overlap: whoever runs one holds the store's *writer
role* (`WriterThread`'s role lock). Two kinds of thread take it:

- The caller itself, when no group is being drained. A command costs what SQLite costs (one
  fsync at synchronous=FULL) plus its own CPU: no hand-off at all. A hand-off between
  threads is a wake-up of a sleeping thread each way, about 50 µs each on the 2-core
  machines the benchmarks run on, more than a whole transaction at synchronous=NORMAL.
  - A plain thread (the blocking `ThreadSafePositionManager`) runs the group inline, first
    waiting for the role if another group (of another queue, or the writer thread's) holds it.
    With the role free it runs its job right where it is, before queueing it
    (`GroupCommit.run_blocking`, as `run_now` does on a loop): nobody else can see the job,
    so its Completion makes no lock, and no group is taken under the lock.
  - An asyncio task first yields once to its loop (its lead runs in a task of the loop after
    the tasks already scheduled, see the DESIGN note on interrupts), so every task already
    scheduled in this loop joins the group (500 tasks started at once commit in one
    transaction, on the loop, without a thread), then runs it on the loop's thread. With
    nothing scheduled to join it skips that yield (a whole turn of the loop; one is still
    taken every _MAX_SKIPPED_YIELDS), and a store append (`GroupCommit.run_now`) then runs its job
    right where it is queued, before anyone can see it: no future, no wake-up at all.
    The loop is held for one transaction: its CPU and, at synchronous=FULL, one fsync
    (about 0.2-0.4 ms here). It is never held waiting for another writer: a store that
    would have to wait for a lock (another process writing the same SQLite file, or any
    PostgreSQL transaction, which is network I/O) raises `WouldWait` before doing
    anything, and the group goes to the thread.
- The lone lane (`run_now`): a task's usual sequential write takes the role first, without
  the queue's lock. Holding it, no group runs or can start, and `_draining` False says
  nobody leads (a job is queued only with a lead set), so the job runs right there,
  unqueued (`_run_alone`), and the role is freed: no lock, no lead taken or given back. A
  caller arriving meanwhile finds nobody draining and leads as it would have anyway (a
  plain thread waits for the role, then runs its group; a task hands its group to the
  writer thread). When the lane is not clear (someone draining, the writer stopping, the
  loop with anything ready to join the job, or not led from last) the role is let go and
  the job goes the general way above. A plain thread's lone job takes the lead first (under
  the lock), so that jobs queued behind it go to the writer thread in one group.
- The store's *writer thread*, a daemon that owns the role while it runs what is queued to
  it: groups that arrived while someone else was writing (one hand-off each way, shared by
  the whole group), groups that would wait, and everything a backend does that is not a
  group (opening, closing). Other async backends than asyncio always hand off.

Callers are woken once: a plain thread through a `threading.Event`, an asyncio task through
its future (resolved directly on its own loop, through `call_soon_threadsafe` from another
thread). Nothing is acknowledged before the group's transaction commits (see
`EventStore.run_transaction`).

DESIGN: an interrupt anywhere in the write path
-----------------------------------------------
A signal's Python handler (SIGINT's KeyboardInterrupt, a bot's handler raising SystemExit)
runs in the main thread between two instructions: right after a C call returned (a
`lock.acquire()` that took the lock, before the `try:` that would give it back), at a
function's entry, at a backward jump. The caller's thread holds four things on the way: the
queue's lock, the lead of its queue (`_draining`, whoever set it drains), the writer role, and
the role's held wake-ups (thread-local). Left held, every later write and `close()` wait for
ever. No `try` placed after an acquire can close that window, and widening every `try` still
leaves the steps that mark who holds what. So each is made recoverable instead: whether this
thread holds it is a fact set in one step, read back by one recovery.

- The role and the locks are `_thread.RLock`s, whose ownership is set by the C acquire itself:
  `_is_owned()` answers "did my acquire return?" with no step in between. RLock may only be
  released by its owner: the role is never handed between threads, each holder frees it on
  its own thread. `with lock:` alone would do for a lock taken blocking (no handler runs
  between a C `__enter__` and its block in CPython 3.11, tests/test_write_role_interrupts.py
  shows it), but the role is taken without blocking (`acquire(False)`), which `with` cannot;
  and a `with` whose block ends normally calls `__exit__` after instructions its exception
  table leaves out. The cost: an RLock's acquire and release are a few C instructions more.
- The held wake-ups are one `_Held` list made first, then stored in one step; it names its
  writer and the list before it, so a recovery restores it and wakes what it holds (waking is
  idempotent; done before the list is restored, so an interrupt in it finds them again).
- The lead needs no owner: a drainer too many is harmless (each takes its jobs under the
  lock), none while jobs are queued hangs them. A recovery drops the lead when nothing is
  queued, else hands it to the writer thread. No Python function can guard its own first
  instruction (a handler runs at a function's entry), so the lead is never handed to one
  without a guard around the call. A task that leads after a turn of its loop does so in a
  generator-based coroutine (`_lead_and_wait`) started inside the caller's guard, up to a
  first `yield` inside its own: when the task awaits it, it resumes there, guarded (a
  native coroutine's first instruction would run in the caller's `await`, unguarded).
  Closed unawaited (garbage collection, anywhere), it takes nothing: the writer drains.
- RLock's re-entrance is never used (a recovery would free an outer holder's role): a thread
  holding the role never asks for it again (a blocking write there is refused, `run_blocking`;
  a task's writes run only from its own steps, never inside a group's synchronous process;
  no finalizer of ours takes anything).
- A group is noted as taken (`_taken`) before its jobs leave the queue, so each job is queued
  or taken at every instruction; a leader interrupted before process's own guards settled
  a job (its Completion is not among the role's held wake-ups) puts it back (`_untake`).

Every entry point a caller's thread runs (`run_now`, `run`, `run_blocking`, `_lead_on_loop`,
`WriterThread.try_run`) is one `try` whose `except BaseException` recovers (`_recover`,
`WriterThread._let_go`) and re-raises: free on the usual path (an exception table entry), and
the usual path's own releases stay plain statements inside it, so an interrupt between any
two of them is recovered too (`run_now` has two: its lone lane's, then the general way's;
between the two this thread holds nothing). The interrupted caller hears
its exception; its job, if it was still queued, is taken back (not run), else it was run and
settled. A second signal landing
inside the recovery itself is not covered (no Python code can be).

A leader's interrupt is its own, never its followers': a signal lands anywhere the main thread
runs, the decision of another thread's job inside the group's transaction included. A group's
process asks `signalled_here` whether a KeyboardInterrupt or SystemExit raised there may be a
signal's: then this thread hears it, and the group, surely not stored, is left unsettled, so
the leader puts it back (`_untake`) and the writer thread runs it again (the leader's own job
taken out by its recovery); stored, each caller hears its result. Elsewhere no signal lands:
one raised in a job's decision is that job's own (its caller hears it, the group fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import types
from _thread import RLock, get_ident
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import anyio

from ledger.errors import StoreUnavailable

log = logging.getLogger("ledger.store")

T = TypeVar("T")


class WouldWait(Exception):
    """Raised by `run_transaction`, before it changed anything, when it may not wait for a
    lock (`WriterThread.may_wait` is False) and the lock is taken: the group goes to the
    writer thread instead. Never reaches a caller."""


class _Role(RLock):  # type: ignore[misc]  # final in typeshed; subclassable in CPython
    """The writer role: an RLock (see DESIGN: its owner is set by the acquire itself)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def _is_owned(self) -> bool: ...

    def locked(self) -> bool:
        """Whether any thread holds it (for diagnostics and tests; not on the write path)."""
        if self._is_owned():
            return True
        if self.acquire(False):
            self.release()
            return False
        return True


def _owned(lock: RLock) -> bool:
    return lock._is_owned()  # type: ignore[attr-defined, no-any-return]  # not in typeshed


class _Held(list["Completion"]):
    """The Completions set on a thread while it holds one writer role (see _Wakeups): the
    writer whose role it is and the list held before (a thread may hold two stores' roles,
    one inside the other), so a recovery finds them (WriterThread._let_go)."""

    __slots__ = ("before", "writer")
    before: _Held | None
    writer: WriterThread


class _Wakeups(threading.local):
    """Completions set on this thread while it holds a writer role: woken once it has freed
    the role, so a woken caller's next write finds the role free (no needless hand-off)."""

    held: _Held | None = None


_wakeups = _Wakeups()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # a cancelled caller no longer waits
        future.set_result(None)


def _wake_held(held: _Held, loop: asyncio.AbstractEventLoop | None) -> None:
    """Wake the callers whose Completions were held (after their thread freed the role),
    then restore the thread's wake-ups held before. Run again after an interrupt in it
    (WriterThread._let_go) it wakes them again, which wakes nobody twice; the list is
    restored last, so until then a recovery finds it."""
    before = held.before
    if held:
        if before is not None:  # still inside another role of this thread: after that one
            before.extend(held)
        else:
            # Completion._wake for each, the loop looked up once: a group of 500 tasks of
            # this thread's own loop is 500 futures resolved here, no other wake-up
            if loop is None:
                loop = asyncio._get_running_loop()
            for done in held:
                future = done._future
                if future is not None and done._loop is loop:
                    if not future.done():  # a cancelled caller no longer waits
                        future.set_result(None)
                elif future is not None or done._blocked is not None:
                    done._wake()
                # else: deferred, never made: its task ran the job itself and nobody waits
    _wakeups.held = before


def signalled_here(waiter: Completion | None = None) -> bool:
    """Whether a KeyboardInterrupt or SystemExit raised on this thread while it ran a group
    (inside the job whose caller waits on `waiter`, if given) may be a signal's, so this
    thread's own and not the job's. Python runs signal handlers in the main thread only; a job
    of a task of this thread's own loop is this thread's already (its caller hears it)."""
    if get_ident() != threading.main_thread().ident:
        return False
    loop = None if waiter is None else waiter._loop
    return loop is None or loop is not asyncio._get_running_loop()


# An inline leader that skipped its yield this many times in a row on its loop yields anyway
# (run_now: takes a turn of the loop right after its job, nothing being ready to join it).
# A command that skips it never yields at all (its future is resolved before it is awaited,
# or never made), and `_ready` cannot show what the loop has not polled yet: a due timer, a
# readable socket. A task awaiting command after command would starve every timer and all
# I/O of its loop (a timeout around it would never fire); this bounds the wait to a few
# transactions, at a sixteenth of the turn's cost. (Counted per queue, under its lock, see
# GroupCommit._yield_first, instead of in a thread-local read and written on every lead.)
_MAX_SKIPPED_YIELDS = 16


@types.coroutine
def _turn() -> Generator[None, None, None]:
    """One turn of the loop, owed after a job run without a yield (`run_now`), as
    `asyncio.sleep(0)` takes it (a bare yield), but a generator-based coroutine: an interrupt
    landing between `run_now` returning it and its caller's `await` drops it unawaited, which
    a native coroutine reports as a RuntimeWarning ("never awaited") when it is collected."""
    yield


class Completion:
    """A one-shot signal: set once by whoever ran the job, waited for by the caller.

    Made on the caller's side: `Completion(blocking=True)` for a thread that will block,
    `Completion()` inside a running event loop for a task that will await.
    `deferred_completion()` (inside a running loop) makes its future only once someone
    else may set it: for a job handed to `GroupCommit.run_now` only (a task that runs its
    job itself never makes one; set, a Completion without a future wakes nobody).
    """

    __slots__ = ("_blocked", "_future", "_loop")

    def __init__(self, *, blocking: bool = False) -> None:
        # no running asyncio loop: another async backend, which waits for the lock on a thread
        loop = None if blocking else asyncio._get_running_loop()
        self._loop: asyncio.AbstractEventLoop | None = loop
        # for a thread: a lock held until set (cheaper to make than a threading.Event, and a
        # leader that ran its own job never waits on it)
        self._blocked: threading.Lock | None = None
        if loop is not None:
            self._future: asyncio.Future[None] | None = loop.create_future()
            return
        self._future = None
        blocked = self._blocked = threading.Lock()
        blocked.acquire()

    @property
    def on_asyncio(self) -> bool:
        """True when the waiter is a task of an asyncio loop (it may run its group inline)."""
        return self._loop is not None

    def set(self) -> None:
        """Wake the waiter (from any thread; on a thread holding a writer role, once it has
        freed it); never raises."""
        if self._future is None and self._blocked is None:  # deferred, never made: its
            return  # task ran the job itself (GroupCommit.run_now), nobody waits
        held = _wakeups.held
        if held is not None:
            held.append(self)
            return
        self._wake()

    @staticmethod
    def set_all(completions: Sequence[Completion]) -> None:
        """`set` each, this thread's held wake-ups looked up once (a thread-local read costs
        about as much as the rest of a set): a group settles its jobs at once. A group whose
        Completions were all deferred and never made (a task's lone job, run by itself:
        GroupCommit.run_now) wakes nobody, and reads nothing."""
        for done in completions:
            if done._future is not None or done._blocked is not None:
                break
        else:
            return
        held = _wakeups.held
        if held is not None:
            held.extend(completions)
            return
        for done in completions:
            done._wake()

    def _arm(self) -> None:
        """Make a deferred blocking Completion's lock (see deferred_blocking_completion):
        before its job is queued where another thread may settle it."""
        if self._blocked is None and self._loop is None:
            blocked = self._blocked = threading.Lock()
            blocked.acquire()

    def _wake(self) -> None:
        if self._blocked is not None:
            with contextlib.suppress(RuntimeError):  # set already
                self._blocked.release()
            return
        if self._future is None:  # deferred, never made: its task ran the job itself
            return
        assert self._loop is not None
        if asyncio._get_running_loop() is self._loop:  # its own loop ran the job: no wake-up
            _resolve(self._future)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(_resolve, self._future)

    def wait_blocking(self) -> None:
        if self._blocked is None:
            raise RuntimeError("this Completion was made for an event loop")
        blocked = self._blocked
        blocked.acquire()
        try:  # noqa: SIM105 (a `try` costs nothing unless it raises; suppress() is a call)
            blocked.release()  # set stays set for any later wait
        except RuntimeError:  # set again meanwhile: a recovery wakes again (_wake_held)
            pass

    def wait(self) -> Awaitable[None]:
        """What the waiter awaits: on asyncio its future itself (no coroutine of its own to
        make and to step through when it is resolved), else a wait on a worker thread."""
        if self._future is not None:
            return self._future
        return anyio.to_thread.run_sync(self.wait_blocking, abandon_on_cancel=True)


def deferred_blocking_completion() -> Completion:
    """A Completion for a plain thread's job handed to `GroupCommit.run_blocking`, its lock
    not made yet: made (and taken) only when the job is queued where someone else may settle
    it (`GroupCommit._enter`, `_queue_alone`). A thread that runs its job itself, as the usual
    sequential command does, never makes one (set unmade, it wakes nobody)."""
    done = Completion.__new__(Completion)
    done._loop = None
    done._future = None
    done._blocked = None
    return done


def deferred_completion() -> Completion:
    """A Completion for a job handed to `GroupCommit.run_now` (see Completion): on a task of
    an asyncio loop, its future not made yet; elsewhere as `Completion()`. Made without a
    keyword argument to parse or an __init__ to call: every append makes one."""
    loop = asyncio._get_running_loop()
    if loop is None:
        return Completion()
    done = Completion.__new__(Completion)
    done._loop = loop
    done._blocked = None
    done._future = None
    return done


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
    """The writer role of one store (see DESIGN above) and its daemon thread, which runs
    submitted callables in order, each holding the role; it never dies of one."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = RLock()  # an RLock: see DESIGN (an interrupt anywhere in the write path)
        self._stopped = False
        self._role = _Role()
        self._holder: int | None = None  # the thread holding the role (set once it holds it)
        self._may_wait = True  # set by every holder right after it took the role
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _hold(self, may_wait: bool) -> _Held:
        """Mark the role (acquired) as this thread's and hold its wake-ups from now on: the
        list made whole first, then made this thread's in one store (see DESIGN)."""
        self._holder = get_ident()
        self._may_wait = may_wait
        held = _Held()
        held.writer = self
        held.before = _wakeups.held
        _wakeups.held = held
        return held

    def _release(self, held: _Held, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Free the role, then wake the callers whose jobs were settled meanwhile (loop: the
        loop running on this thread, when the caller knows it: not looked up again)."""
        self._holder = None
        self._may_wait = True
        self._role.release()
        _wake_held(held, loop)

    def _let_go(self) -> None:
        """After an interrupt of this thread anywhere in holding the role (see DESIGN): free
        the role and this writer's lock if this thread holds them, and wake what it settled
        meanwhile. Each step is asked of state set in one step; a no-op when nothing is held."""
        lock = self._lock
        while _owned(lock):
            lock.release()
        held = _wakeups.held
        if self._role._is_owned():
            self._holder = None
            self._may_wait = True
            self._role.release()
        if held is not None and held.writer is self:
            _wake_held(held, None)

    def _run(self) -> None:
        while True:
            fn = self._queue.get()
            if fn is None:
                return
            self._role.acquire()
            held = self._hold(True)
            try:
                fn()
            except BaseException:  # the callables settle their own callers; keep going
                log.exception("a job of the store's writer failed")
            finally:
                self._release(held)

    @property
    def on_thread(self) -> bool:
        """True on the thread holding the writer role now (the writer thread while it runs a
        job, or a caller running its group inline): write transactions run only there."""
        return self._holder == threading.get_ident()

    @property
    def may_wait(self) -> bool:
        """False while the role is held inline on an event loop: the store must not wait for
        a lock there (it raises WouldWait instead)."""
        return self._may_wait

    def try_run(self, fn: Callable[[], None], *, may_wait: bool) -> bool:
        """Run fn on this thread holding the role: False (fn not run) when the store is
        closing, or when the role is taken and the caller may not wait (an event loop);
        a caller that may wait (a plain thread) waits for the role instead. Whatever fn or
        an interrupt raises, the role is freed first (see DESIGN)."""
        try:
            if self._stopped or not self._role.acquire(may_wait):
                return False
            held = self._hold(may_wait)
            if self._stopped:
                self._release(held)
                return False
            fn()
            self._release(held)
        except BaseException:
            self._let_go()
            raise
        return True

    def submit(self, fn: Callable[[], None]) -> None:
        """Queue fn for the writer thread; raises StoreUnavailable once it is stopping."""
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
        """The same from a plain thread (inline when it holds the role already)."""
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
        if threading.get_ident() != self._thread.ident:
            self._thread.join()


class Job(Protocol):
    """What GroupCommit needs of a job: its caller's signal, and where a failure goes."""

    done: Completion
    error: BaseException | None


J = TypeVar("J", bound=Job)


class GroupCommit(Generic[J]):
    """Group commit: jobs from any thread queue up, and whoever holds the writer role takes
    everything queued (up to max_group) as one group, so callers arriving during a
    transaction share the next one and its fsync. `process(group)` runs holding the role and
    settles each job; it may raise WouldWait before doing anything (see DESIGN above).

    The first caller to find nobody draining leads: a plain thread runs the group inline,
    waiting for the role if another holds it; an asyncio task runs it inline only if the
    role is free (and `inline_async`, see DESIGN), else hands it to the writer thread.
    Groups that queue up behind an inline leader go to the writer thread, so a leader's
    caller waits for its own group only.
    """

    def __init__(
        self,
        writer: WriterThread,
        process: Callable[[list[J]], None],
        *,
        max_group: int = 1000,
        inline_async: bool = True,
    ) -> None:
        self._writer = writer
        self._process = process
        self._max_group = max_group
        self._inline_async = inline_async
        self._lock = RLock()  # an RLock: see DESIGN (an interrupt anywhere in the write path)
        self._pending: deque[J] = deque()
        self._draining = False
        self._taken: list[J] | None = None  # the group being run (see _take), by the role's holder
        # the loop whose inline leads skipped their yield last, and how many in a row
        self._skipped_on: asyncio.AbstractEventLoop | None = None
        self._skipped = 0

    def _yield_first(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether an inline leader yields to its loop before it takes its group (call it
        under the lock): when anything is scheduled to run on the loop before a task that
        yields now, when it skipped its yield too often in a row (_MAX_SKIPPED_YIELDS), and
        when the last lead that skipped it here was another loop's.

        An inline leader yields once so the tasks already scheduled join its group; with
        nothing scheduled that yield is a whole turn of the loop (an I/O poll) that adds
        nobody, about a tenth of a synchronous=NORMAL append's overhead. Group commit never
        needs it to be correct: a job queued after the group was taken leads or joins the
        next one. asyncio's own loops keep their run queue in `_ready`; any other loop is
        assumed busy (it yields). The count is this queue's: another loop's leads here would
        otherwise reset it, a yield of theirs standing for one of this loop's, and a loop
        whose leads fell between them would never yield.
        """
        ready = getattr(loop, "_ready", None)
        if (
            ready is None
            or ready
            or self._skipped_on is not loop
            or self._skipped >= _MAX_SKIPPED_YIELDS
        ):
            self._skipped_on = loop
            self._skipped = 0
            return True
        self._skipped += 1
        return False

    def run_now(self, job: J) -> Awaitable[None] | None:
        """`run` for a job whose Completion may be deferred (`deferred_completion()`):
        None when the job is settled already, else what to await at once.

        The usual sequential write (a task of an asyncio loop, nobody draining, nothing to
        yield for: see `_yield_first`, the role free) runs its job alone, right here, without
        queueing it (the lone lane, see DESIGN): nobody else can see it, so it needs no
        future, no wake-up, no lock and no group taken. Everything else (a follower, a leader
        that yields first, a role taken, a store that would wait, a writer stopping) makes the
        job's future first, then goes the way `run` goes."""
        done = job.done
        loop = done._loop
        if loop is None or done._future is not None:
            return self.run(job)
        if not self._inline_async:  # it hands over: a future first
            done._future = loop.create_future()
            return self.run(job)
        writer = self._writer
        role = writer._role
        queued = lone = False
        try:  # recovers from an interrupt anywhere in here (see DESIGN)
            # The lone lane, decided holding the role (see DESIGN: the lone lanes): nothing
            # ready to join the job on its loop, whose last lead here skipped its yield too,
            # nobody draining, the writer running. The queue's lock is not taken at all.
            if role.acquire(False):
                ready = getattr(loop, "_ready", None)
                if (
                    ready is None
                    or ready
                    or self._skipped_on is not loop
                    or self._draining
                    or writer._stopped
                ):
                    role.release()
                else:
                    # _yield_first's count (a turn owed to the loop is taken after the job)
                    turn_after = self._skipped >= _MAX_SKIPPED_YIELDS
                    self._skipped = 0 if turn_after else self._skipped + 1
                    queued, interrupted = self._run_alone(job, may_wait=False)
                    lone = True
        except BaseException:
            self._recover(job)
            raise
        # nothing held here: _run_alone freed the role, the lane took nothing else
        if lone and not queued:
            if interrupted is not None:
                raise interrupted
            return _turn() if turn_after else None
        lock = self._lock
        try:  # recovers from an interrupt anywhere in here (see DESIGN)
            if lone:  # not run (WouldWait, the writer stopping): handed over, as a lead's
                with lock:
                    self._draining = True
                return self._queue_led(job, loop, yield_first=False)
            # the lane was not clear: the general way
            # the acquire inside the inner try: the NOP CPython 3.11 emits for a nested
            # `try:` line lies outside every exception-table range, the outer one's too, so a
            # trace's interrupt there, the lock taken just before, escaped _recover
            try:
                lock.acquire()  # not `with`: no bound __enter__/__exit__ made and called
                if self._draining:  # a follower: visible to the drainer once queued: future
                    done._future = loop.create_future()  # first
                    self._pending.append(job)
                    return done._future
                self._draining = True
                # self._yield_first(loop), inlined, but a turn only owed to the loop (skipped
                # too often, nothing ready to join) is taken after the job, not before it
                ready = getattr(loop, "_ready", None)
                turn_after = False
                if ready is None or ready or self._skipped_on is not loop:
                    self._skipped_on = loop
                    self._skipped = 0
                    yield_first = True
                elif self._skipped >= _MAX_SKIPPED_YIELDS:
                    self._skipped = 0
                    yield_first = False
                    turn_after = True
                else:
                    self._skipped += 1
                    yield_first = False
            finally:
                if _owned(lock):  # an interrupt before the acquire returned: not taken
                    lock.release()
            if yield_first:
                return self._queue_led(job, loop, yield_first=True)
            if writer._stopped or not writer._role.acquire(False):
                return self._queue_led(job, loop, yield_first=False)
            queued, interrupted = self._run_alone(job, may_wait=False)
            if queued:
                return self._queue_led(job, loop, yield_first=False)
            self._stop_leading()
        except BaseException:
            self._recover(job)
            raise
        if interrupted is not None:
            raise interrupted
        return _turn() if turn_after else None

    def _run_alone(self, job: J, *, may_wait: bool) -> tuple[bool, BaseException | None]:
        """Run a leader's lone job right where it is, holding the writer role its caller has
        just taken (`run_now`, `run_blocking`), then free the role: (queued, interrupted).
        queued: not run (the writer stopping, WouldWait), nothing done, the job the caller's
        to queue; interrupted: a KeyboardInterrupt or SystemExit of this thread, the job
        settled or not run, for the caller to raise once done. (writer._hold without held
        wake-ups: process settles only this job, whose Completion, deferred, wakes nobody.)
        Call it inside the caller's recovering `try` (an interrupt between its steps:
        `_recover`)."""
        writer = self._writer
        writer._holder = get_ident()
        writer._may_wait = may_wait
        queued = True  # unless it ran (or failed) here
        interrupted: BaseException | None = None
        if not writer._stopped:
            try:
                self._process([job])
                queued = False
            except WouldWait:  # nothing was done: the writer thread runs it, and may wait
                pass
            except Exception:  # process settles its jobs in a finally
                log.exception("group commit failed outside its own guards")
                queued = False
            except BaseException as exc:  # KeyboardInterrupt, SystemExit: settled, or
                interrupted = exc  # not run; this is the caller's own thread: it hears it
                queued = False
        writer._holder = None
        writer._may_wait = True
        writer._role.release()
        return queued, interrupted

    def _recover(self, job: J | None) -> None:
        """After an interrupt (or any exception) of this thread anywhere in a write, before it
        is re-raised (see DESIGN): give back the queue's lock and the writer role if it holds
        them (their wake-ups woken), take its job back if it is still queued (it is not run),
        and leave nothing queued without a drainer: the lead dropped when nothing is queued,
        else handed to the writer thread. A no-op for what it does not hold."""
        lock = self._lock
        while _owned(lock):
            lock.release()
        self._writer._let_go()
        with lock:
            pending = self._pending
            if job is not None:
                for index, queued in enumerate(pending):
                    if queued is job:
                        del pending[index]
                        break
            idle = not pending
            if idle:
                self._draining = False
        if not idle:
            self._hand_over()

    def _stop_leading(self) -> None:
        """After a leader's group, the role freed: what queued up meanwhile goes to the
        writer thread; with nothing queued, nobody drains any more."""
        lock = self._lock
        lock.acquire()  # not `with`: no bound __enter__/__exit__ made and called
        idle = not self._pending
        if idle:
            self._draining = False
        lock.release()
        if not idle:
            self._hand_over()

    def _queue_led(
        self, job: J, loop: asyncio.AbstractEventLoop, *, yield_first: bool
    ) -> Awaitable[None]:
        """The rest of `run` for a leader from `run_now` whose job was not run there: its
        future made, the job queued first, then led after a yield as `run` leads it, or
        handed to the writer thread (the role taken, the store would wait, the writer stops:
        `_lead_on_loop`'s and `_lead_one_group`'s ways)."""
        future = job.done._future = loop.create_future()
        with self._lock:
            self._pending.appendleft(job)
        if yield_first:
            led = self._lead_and_wait(job, loop, future)
            next(led)  # into its guard (see DESIGN)
            return led
        self._hand_over()
        return future

    def run(self, job: J) -> Awaitable[None]:
        """Queue the job now; the awaitable returned (await it at once) is done once the job
        is settled (read its outcome on the job).

        A follower awaits its Completion itself: no coroutine of its own to make and to step
        through when it is woken (of 500 tasks writing at once, 499 follow). A caller
        cancelled after this began may still have its job committed (and, if it led, the
        group it takes is run before the cancellation goes on)."""
        done = job.done
        future = done._future
        try:  # recovers from an interrupt anywhere in here (see DESIGN)
            with self._lock:  # _enter, inlined: 500 tasks at once pass here
                self._pending.append(job)
                lead = not self._draining
                self._draining = True
                loop = done._loop
                yield_first = (
                    lead
                    and future is not None
                    and loop is not None
                    and self._inline_async
                    and self._yield_first(loop)
                )
            if not lead:
                return future if future is not None else done.wait()
            if future is None or not self._inline_async:
                self._hand_over()
                return done.wait()
            # An asyncio task (its Completion made on the loop that awaits it, as `await it
            # at once` means): its group inline on this loop. With nobody to wait for (no
            # yield, see _yield_first) it runs right here, and the future returned is
            # resolved before it is awaited: no coroutine of its own, no turn of the loop.
            assert loop is not None
            if yield_first:
                led = self._lead_and_wait(job, loop, future)
                next(led)  # into its guard (see DESIGN)
                return led
            self._lead_on_loop(loop, job)
        except BaseException:
            self._recover(job)
            raise
        return future

    @types.coroutine
    def _lead_and_wait(
        self, job: J, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]
    ) -> Generator[None, None, None]:
        """Lead inline on loop after one turn of it (tasks scheduled before this one queue
        their jobs first), then wait for the job's future. A generator-based coroutine, which
        its maker starts (`next`) inside its own guard, up to the first `yield` here; the
        task awaiting it resumes it there, inside this guard, and yields once (the turn). A
        cancellation (or an interrupt) in the turn still leads the group it took before it
        goes on to the task, which hears it."""
        turned = False
        try:
            yield  # started up to here by its maker
            yield  # the turn: a bare yield, as asyncio.sleep(0) makes
            turned = True
            self._lead_on_loop(loop, job)
        except GeneratorExit:
            # closed without being run on (its maker was interrupted and recovered the lead;
            # or its task was dropped): at garbage collection, which may come anywhere, even
            # inside a group this thread holds, so nothing is taken here (the role is an
            # RLock: see DESIGN): the writer thread drains whatever is queued
            self._writer._queue.put(self._drain)
            raise
        except BaseException:
            if turned:  # in the lead, which recovered (or at its entry: nothing done yet)
                self._recover(job)
                raise
            try:  # cancelled (or interrupted) in the turn: the group it leads runs first
                self._lead_on_loop(loop, job)
            except BaseException:
                self._recover(job)
                raise
            raise
        yield from future

    def _lead_on_loop(self, loop: asyncio.AbstractEventLoop, job: J) -> None:
        """`_lead(inline=True, may_wait=False)` for a task of loop, on its thread: the next
        group inline if the role is free, else handed over (WriterThread.try_run inlined,
        its wake-ups resolved on loop without looking it up). job: the leading task's own,
        taken back by the recovery (an interrupt put it back with its group, `_untake`)
        before the rest is handed to the writer thread, never after: the writer thread would
        run it, though its task hears the interrupt."""
        writer = self._writer
        try:  # recovers from an interrupt anywhere in here (see DESIGN)
            if writer._stopped or not writer._role.acquire(False):
                self._hand_over()
                return
            held = writer._hold(False)
            stopped = writer._stopped
            if not stopped:
                self._lead_one_group()
            writer._release(held, loop)
        except BaseException:
            self._recover(job)
            raise
        if stopped:
            self._hand_over()

    def run_blocking(self, job: J) -> None:
        """`run` for a plain thread: it runs its group itself when the role is free. Raises
        StoreUnavailable on a thread holding the role (it would wait for itself).

        The usual sequential write (nobody draining, the role free) runs its job alone, right
        here, without queueing it, as `run_now` does on a loop: nobody else can see it, so its
        Completion (deferred_blocking_completion) needs no lock, and there is no group to
        take under the lock nor wake-ups to hold. Jobs other threads queue meanwhile go to
        the writer thread after it, as behind any inline leader (it leads: a plain thread's
        job takes no lone lane, see DESIGN). Otherwise (the role taken, the store stopping,
        WouldWait) the job is queued first, then led as before: waiting for the role and
        running the whole group queued by then, or handed over."""
        writer = self._writer
        if writer._holder == get_ident():  # writer.on_thread, inlined
            raise StoreUnavailable("a write cannot wait for another while it holds the role")
        try:  # recovers from an interrupt anywhere in here (see DESIGN)
            if not self._enter(job):  # queued, its Completion armed: someone else drains
                # A thread running an event loop leads even so: the one draining may be a
                # task of this very loop waiting for its turn, which cannot come while this
                # thread blocks (a second drainer is safe: each takes its jobs under the lock).
                if asyncio._get_running_loop() is not None:
                    self._lead(inline=True, may_wait=True)
                job.done.wait_blocking()
                return
            # The leader, its job not queued: it runs it alone if the role is free (every
            # sequential blocking command's path)
            if writer._stopped or not writer._role.acquire(False):
                # taken (another queue's group, the writer thread's call) or stopping: queued
                # first, then as before (the role waited for, the group queued by then run;
                # or, stopping, every queued job failed)
                self._queue_alone(job)
                self._lead(inline=True, may_wait=True)
                job.done.wait_blocking()
                return
            queued, interrupted = self._run_alone(job, may_wait=True)
            if queued:  # not run (stopping, WouldWait): the writer thread's, or failed
                self._queue_alone(job)
                self._hand_over()
                job.done.wait_blocking()
                return
            self._stop_leading()
        except BaseException:
            self._recover(job)
            raise
        if interrupted is not None:
            raise interrupted

    def _queue_alone(self, job: J) -> None:
        """Queue a leader's job that was not run where it led, first (it came first), its
        Completion armed: someone else may settle it now."""
        job.done._arm()
        with self._lock:
            self._pending.appendleft(job)

    def flush(self) -> None:
        """Run every job queued so far, holding the role (call it on the writer thread, e.g.
        before closing): jobs queued behind an inline leader are not on the writer's queue
        until that leader hands them over."""
        if not self._writer.on_thread:
            raise StoreUnavailable("flush runs holding the writer role")
        self._drain()

    def _enter(self, job: J) -> bool:
        """True when the caller must lead (nobody drains now): the job is not queued then,
        and is the caller's to run (`run_blocking`). Else the job is queued, its Completion
        armed: the one draining takes it with the next group."""
        with self._lock:
            if not self._draining:
                self._draining = True
                return True
            job.done._arm()
            self._pending.append(job)
            return False

    def _lead(self, *, inline: bool, may_wait: bool) -> None:
        """Run the next group on this thread (a plain thread waiting for the role if another
        holds it; a task only if it is free), else hand it to the writer thread."""
        if inline and self._writer.try_run(self._lead_one_group, may_wait=may_wait):
            return
        self._hand_over()

    def _hand_over(self) -> None:
        """The writer thread drains from here; if it is stopped, every queued job fails."""
        try:
            self._writer.submit(self._drain)
        except StoreUnavailable as closed:
            with self._lock:
                jobs = list(self._pending)
                self._pending.clear()
                self._draining = False
            for job in jobs:
                job.error = closed
                job.done.set()

    def _take(self) -> list[J] | None:
        """The next group, taken out of the queue (call holding the role); noted as `_taken`
        before it leaves the queue, so that each job is always queued or taken (or both, for
        an instruction): an interrupt of the leader puts back what it never ran (_untake)."""
        with self._lock:
            pending = self._pending
            count = len(pending)
            if not count:
                self._draining = False
                return None
            if count <= self._max_group:  # the usual case: the whole queue, in one C call
                group = self._taken = list(pending)
                pending.clear()
                return group
            group = self._taken = list(islice(pending, self._max_group))
            for _ in group:
                pending.popleft()
            return group

    def _put_back(self, group: list[J]) -> None:
        with self._lock:
            self._pending.extendleft(reversed(group))
            self._taken = None

    def _untake(self) -> None:
        """After an interrupt of this thread while it led a group, holding the role: the jobs
        it took that process never settled (their Completions are not among this role's held
        wake-ups: interrupted before its own guards ran, nothing done) go back to the front
        of the queue, but for any still there. A no-op with no group taken."""
        taken = self._taken
        if taken is None:
            return
        held = _wakeups.held
        settled = {id(done) for done in held} if held is not None else set()
        with self._lock:
            pending = self._pending
            queued = {id(job) for job in pending}
            back = [job for job in taken if id(job.done) not in settled and id(job) not in queued]
            pending.extendleft(reversed(back))
            self._taken = None

    def _lead_one_group(self) -> None:
        """Inline: one group, then the writer thread takes whatever queued up meanwhile. A
        KeyboardInterrupt or SystemExit (of process, whose guards settle the group or leave
        it unsettled, not stored, or landing anywhere here) reaches the caller's thread, which
        hears it; what was never run or settled is put back, and the caller's recovery leaves
        nothing queued without a drainer."""
        try:
            group = self._take()
            if group is None:
                return
            try:
                self._process(group)
            except WouldWait:  # nothing was done: the writer thread runs it, and may wait
                self._put_back(group)
            except Exception:  # process settles its jobs in a finally
                log.exception("group commit failed outside its own guards")
            self._taken = None
        except BaseException:
            self._untake()
            raise
        self._stop_leading()

    def _drain(self) -> None:
        while (group := self._take()) is not None:
            try:
                self._process(group)
            except WouldWait:  # cannot happen here (the writer thread may wait): settle
                for job in group:
                    job.error = StoreUnavailable("the store's lock could not be waited for")
                    job.done.set()
            except BaseException:  # process settles its jobs in a finally; keep draining
                log.exception("group commit failed outside its own guards")
            self._taken = None
