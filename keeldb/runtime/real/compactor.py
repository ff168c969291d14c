"""Flush and compaction jobs in a worker process, so the store's own process keeps its GIL for
the writers (table encoding, bloom building and merging cost ~5 s of CPU per million keys).

The parent (`ProcessRunner`, plugged into `LsmEngine.runner` by `keeldb.open`) keeps all
state: it allocates the output file numbers, ships the job, receives the new tables' metadata
and installs them with its usual manifest edit. The worker (`main`, run as
`python -m keeldb.runtime.real.compactor DIR`) only runs the pure functions of
`keeldb.storage.jobs` over a `RealDisk` of the same directory.

Safety:
- The worker inherits the directory's lock fd (`pass_fds`), so while it lives no other
  process can open the store; it exits as soon as its stdin reaches EOF, i.e. when the parent
  closes it or dies (a reader thread watches stdin even while a job runs).
- Outputs of a job that is not installed (worker died, parent died, cancelled) are
  unreferenced files: the parent deletes them, and recovery deletes any left over.
- A worker failure is logged and the job reruns in-process (`InlineRunner`); the store keeps
  the in-process path from then on.
- With a crash hook (tests), the worker reports each crash point and waits for the parent to
  pass it, so a test can kill the parent exactly there.

Wire: frames of `u32 length | msgpack`, each at most `limits.worker_frame_bytes_max`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from itertools import chain, islice
from typing import IO, Any

import msgpack

from keeldb import limits
from keeldb.errors import BackgroundJobCancelledError, BackgroundJobError
from keeldb.runtime.real.disk import RealDisk
from keeldb.storage import jobs
from keeldb.storage.manifest import TableMeta, table_name
from keeldb.storage.memtable import Memtable

log = logging.getLogger("keeldb.embedded")

_LEN = struct.Struct("<I")
MODULE = "keeldb.runtime.real.compactor"
# The directory holding the keeldb package: the worker imports this very copy.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def _send(stream: IO[bytes], msg: Any) -> None:
    payload = msgpack.packb(msg, use_bin_type=True)
    assert len(payload) <= limits.worker_frame_bytes_max, f"frame of {len(payload)} bytes"
    stream.write(_LEN.pack(len(payload)) + payload)
    stream.flush()


def _recv(stream: IO[bytes]) -> Any:
    """One message, or None at EOF (the other side closed or died)."""
    payload = _recv_raw(stream)
    return None if payload is None else _decode(payload)


def _decode(payload: bytes) -> Any:
    # Arrays come back as tuples: memtable versions arrive as entries, ready to sort.
    return msgpack.unpackb(payload, raw=False, use_list=False)


def _recv_raw(stream: IO[bytes]) -> bytes | None:
    """One message still packed, or None at EOF."""
    head = stream.read(4)
    if len(head) < 4:
        return None
    (length,) = _LEN.unpack(head)
    if length > limits.worker_frame_bytes_max:
        raise BackgroundJobError(f"worker frame of {length} bytes is over "
                                 f"worker_frame_bytes_max={limits.worker_frame_bytes_max}")
    payload = stream.read(length)
    return None if len(payload) < length else payload


# --- the parent side ----------------------------------------------------------------------------

class _Worker:
    """One worker process running one job at a time (the engine serialises each kind)."""

    def __init__(self, path: str, lock_fd: int, role: str) -> None:
        self.path = path
        self.lock_fd = lock_fd
        self.role = role
        self.proc: subprocess.Popen[bytes] | None = None
        self.cancelled = False
        self._mu = threading.Lock()  # one job at a time
        self.on_start: Callable[[], None] | None = None  # called as a job starts
        self.last_used = time.monotonic()  # when the last job ended (or the worker started)
        self.used = False  # whether the process ran a job since it started or was recycled
        self.awaiting_ready = False  # a recycled image will say "ready" before its next job
        self.recycles = 0  # times an idle process re-executed itself to give memory back

    def start(self) -> None:
        """Start the process now if it is idle and not running (no job is waiting)."""
        if self._mu.acquire(blocking=False):
            try:
                if not self.cancelled:
                    self._start()
            finally:
                self._mu.release()

    def _start(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            root = _PACKAGE_PARENT
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (root, env.get("PYTHONPATH", "")) if p)
            # A job's big buffers (packed runs, table output) come and go: a fixed mmap
            # threshold gives them back to the OS when freed, where glibc's sliding one
            # would move them onto the heap after the first free and let it grow.
            env.setdefault("MALLOC_MMAP_THRESHOLD_", str(limits.worker_malloc_mmap_threshold_bytes))
            self.proc = subprocess.Popen(
                [sys.executable, "-m", MODULE, self.path], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, pass_fds=(self.lock_fd,), env=env)
            self.last_used = time.monotonic()
            self.used = self.awaiting_ready = False
        return self.proc

    def recycle_if_idle(self, idle_s: float) -> bool:
        """Have the process re-execute itself (same pid, a fresh interpreter) once it ran a
        job and then none for `idle_s`: an idle worker keeps the memory its last job touched
        (~15-40 MB beyond its ~34 MB interpreter) while the store's own process may be at its
        largest (a full block cache). Not a stop and a new start: a process forked from a
        large store shows the store's size for the moment until it executes (which a
        sampler of the process tree would count twice), and the restart would cost more."""
        if self.proc is None or not self.used or time.monotonic() - self.last_used < idle_s:
            return False
        if not self._mu.acquire(blocking=False):
            return False  # a job is starting or running
        try:
            proc = self.proc
            if proc is None or self.cancelled or not self.used or \
                    time.monotonic() - self.last_used < idle_s:
                return False
            assert proc.stdin is not None
            try:
                _send(proc.stdin, ["recycle"])
            except (OSError, ValueError):
                self._reap()  # gone already: the next job starts a new one
                return False
            self.used = False
            self.awaiting_ready = True  # the next job first reads the new image's "ready"
            self.recycles += 1
            return True
        finally:
            self._mu.release()

    def run(self, header: list[Any], chunks: Sequence[Any], hook: jobs.Hook) -> Any:
        """Send a job (a header frame, then `chunks` frames); return the worker's result.

        Raises BackgroundJobCancelledError after `kill`, BackgroundJobError when the worker
        died or reported an error.
        """
        with self._mu:
            if self.cancelled:
                raise BackgroundJobCancelledError("the store is closing")
            proc = self._start()
            if self.on_start is not None:
                self.on_start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                if self.awaiting_ready:
                    ready = _recv(proc.stdout)
                    if ready is None:
                        raise ValueError("no ready frame after the recycle")
                    assert ready == ("ready",), ready
                    self.awaiting_ready = False
                self.used = True
                _send(proc.stdin, header)
                for chunk in chunks:
                    _send(proc.stdin, chunk)
                while True:
                    reply = _recv(proc.stdout)
                    if reply is None:
                        break
                    if reply[0] == "hook":
                        assert hook is not None, "worker reported a crash point unasked"
                        hook(str(reply[1]))
                        _send(proc.stdin, ["go"])
                        continue
                    if reply[0] == "done":
                        return reply[1]
                    raise BackgroundJobError(f"{self.role} worker failed: {reply[1]}")
            except (OSError, ValueError) as exc:  # broken pipe, closed stream
                self._reap()
                self._raise_dead(f"pipe error {exc}")
            except BaseException:
                self._reap()  # mid-conversation (a hook raised, an error reply): start over
                raise
            finally:
                self.last_used = time.monotonic()
            self._reap()
            self._raise_dead("it exited")
            raise AssertionError("unreachable")

    def _raise_dead(self, why: str) -> None:
        if self.cancelled:
            raise BackgroundJobCancelledError(f"{self.role} job cancelled: the store is closing")
        raise BackgroundJobError(f"{self.role} worker process died mid-job ({why})")

    def _reap(self) -> None:
        """Make sure the worker is gone (it may still be writing otherwise)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()

    def kill(self) -> None:
        """Cancel: kill the process now (a running job's thread then sees EOF)."""
        self.cancelled = True
        proc = self.proc
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.kill()

    def close(self) -> None:
        """After `kill` and after the job threads finished: reap the process."""
        with self._mu:
            self._reap()


class ProcessRunner:
    """`jobs.JobRunner` that runs jobs in worker processes (one per kind, started lazily),
    falling back to `fallback` (in-process) when a worker fails."""

    def __init__(self, path: str, lock_fd: int, spec: jobs.TableSpec,
                 fallback: jobs.InlineRunner, memtable_bytes: int) -> None:
        self.spec = spec
        # Jobs below this many bytes run in-process (see limits.worker_job_min_...).
        self.job_bytes_min = memtable_bytes // limits.worker_job_min_memtable_divisor
        self.fallback = fallback
        self.disk = fallback.disk
        self.failed: str | None = None  # why the store went back to in-process jobs
        self._workers = {role: _Worker(path, lock_fd, role) for role in ("flush", "compact")}
        self.idle_s = limits.worker_idle_recycle_ms / 1000
        # Both workers start with the first job. A child's ru_maxrss (what RUSAGE_CHILDREN
        # reports) starts at its parent's RSS at fork time, and the store grows (cache,
        # memtables): a worker forked late would report the store's size, not its own.
        for worker in self._workers.values():
            worker.on_start = self._start_all

    def warm(self) -> None:
        """Start both workers now (called once, when the first memtable is a quarter full):
        a child's ru_maxrss starts at its parent's RSS at fork time, so a worker forked from
        a small store reports its own peak, not the store's."""
        if self.failed is None:
            self._start_all()

    def _start_all(self) -> None:
        for worker in self._workers.values():
            worker.on_start = None
        for worker in self._workers.values():
            worker.start()

    def flush(self, mem: Memtable, number: int, hook: jobs.Hook) -> TableMeta:
        if self.failed is None and mem.bytes >= self.job_bytes_min:
            entries = mem.all_versions()
            step = limits.worker_flush_chunk_entries
            chunks = [entries[i:i + step] for i in range(0, len(entries), step)]
            header = ["flush", self.spec.to_list(), number, len(chunks), hook is not None,
                      not mem.old]
            try:
                result = self._workers["flush"].run(header, chunks, hook)
                meta = jobs.meta_from_list(result)
                assert meta.id == number and meta.entries == len(entries), (meta, number)
                return meta
            except BackgroundJobCancelledError:
                self._discard([number])
                raise
            except BackgroundJobError as exc:
                self._give_up(exc, "flush", [number])
        return self.fallback.flush(mem, number, hook)

    def compact(self, tables: Sequence[TableMeta], bottom: bool, snapshots: list[int],
                alloc: Callable[[], int], hook: jobs.Hook) -> tuple[TableMeta, ...]:
        if self.failed is None and sum(t.file_bytes for t in tables) >= self.job_bytes_min:
            numbers = [alloc() for _ in range(jobs.output_numbers_needed(tables, self.spec))]
            header = ["compact", self.spec.to_list(), [t.to_list() for t in tables], bottom,
                      snapshots, numbers, hook is not None]
            try:
                result = self._workers["compact"].run(header, (), hook)
                outputs = tuple(map(jobs.meta_from_list, result))
                assert {t.id for t in outputs} <= set(numbers), (outputs, numbers)
                self._discard([n for n in numbers if n not in {t.id for t in outputs}])
                return outputs
            except BackgroundJobCancelledError:
                self._discard(numbers)
                raise
            except BackgroundJobError as exc:
                self._give_up(exc, "compact", numbers)
        return self.fallback.compact(tables, bottom, snapshots, alloc, hook)

    def _give_up(self, exc: BaseException, role: str, numbers: list[int]) -> None:
        """After a worker failure: reap that worker, drop its outputs, go in-process. (The
        other kind's worker may be mid-job: it finishes; later jobs run in-process.)"""
        self.failed = str(exc)
        log.warning("keeldb: %s; running flushes and compactions in-process from now on",
                    exc)
        self._workers[role].close()
        self._discard(numbers)

    def _discard(self, numbers: list[int]) -> None:
        """Remove outputs a worker may have left (it is dead or idle by now)."""
        for n in numbers:
            self.disk.remove(table_name(n))

    def recycle_idle(self) -> None:
        """Recycle the worker processes that had no job for `limits.worker_idle_recycle_ms`
        (the embedded DB calls this from its background loop)."""
        for worker in self._workers.values():
            worker.recycle_if_idle(self.idle_s)

    def cancel(self) -> None:
        """Stop running jobs now (close() calls it before joining the job threads)."""
        for worker in self._workers.values():
            worker.kill()

    def close(self) -> None:
        for worker in self._workers.values():
            worker.kill()
            worker.close()


# --- the worker side ----------------------------------------------------------------------------

def _reader(stdin: IO[bytes], inbox: queue.Queue[bytes]) -> None:
    """Forward messages, still packed (a packed frame is ~1/2.5 of its decoded form); exit
    the whole process at EOF: the parent closed or died, and a worker must never go on
    writing into a store another process may have opened."""
    while True:
        try:
            msg = _recv_raw(stdin)
        except BaseException:  # noqa: BLE001 - a broken pipe ends the worker all the same
            msg = None
        if msg is None:
            os._exit(0)
        inbox.put(msg)


def _run_job(disk: RealDisk, msg: list[Any], inbox: queue.Queue[bytes],
             out: IO[bytes], spill_dir: str) -> Any:
    kind = msg[0]
    spec = jobs.TableSpec.from_list(msg[1])

    def hook_proxy(name: str) -> None:
        _send(out, ["hook", name])
        reply = _decode(inbox.get())
        assert reply == ("go",), reply

    if kind == "flush":
        number, nchunks, hooks, unique = int(msg[2]), int(msg[3]), bool(msg[4]), msg[5]
        # The sorted runs wait in an unnamed file of the store's directory (O_TMPFILE: gone
        # with the process, whatever happens), not in memory: the merge reads them back
        # `limits.worker_run_read_bytes` at a time, so the worker's memory no longer grows
        # with the memtable (it held ~1.1x the memtable's bytes as packed runs).
        with tempfile.TemporaryFile(dir=spill_dir, buffering=0) as spill:
            count = 0
            spans = []
            for _ in range(nchunks):
                n, blob = _sorted_run(_decode(inbox.get()), bool(unique))
                spans.append((_append(spill.fileno(), blob), len(blob)))
                count += n
                del blob
            entries = _merge_runs([_Span(spill.fileno(), at, size) for at, size in spans],
                                  bool(unique))
            meta = jobs.build_table_stream(disk, spec, entries, count, number,
                                           hook_proxy if hooks else None)
        return meta.to_list()
    if kind == "compact":
        tables = [jobs.meta_from_list(t) for t in msg[2]]
        bottom, snapshots, numbers, hooks = bool(msg[3]), list(msg[4]), list(msg[5]), msg[6]
        outputs = jobs.compact_tables(disk, spec, tables, bottom, snapshots,
                                      jobs.numbers_from(numbers),
                                      hook_proxy if hooks else None)
        return [t.to_list() for t in outputs]
    raise BackgroundJobError(f"unknown job kind {kind!r}")


def _sorted_run(chunk: Sequence[jobs.Entry], unique: bool) -> tuple[int, bytes]:
    """One frame of memtable versions, sorted and packed back (entry after entry), to be
    spilled to the job's run file: decoded, a frame is ~2.5x its packed bytes."""
    entries = sorted(chunk) if unique else jobs.sort_flush_entries(list(chunk))
    # One pack call for the whole run, minus the array header: the entries' bytes, one after
    # another (what a pack per entry gives, for ~2/3 less CPU).
    packed = msgpack.packb(entries, use_bin_type=True)
    return len(entries), packed[_array_header_bytes(len(entries)):]


def _array_header_bytes(count: int) -> int:
    """Length of msgpack's array header for `count` items (fixarray, array16, array32)."""
    return 1 if count < 16 else 3 if count < 1 << 16 else 5


def _append(fd: int, data: bytes) -> int:
    """Append `data` to the file `fd` (all of it); return the offset it starts at."""
    at = os.lseek(fd, 0, os.SEEK_END)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return at


class _Span:
    """A read-only stream over bytes [at, at + size) of file `fd` (one spilled run)."""

    __slots__ = ("_fd", "_at", "_end")

    def __init__(self, fd: int, at: int, size: int) -> None:
        self._fd, self._at, self._end = fd, at, at + size

    def read(self, n: int = -1) -> bytes:
        n = self._end - self._at if n < 0 else min(n, self._end - self._at)
        data = os.pread(self._fd, n, self._at) if n > 0 else b""
        self._at += len(data)
        return data


def _merge_runs(streams: Sequence[Any], unique: bool) -> Iterator[jobs.Entry]:
    """The entries of the sorted runs in `streams` (file-likes: `read(n)`) in table order,
    unpacked `limits.worker_run_read_bytes` at a time."""
    its = [msgpack.Unpacker(stream, raw=False, use_list=False,
                            read_size=limits.worker_run_read_bytes) for stream in streams]
    return chain.from_iterable(_merged_chunks(its, unique))


def _merged_chunks(its: list[msgpack.Unpacker], unique: bool) -> Iterator[list[jobs.Entry]]:
    """Merge sorted runs a chunk at a time, in C: take up to `limits.worker_merge_run_entries`
    from each run, cut at the smallest last entry among the runs that have more, and sort
    what lies at or below the cut together (timsort merges the sorted pieces). A per-entry
    `heapq.merge` cost a Python generator step and a heap operation per entry: ~2x the CPU."""
    step = limits.worker_merge_run_entries
    # one version per key: tuples order by key alone; else (key asc, seq desc)
    order = None if unique else jobs.flush_order
    runs = []  # [buffered entries, iterator, may have more]
    for it in its:
        buf = list(islice(it, step))
        if buf:
            runs.append([buf, it, len(buf) == step])
    while runs:
        tails = [run[0][-1] for run in runs if run[2]]
        if not tails:  # every run is fully buffered: the rest, sorted
            chunk = [e for run in runs for e in run[0]]
            chunk.sort(key=order)
            yield chunk
            return
        cut = min(tails, key=order)
        bound = cut if order is None else order(cut)
        chunk = []
        for run in runs:
            buf = run[0]
            at = bisect_right(buf, bound, key=order)
            if at:
                chunk += buf[:at]
                del buf[:at]
            if not buf and run[2]:
                buf += islice(run[1], step)
                run[2] = len(buf) == step
        runs = [run for run in runs if run[0]]
        assert chunk, "a merge round must make progress: the cut run is taken whole"
        chunk.sort(key=order)
        yield chunk


RECYCLED = "--recycled"  # argv flag of a worker image that replaced an idle one


def main(argv: list[str]) -> int:
    """Worker entry: `python -m keeldb.runtime.real.compactor DIR` (started by the store)."""
    recycled = argv[1:] == [RECYCLED]
    if len(argv) != 1 and not recycled:
        sys.stderr.write(f"usage: python -m {MODULE} DIR\n")
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this one stops
    disk = RealDisk(argv[0], create=False)
    stdin, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames may reach the parent's pipe
    # Bounded: the reader stops reading (and the parent blocks on the pipe) while the job
    # works through what it has; a flush spills each frame as a sorted run to a file.
    inbox: queue.Queue[bytes] = queue.Queue(limits.worker_inbox_frames_max)
    threading.Thread(target=_reader, args=(stdin, inbox), daemon=True).start()
    if recycled:
        _send(out, ["ready"])
    while True:
        msg = _decode(inbox.get())
        if msg == ("recycle",):  # idle: give the memory back, keep the pid, pipes and lock
            out.flush()
            os.execv(sys.executable, [sys.executable, "-m", MODULE, argv[0], RECYCLED])
        try:
            result = _run_job(disk, msg, inbox, out, argv[0])
        except Exception as exc:  # reported; the parent reruns the job in-process
            _send(out, ["error", f"{type(exc).__name__}: {exc}"])
            continue
        _send(out, ["done", result])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
