"""Kill the process at a chosen storage operation, for the crash-safety tests.

Active only when DOGESTRY_TEST_CRASH is set (backends.open_backend wraps the backend).
The spec is `OP:GLOB[:N]`: on the Nth operation OP on a key matching GLOB (fnmatch, so
`*` also crosses `/`), the process sends itself SIGKILL, as a power cut or the OOM killer
would: no finally block, no atexit, no flush runs.

    before-put, put            before / after put(key, ...)          (descriptors, configs, records, refs)
    before-put_file, put_file  before / after put_file(key, ...)     (a spooled layer's data)
    before-commit, commit      before / after a streamed writer's commit()
    before-delete, delete      before / after delete(key)            (untag, gc, a lease's release)
    write                      before the Nth write() into one writer of a matching key (so
                               N > 1 is always mid-object); the pseudo-key `spool` matches
                               spool() files
    read                       before the Nth read() from one reader open() on a matching key

N counts from 1 and defaults to 1: matching operations for put, put_file, commit and delete, calls
on one object for write and read. Everything else is forwarded to the real backend, so
the wrapper is invisible until its point is reached.
"""

import fnmatch
import os
import signal

from ..errors import UsageError

OPS = ("before-put", "put", "before-put_file", "put_file", "before-commit", "commit", "before-delete", "delete",
       "write", "read")
SPOOL = "spool"


def parse(spec):
    """(op, glob, n) of a spec, or UsageError."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in OPS or not parts[1]:
        raise UsageError(f"DOGESTRY_TEST_CRASH={spec!r}: expected OP:GLOB[:N] with OP one of {', '.join(OPS)}")
    n = 1
    if len(parts) == 3:
        if not parts[2].isdigit() or int(parts[2]) < 1:
            raise UsageError(f"DOGESTRY_TEST_CRASH={spec!r}: N must be a positive integer")
        n = int(parts[2])
    return parts[0], parts[1], n


def die():
    os.kill(os.getpid(), signal.SIGKILL)


class _Point:
    def __init__(self, spec):
        self.op, self.glob, self.n = parse(spec)
        self.seen = 0

    def hit(self, op, key, count=None):
        """Count an operation (or take an object's own count); kill the process at the chosen one."""
        if op != self.op or not fnmatch.fnmatchcase(key, self.glob):
            return
        if count is None:
            self.seen += 1
            count = self.seen
        if count == self.n:
            die()


class _Forwarding:
    """Forwards every attribute it does not define to the wrapped object."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _Writer(_Forwarding):
    def __init__(self, inner, point, key):
        super().__init__(inner)
        self._point, self._key, self._writes = point, key, 0

    def write(self, data):
        self._writes += 1
        self._point.hit("write", self._key, self._writes)
        return self._inner.write(data)

    def commit(self):
        self._point.hit("before-commit", self._key)
        published = self._inner.commit()
        self._point.hit("commit", self._key)
        return published


class _Reader(_Forwarding):
    def __init__(self, inner, point, key):
        super().__init__(inner)
        self._point, self._key, self._reads = point, key, 0

    def read(self, *args):
        self._reads += 1
        self._point.hit("read", self._key, self._reads)
        return self._inner.read(*args)


class CrashingBackend(_Forwarding):
    """The real backend, with the crash point on the way to it."""

    def __init__(self, backend, spec):
        super().__init__(backend)
        self._point = _Point(spec)

    def put(self, key, data, overwrite=False):
        self._point.hit("before-put", key)
        published = self._inner.put(key, data, overwrite=overwrite)
        self._point.hit("put", key)
        return published

    def put_file(self, key, path, overwrite=False):
        self._point.hit("before-put_file", key)
        published = self._inner.put_file(key, path, overwrite=overwrite)
        self._point.hit("put_file", key)
        return published

    def delete(self, key):
        self._point.hit("before-delete", key)
        self._inner.delete(key)
        self._point.hit("delete", key)

    def writer(self, key, overwrite=False):
        return _Writer(self._inner.writer(key, overwrite=overwrite), self._point, key)

    def spool(self):
        return _Writer(self._inner.spool(), self._point, SPOOL)

    def open(self, key):
        return _Reader(self._inner.open(key), self._point, key)


def crashing(backend, spec):
    return CrashingBackend(backend, spec)
