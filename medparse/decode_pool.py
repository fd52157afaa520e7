"""The trust boundary for untrusted files: full decodes run in a few resource-limited child processes.

A decode of an uploaded file (a DICOM's pixel data, a NIfTI's voxels, a TIFF, a result rendered over
the input) may be made to allocate gigabytes or to run for minutes by a few hostile bytes. Header
checks (medparse/medical, medparse/png_probe.py) refuse what can be refused cheaply; what is left runs
here, in a child that cannot take its parent with it:

- the child's address space is capped (``RLIMIT_AS`` = its baseline after imports + ``memory_limit``),
  so an allocation over budget is a ``MemoryError`` in the child (or, in C code, the child's death);
- the parent waits at most ``timeout_s`` for an answer, then kills the child (SIGKILL) and starts a
  fresh one for the next call; ``RLIMIT_CPU`` in the child is a backstop should the parent die;
- at most ``processes`` decodes run at once, and at most ``max_inflight_bytes`` of input bytes (one
  larger input still runs, alone); callers wait at most ``queue_wait_s`` (async: the gateway), at most
  ``max_waiting`` of them and ``max_waiting_per_tenant`` per tenant, else ``DecodeBusy`` (the
  gateway's 503 with Retry-After); a free slot goes to the tenant with the fewest decodes running.

A decode over its budget, or a child that died, is ``DecodeLimitExceeded``: an ``ImageRejected`` with
code ``image_too_complex`` (a 422 naming the limit; a failed job in a worker), never a dead service.

Children come from the ``forkserver`` context (``fork`` from a threaded asyncio process can deadlock),
with the heavy imports preloaded once in the fork server, so a replacement costs a fork, not an
import. One pipe per child: killing one child cannot disturb another's channel. Called functions must
be picklable top-level functions, and their arguments and results picklable; exceptions they raise
come back as the same class (``ImageRejected``, ``OptionRejected``, ``ApiProblem``...).

Threads: a child sets OpenBLAS/OpenMP/OpenCV to one thread before importing numpy, so the address
space limit is about the decode, not about per-thread arenas, and two decodes use two cores at most.
Children (and their fork server) run at nice 10, below the gateway's event loop and the workers.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import importlib
import logging
import math
import multiprocessing
import os
import queue
import resource
import signal
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from medparse.imaging import ImageRejected

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Set in a child before numpy, OpenCV or a BLAS is imported (see medparse/decode_preload.py).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
DEFAULT_PRELOAD = ("medparse.decode_preload",)
#: Added to a decode process's nice value (lower CPU priority than the process it serves).
DECODE_NICENESS = 10


class DecodeLimitExceeded(ImageRejected):
    """A decode went over its memory or time budget, or its process died: 422 ``image_too_complex``."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__("image_too_complex", message)
        self.limit = limit
        self.args = (limit, message)


class DecodeBusy(Exception):
    """No decode slot within the wait (or too many waiting): the gateway answers 503 with Retry-After."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class DecodeLimits:
    processes: int
    memory_limit_bytes: int
    timeout_s: float
    max_inflight_bytes: int
    max_waiting: int
    queue_wait_s: float
    max_waiting_per_tenant: int = 4

    @classmethod
    def from_settings(cls, settings: Any) -> DecodeLimits:
        return cls(
            processes=settings.decode_processes,
            memory_limit_bytes=settings.decode_memory_limit_bytes,
            timeout_s=settings.decode_timeout_s,
            max_inflight_bytes=settings.decode_max_inflight_bytes,
            max_waiting=settings.decode_max_waiting,
            queue_wait_s=settings.decode_queue_wait_s,
            max_waiting_per_tenant=settings.decode_max_waiting_per_tenant,
        )


#: A plain PNG up to this size is checked in the calling process (the gateway's accept hot path,
#: bench/accept.py; medparse/png_probe.py) when it also declares at most ``INLINE_PNG_RAW_BYTES``.
INLINE_PNG_BYTES = 256 * 1024
#: Inflated bytes (rows with their filter byte) such a PNG may declare: ~10 ms of ISA-L inflate on the
#: event loop at most. A 256 KiB PNG can otherwise declare (and inflate to) ~260 MB.
INLINE_PNG_RAW_BYTES = 16 * 1024 * 1024
#: Compressed bytes of text and profile chunks (zTXt, iTXt, iCCP) such a PNG may hold: the probe inflates
#: each (up to 1 MB, 64 MB in all, as Pillow), ~1000x its compressed size. 8 KiB holds a usual ICC profile.
INLINE_PNG_TEXT_BYTES = 8 * 1024
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_COMPRESSED_CHUNKS = (b"zTXt", b"iTXt", b"iCCP")


def decodes_inline(data: bytes) -> bool:
    """True for an upload cheap enough to check without a decode process: a small, plain PNG that
    ``png_probe`` answers for (non-interlaced, no ``eXIf``, so never Pillow's full decode) and that
    declares a small inflated size, rows and text alike. Everything else goes to the pool."""
    if len(data) > INLINE_PNG_BYTES or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return False
    if len(data) < 29:
        return False
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    bit_depth, color_type, interlace = data[24], data[25], data[28]
    channels = _PNG_CHANNELS.get(color_type)
    if channels is None or interlace != 0 or b"eXIf" in data:
        return False
    raw = height * (1 + (width * channels * bit_depth + 7) // 8)
    if raw > INLINE_PNG_RAW_BYTES:
        return False
    return not any(kind in data for kind in _PNG_COMPRESSED_CHUNKS) or _png_compressed_text_bytes(data) <= (
        INLINE_PNG_TEXT_BYTES
    )


def _png_compressed_text_bytes(data: bytes) -> int:
    """Bytes of the zTXt, iTXt and iCCP chunks, from the chunk headers (lengths, no CRCs) up to IEND."""
    pos, total = 8, 0
    while pos + 8 <= len(data):
        length, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        if kind == b"IEND":
            break
        if kind in _PNG_COMPRESSED_CHUNKS:
            total += length
        pos += 12 + length
    return total


# --- the child ---------------------------------------------------------------------------------


def _vm_size_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _limit_threads() -> None:
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"


def _portable(exc: BaseException) -> tuple[type[BaseException], tuple[Any, ...], dict[str, Any]]:
    """An exception as (class, args, attributes): ours have __init__ signatures pickle cannot replay."""
    attributes = {k: v for k, v in vars(exc).items() if not k.startswith("__")}
    return type(exc), tuple(exc.args), attributes


def _rebuild(portable: tuple[type[BaseException], tuple[Any, ...], dict[str, Any]]) -> BaseException:
    cls, args, attributes = portable
    exc = cls.__new__(cls)
    BaseException.__init__(exc, *args)
    exc.__dict__.update(attributes)
    return exc


def _child_main(conn: Connection, memory_limit_bytes: int, preload: Sequence[str]) -> None:
    """Serve calls one at a time until the parent closes the pipe."""
    _limit_threads()
    # Usually loaded by the fork server already; if not (another pool started it), loaded now, so that the
    # budget below is all the decode's and not partly the imports'.
    for module in preload:
        importlib.import_module(module)
    # Below the gateway's event loop and the workers in the CPU scheduler: a flood of decodes on a busy
    # machine must not delay /healthz or other tenants' requests.
    os.nice(max(0, DECODE_NICENESS - os.nice(0)))  # the fork server may have lowered it already
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is for the parent, which stops us
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a decoder crash must not write a core dump
    limit = _vm_size_bytes() + memory_limit_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    while True:
        try:
            func, args, timeout_s = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone or closed the pool
        except MemoryError:
            conn.send(("memory", None))
            return
        # Backstop for a parent that died mid-call: SIGXCPU ends this child after its budget of CPU.
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_soft = math.ceil(usage.ru_utime + usage.ru_stime + 2 * timeout_s + 1)
        if cpu_hard != resource.RLIM_INFINITY:
            cpu_soft = min(cpu_soft, cpu_hard)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_soft, cpu_hard))
        reply: tuple[str, Any]
        try:
            reply = ("ok", func(*args))
        except MemoryError:
            reply = ("memory", None)
        except Exception as exc:
            reply = ("raise", (_portable(exc), traceback.format_exc(limit=-8)))
        del func, args
        try:
            conn.send(reply)
        except MemoryError:  # pickling a result too large for the budget
            conn.send(("memory", None))
            reply = ("memory", None)
        if reply[0] == "memory":
            return  # its heap may be fragmented near the limit: the parent starts a fresh child


# --- the parent ----------------------------------------------------------------------------------


class _Child:
    """One decode process and its pipe; started on first use, replaced after a kill or a death."""

    def __init__(self, context: Any, memory_limit_bytes: int, number: int, preload: Sequence[str]) -> None:
        self._context = context
        self._memory_limit_bytes = memory_limit_bytes
        self._preload = tuple(preload)
        self._number = number
        self.process: Any = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.is_alive() else None

    def _start(self) -> Connection:
        """Raises: DecodeBusy: the machine refused a process or descriptors now (EAGAIN, EMFILE)."""
        parent_end, child_end = multiprocessing.Pipe(duplex=True)
        process = self._context.Process(
            target=_child_main, args=(child_end, self._memory_limit_bytes, self._preload), daemon=True,
            name=f"medparse-decode-{self._number}",
        )
        try:
            process.start()
        except OSError as exc:  # the service is short of processes or files: try again later, not a 500
            parent_end.close()
            child_end.close()
            raise DecodeBusy(f"no decode process could be started ({exc.strerror or exc})", 5) from exc
        child_end.close()
        self.process, self._conn = process, parent_end
        return parent_end

    def call(self, func: Callable[..., Any], args: tuple[Any, ...], timeout_s: float) -> Any:
        conn = self._conn
        if conn is None or not self.process.is_alive():
            self.stop()
            conn = self._start()
        started = time.monotonic()
        try:
            conn.send((func, args, timeout_s))
            remaining = timeout_s - (time.monotonic() - started)
            if not conn.poll(max(0.0, remaining)):
                self.stop()
                raise DecodeLimitExceeded(
                    "decode_timeout_s", f"decoding this file took longer than {timeout_s:g} s (decode_timeout_s)"
                )
            status, payload = conn.recv()
        except (EOFError, OSError):
            raise self._died() from None
        except DecodeLimitExceeded:
            raise
        except BaseException:
            # Interrupted in the caller (prefork's soft time limit raises anywhere): the child may still answer,
            # and that answer must never be read as the next call's. Killed; the next call gets a fresh child.
            self.stop()
            raise
        if status == "ok":
            return payload
        if status == "memory":
            self.stop()
            raise DecodeLimitExceeded(
                "decode_memory_limit_bytes",
                f"decoding this file needs more than {self._memory_limit_bytes} bytes (decode_memory_limit_bytes)",
            )
        portable, remote_traceback = payload
        exc = _rebuild(portable)
        exc.add_note(f"raised in decode process {self.process.pid}:\n{remote_traceback}")
        raise exc

    def _died(self) -> DecodeLimitExceeded:
        process = self.process
        process.join(2)
        code, pid = process.exitcode, process.pid
        self.stop()
        try:
            how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        except ValueError:
            how = f"signal {-code}"
        log.warning("decode process %s died (%s)", pid, how)
        return DecodeLimitExceeded(
            "decode_memory_limit_bytes",
            f"the decoder stopped ({how}) on this file: it went over the decode limits or the file is malformed",
        )

    def stop(self) -> None:
        """Kill the child (if any); the next call starts a fresh one."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        process, self.process = self.process, None
        if process is not None:
            if process.is_alive():
                process.kill()
            process.join(5)
            if process.exitcode is not None:
                process.close()

    def close(self) -> None:
        """Let an idle child exit on its own (EOF), else kill it."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.process is not None:
            self.process.join(1)
        self.stop()


def _close_children(children: list[_Child]) -> None:
    for child in children:
        child.close()


class _ThreadGate:
    """Slots and bytes for blocking callers (worker threads): FIFO, unbounded wait unless told."""

    def __init__(self, limits: DecodeLimits) -> None:
        self._limits = limits
        self._cond = threading.Condition()
        self._running = 0
        self._bytes = 0
        self._queue: collections.deque[object] = collections.deque()

    def acquire(self, nbytes: int, wait_s: float | None) -> None:
        ticket = object()
        deadline = None if wait_s is None else time.monotonic() + wait_s
        with self._cond:
            if wait_s is not None and len(self._queue) >= self._limits.max_waiting + self._limits.processes:
                raise DecodeBusy("too many decodes waiting", 1)
            self._queue.append(ticket)
            try:
                while not (self._queue[0] is ticket and self._fits(nbytes)):
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise DecodeBusy("no decode slot became free in time", 1)
                    self._cond.wait(remaining)
                self._running += 1
                self._bytes += nbytes
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()

    def _fits(self, nbytes: int) -> bool:
        return self._running < self._limits.processes and (
            self._running == 0 or self._bytes + nbytes <= self._limits.max_inflight_bytes
        )

    def release(self, nbytes: int) -> None:
        with self._cond:
            self._running -= 1
            self._bytes -= nbytes
            self._cond.notify_all()


@dataclass(eq=False)
class _Waiter:
    party: Hashable
    nbytes: int
    granted: asyncio.Future[None]


class _AsyncGate:
    """Slots and bytes for coroutines on one event loop: a bounded queue and a bounded wait.

    Fair between parties (tenants): a free slot goes to the waiter whose party has the fewest decodes
    running, among those to the party served longest ago (then the earliest waiter), and a party may
    have at most ``max_waiting_per_tenant`` waiting, so one tenant's flood delays another tenant's
    upload by about one decode, not by its whole queue.
    """

    def __init__(self, limits: DecodeLimits) -> None:
        self._limits = limits
        self._running = 0
        self._bytes = 0
        self._running_by_party: collections.Counter[Hashable] = collections.Counter()
        self._waiters: list[_Waiter] = []
        #: party -> number of its last grant, kept while it has decodes running or waiting
        self._last_grant: dict[Hashable, int] = {}
        self._grants = 0

    def _fits(self, nbytes: int) -> bool:
        return self._running < self._limits.processes and (
            self._running == 0 or self._bytes + nbytes <= self._limits.max_inflight_bytes
        )

    async def acquire(self, nbytes: int, party: Hashable) -> None:
        if not self._waiters and self._fits(nbytes):
            self._take(nbytes, party)
            return
        retry_after = max(1, math.ceil(self._limits.timeout_s / 4))
        if len(self._waiters) >= self._limits.max_waiting:
            raise DecodeBusy(
                f"{self._limits.max_waiting} decodes are already waiting (decode_max_waiting)", retry_after
            )
        if sum(1 for w in self._waiters if w.party == party) >= self._limits.max_waiting_per_tenant:
            raise DecodeBusy(
                f"this tenant already has {self._limits.max_waiting_per_tenant} decodes waiting "
                "(decode_max_waiting_per_tenant)", retry_after,
            )
        waiter = _Waiter(party, nbytes, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.granted), self._limits.queue_wait_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.granted.done() and not waiter.granted.cancelled():  # granted at the last moment: give back
                self.release(nbytes, party)
            else:
                waiter.granted.cancel()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise DecodeBusy(
                f"no decode slot became free within {self._limits.queue_wait_s:g} s (decode_queue_wait_s)",
                retry_after,
            ) from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if not self._running_by_party[party] and not any(w.party == party for w in self._waiters):
                self._last_grant.pop(party, None)
            self._wake()

    def _take(self, nbytes: int, party: Hashable) -> None:
        self._running += 1
        self._bytes += nbytes
        self._running_by_party[party] += 1
        self._grants += 1
        self._last_grant[party] = self._grants

    def release(self, nbytes: int, party: Hashable) -> None:
        self._running -= 1
        self._bytes -= nbytes
        self._running_by_party[party] -= 1
        if not self._running_by_party[party]:
            del self._running_by_party[party]
            if not any(w.party == party for w in self._waiters):
                self._last_grant.pop(party, None)
        self._wake()

    def _wake(self) -> None:
        while True:
            waiting = [w for w in self._waiters if not w.granted.done()]
            if not waiting:
                return
            # min() keeps the first of equals: arrival order within the least-served party.
            chosen = min(waiting, key=lambda w: (self._running_by_party[w.party], self._last_grant.get(w.party, 0)))
            if not self._fits(chosen.nbytes):
                return
            self._waiters.remove(chosen)
            self._take(chosen.nbytes, chosen.party)
            chosen.granted.set_result(None)


def _finished(gate: _AsyncGate, nbytes: int, party: Hashable, future: asyncio.Future[Any]) -> None:
    gate.release(nbytes, party)
    if not future.cancelled():
        # Retrieved here: when the request went away, asyncio would log the decode's error at ERROR ("never
        # retrieved"), message and remote traceback included, once per abandoned request.
        future.exception()


class DecodePool:
    """At most ``limits.processes`` decode processes, each serving one call at a time.

    ``await pool.run(func, *args, nbytes=...)`` from the gateway's event loop; ``pool.call(...)`` from
    worker threads. ``nbytes`` is the size of the untrusted input, for the in-flight bytes cap.
    Processes start on first use; ``close()`` stops them.
    """

    def __init__(
        self, limits: DecodeLimits, *, preload: Sequence[str] = DEFAULT_PRELOAD, start_method: str = "forkserver"
    ) -> None:
        self.limits = limits
        context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # The fork server is one per process: the first pool to start it decides what it preloads.
            context.set_forkserver_preload(list(preload))
        # Last in, first out: the warm child serves again, a second one starts only under concurrency.
        self._children: queue.LifoQueue[_Child] = queue.LifoQueue()
        self._all = [_Child(context, limits.memory_limit_bytes, n, preload) for n in range(limits.processes)]
        for child in self._all:
            self._children.put(child)
        self._thread_gate = _ThreadGate(limits)
        self._async_gate: _AsyncGate | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False
        # A pool dropped without close() (a test's worker context) still lets its processes go.
        self._finalizer = weakref.finalize(self, _close_children, list(self._all))

    @classmethod
    def from_settings(cls, settings: Any, *, preload: Sequence[str] = DEFAULT_PRELOAD) -> DecodePool:
        return cls(DecodeLimits.from_settings(settings), preload=preload)

    def pids(self) -> list[int]:
        """The decode processes now alive (for tests and health figures)."""
        return [pid for pid in (c.pid for c in self._all) if pid is not None]

    def _admitted_bytes(self, nbytes: int) -> int:
        return max(0, min(nbytes, self.limits.max_inflight_bytes))

    def _on_child(self, func: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._closed:
            raise RuntimeError("the decode pool is closed")
        child = self._children.get()  # the gates keep callers to the number of children: never blocks long
        try:
            result: T = child.call(func, args, self.limits.timeout_s)
            return result
        finally:
            self._children.put(child)

    def call(self, func: Callable[..., T], *args: Any, nbytes: int = 0, wait_s: float | None = None) -> T:
        """``func(*args)`` in a decode process, blocking; waits for a slot (at most ``wait_s``, if given).

        Raises: DecodeLimitExceeded, DecodeBusy, or what ``func`` raised.
        """
        admitted = self._admitted_bytes(nbytes)
        self._thread_gate.acquire(admitted, wait_s)
        try:
            return self._on_child(func, args)
        finally:
            self._thread_gate.release(admitted)

    async def run(self, func: Callable[..., T], *args: Any, nbytes: int = 0, party: Hashable = None) -> T:
        """``func(*args)`` in a decode process, from the event loop; ``party`` (the tenant) for fairness.

        Raises: DecodeLimitExceeded, DecodeBusy (no slot within ``queue_wait_s``), or what ``func`` raised.
        """
        if self._async_gate is None:
            self._async_gate = _AsyncGate(self.limits)
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.limits.processes, thread_name_prefix="decode-pool"
            )
        gate, executor = self._async_gate, self._executor
        admitted = self._admitted_bytes(nbytes)
        await gate.acquire(admitted, party)
        try:
            future = asyncio.get_running_loop().run_in_executor(executor, self._on_child, func, args)
        except BaseException:
            gate.release(admitted, party)
            raise
        # A cancelled request leaves its decode running to its deadline: the slot is free only then.
        future.add_done_callback(functools.partial(_finished, gate, admitted, party))
        return await asyncio.shield(future)

    def close(self) -> None:
        self._closed = True
        self._finalizer()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
