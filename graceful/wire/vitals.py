"""A worker's vitals: a page of shared memory the worker writes and the supervisor
reads, and where the worker's stack is dumped when it hangs.

The supervisor creates one memory file (``memfd_create``) per worker and sends it on
the worker's fd channel after the listeners, at the worker's start only (protocol 4,
see :mod:`graceful.wire.fds`). Both map its first page:

=========  ======  ===============================================================
offset     bytes   what the worker writes there
=========  ======  ===============================================================
0          8       the last heartbeat: ``time.monotonic_ns()`` (0: it does not
                   beat, and is never judged hung)
8          8       requests served so far
16         40      answers by outcome, one count each, in the order of
                   :data:`graceful.core.answers.OUTCOMES`
56         8       the total of those answers' durations, in microseconds
64         96      answers by duration, one count per bucket of
                   :data:`graceful.core.answers.BUCKETS`, then the unbounded one
=========  ======  ===============================================================

All unsigned, aligned, each written whole, in the machine's byte order (both ends
run on one machine; little-endian on every machine graceful runs on). Fields are
only ever added where the page held zeros, so the page is read the same by every
version of protocol 4: what a worker does not write reads as nothing counted.
``CLOCK_MONOTONIC`` is the same clock in every process of the machine, so the
supervisor compares the heartbeat with its own ``time.monotonic_ns()``.

Writing a heartbeat is a store to memory: no system call, no wake-up of the
supervisor, and no message on the control channel (which a worker may only use a few
thousand times in its life: :data:`graceful.wire.messages.MAX_MESSAGES`).

From :data:`DUMP_OFFSET` on, the file is where the worker's :mod:`faulthandler`
writes the stack of every thread when it receives :data:`DUMP_SIGNAL`. faulthandler
writes from its signal handler, in C, without taking the GIL, so the dump comes even
while the event loop is blocked and another thread holds the GIL. The supervisor
reads at most about :data:`DUMP_LIMIT` bytes of it: of a longer dump, its first and
last halves (the main thread's stack comes last).

The file is sealed against shrinking (``F_SEAL_SHRINK``): a worker that truncated it
would make the supervisor's next read of its mapping a SIGBUS. What a worker writes
in its page is only ever taken as numbers: a lie costs it, not the supervisor (a
heartbeat in the past gets it replaced, one in the future only hides its own hang).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import signal
import time

from graceful.core.answers import BUCKETS, OUTCOMES, Answers

#: The size of the shared page.
PAGE = 4096
#: Where the stack dump starts in the memory file.
DUMP_OFFSET = PAGE
#: The most bytes of a dump the supervisor reads.
DUMP_LIMIT = 65536
#: What a worker dumps its threads' stacks on: a real-time signal, which no server,
#: event loop or library graceful runs with uses.
DUMP_SIGNAL = signal.SIGRTMIN + 6

_BEAT = slice(0, 8)
_REQUESTS = slice(8, 16)
#: the word (8 bytes) where the answers by outcome start, their durations' total, and
#: the duration buckets
_OUTCOMES_AT = 2
_SECONDS_AT = _OUTCOMES_AT + len(OUTCOMES)
_BUCKETS_AT = _SECONDS_AT + 1
_WORDS = _BUCKETS_AT + len(BUCKETS) + 1


class VitalsPage:
    """One worker's page, mapped: the supervisor's side (:meth:`create`) or the
    worker's (:meth:`attach`). Closing it unmaps it and closes the descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._words = memoryview(self._map).cast("Q")[:_WORDS]

    @classmethod
    def create(cls) -> VitalsPage:
        """A new, zeroed page in a memory file of its own (the supervisor's side).

        Raises:
            OSError: if no memory file can be made (out of descriptors or memory).
        """
        fd = os.memfd_create("graceful-vitals", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, PAGE)
            # A worker that could shrink the file under the supervisor's mapping would
            # kill the supervisor with SIGBUS at its next read: sealed against it.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
            return cls(fd)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def attach(cls, fd: int) -> VitalsPage:
        """The page in the memory file ``fd`` the supervisor sent (the worker's side).

        Raises:
            OSError: if ``fd`` is not a memory file of at least a page.
        """
        if os.fstat(fd).st_size < PAGE:
            raise OSError(f"descriptor {fd} is not a vitals page")
        return cls(fd)

    # -- the worker writes ----------------------------------------------------------

    def beat(self) -> None:
        """Record a heartbeat now."""
        self._map[_BEAT] = time.monotonic_ns().to_bytes(8, "little")

    def set_requests(self, count: int) -> None:
        self._map[_REQUESTS] = (count & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little")

    def count_answer(self, outcome: int, bucket: int, microseconds: int) -> None:
        """Count one answer: its outcome (an index in
        :data:`~graceful.core.answers.OUTCOMES`), its duration's bucket (an index in
        :data:`~graceful.core.answers.BUCKETS`, or one past them) and its duration.
        One writer at a time (the caller serialises threads)."""
        words = self._words
        words[_OUTCOMES_AT + outcome] += 1
        words[_BUCKETS_AT + bucket] += 1
        words[_SECONDS_AT] = (words[_SECONDS_AT] + microseconds) & 0xFFFF_FFFF_FFFF_FFFF

    def dump_to(self) -> int:
        """A descriptor of the same memory file, positioned at :data:`DUMP_OFFSET`,
        for :func:`faulthandler.register` (the caller keeps it open)."""
        fd = os.dup(self.fd)
        os.lseek(fd, DUMP_OFFSET, os.SEEK_SET)
        return fd

    # -- the supervisor reads -------------------------------------------------------

    @property
    def last_beat_ns(self) -> int:
        """The last heartbeat (``time.monotonic_ns()``), 0 if none yet (or closed)."""
        return 0 if self.fd < 0 else int.from_bytes(self._map[_BEAT], "little")

    @property
    def requests(self) -> int:
        return 0 if self.fd < 0 else int.from_bytes(self._map[_REQUESTS], "little")

    def answers(self) -> Answers:
        """The answers the worker has counted so far (nothing, once closed). A worker
        may write anything here: the numbers are only ever added up and shown."""
        if self.fd < 0:
            return Answers()
        words = self._words
        return Answers(
            tuple(words[_OUTCOMES_AT : _OUTCOMES_AT + len(OUTCOMES)]),
            tuple(words[_BUCKETS_AT:_WORDS]),
            words[_SECONDS_AT] / 1e6,
        )

    def dump(self) -> str:
        """What the worker has dumped so far, in at most about :data:`DUMP_LIMIT`
        bytes: a longer dump keeps its first and last halves, cut at line ends.
        faulthandler writes the newest thread first and the main thread (where the
        event loop runs) last, so the end of a dump is what matters most."""
        if self.fd < 0:
            return ""
        try:
            size = os.fstat(self.fd).st_size - DUMP_OFFSET
            if size <= DUMP_LIMIT:
                data = os.pread(self.fd, max(size, 0), DUMP_OFFSET)
            else:
                half = DUMP_LIMIT // 2
                head = os.pread(self.fd, half, DUMP_OFFSET)
                tail = os.pread(self.fd, half, DUMP_OFFSET + size - half)
                head = head[: head.rfind(b"\n") + 1]
                tail = tail[tail.find(b"\n") + 1 :]
                left_out = size - len(head) - len(tail)
                data = head + b"... (%d bytes left out)\n" % left_out + tail
        except OSError:
            return ""
        # (a worker may have grown the file: what it never wrote reads as zeros)
        return data.replace(b"\0", b"").decode("utf-8", "replace")

    def close(self) -> None:
        """Unmap the page and close the file (once: the number may be reused after)."""
        if self.fd < 0:
            return
        self._words.release()
        with contextlib.suppress(BufferError, ValueError):
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = -1
