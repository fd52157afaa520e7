"""Top-level functions for the decode pool tests (a pool calls functions by their importable name)."""

from __future__ import annotations

import os
import signal
import time

from medparse.imaging import ImageRejected


def echo(value: object) -> object:
    return value


def pid() -> int:
    return os.getpid()


def allocate(nbytes: int) -> int:
    block = bytearray(nbytes)  # touched by the allocation: a real commitment, not a lazy mapping
    return len(block)


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def spin(seconds: float) -> int:
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        n += 1
    return n


def segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def reject(message: str) -> None:
    raise ImageRejected("corrupt_image", message)


def thread_limits() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def vm_size() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def sleep_then_reject(seconds: float) -> None:
    time.sleep(seconds)
    raise ImageRejected("corrupt_image", "PATIENT-SECRET in the message")
