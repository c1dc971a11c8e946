"""Where a repository's bytes live: one small interface, one module per URL scheme.

Every backend stores the same keys (see dogestry-repository(5)); the repository layer
above never knows which one it talks to. The contract, which tests/test_backend_contract.py
runs against every backend:

- keys are `/`-separated relative paths checked by `check_key`;
- `get`/`open`/`size` raise NotFound for a missing key, StorageError for anything else;
  `get(key, limit=N)` raises CorruptObject instead of reading more than N bytes;
- `put`/`put_file` are atomic: a reader sees the whole object or nothing;
- with overwrite=False they are write-once: an existing key is left alone and False
  is returned (the object is content-addressed, so the existing copy is the same);
- `list(prefix)` yields every complete key under prefix, never a temporary;
- `writer(key)` streams an object of unknown size; nothing is visible before `commit()`,
  and `abort()` (or an exception) leaves nothing behind;
- optional capabilities are declared in `capabilities`, never probed: PRESIGN (`presign`),
  WRITE (a read-only backend raises StorageError from every write).

A network backend raises retry.TransientError for what may pass (throttling, 5xx, a reset)
and lets retry.retrying() decide when to give up; everything else is permanent.
"""

import errno
import os
import re
import stat
import tempfile
from urllib.parse import urlsplit

from ..errors import NotFound, StorageError, UsageError

_KEY_RE = re.compile(r"^[A-Za-z0-9_.:@+\[\]-]+(?:/[A-Za-z0-9_.:@+\[\]-]+)*$")
PRESIGN, WRITE = "presign", "write"


def check_key(key):
    """Refuse keys that could escape the repository or collide with temporaries."""
    if not _KEY_RE.match(key) or any(part in (".", "..") or part.startswith(".") for part in key.split("/")):
        raise UsageError(f"invalid object key {key!r}")
    return key


class Backend:
    """Base class; a backend fills in the storage primitives."""

    kind = "?"
    capabilities = frozenset({WRITE})

    def __init__(self, url, temp_dir=None):
        self.url = url
        self.temp_dir = temp_dir

    # -- primitives every backend implements --------------------------------------
    def get(self, key, limit=None):
        """The object's bytes; with limit, CorruptObject rather than more than limit bytes."""
        raise NotImplementedError

    def open(self, key):
        """A binary reader (read(n), close()) of the object's bytes."""
        raise NotImplementedError

    def size(self, key):
        """The object's size in bytes."""
        raise NotImplementedError

    def exists(self, key):
        raise NotImplementedError

    def put(self, key, data, overwrite=False):
        raise NotImplementedError

    def list(self, prefix=""):
        raise NotImplementedError

    def delete(self, key):
        raise NotImplementedError

    def scan(self, prefix=""):
        """ObjectInfo(key, size, mtime) for every key under prefix, as list() yields them.

        mtime is seconds since the epoch of the object's last write (None when the backend
        cannot tell); list() and size() by default, one listing where the backend can.
        """
        for key in self.list(prefix):
            try:
                yield ObjectInfo(key, self.size(key), None)
            except NotFound:
                continue  # deleted since it was listed

    def unlisted(self, prefix=""):
        """Names under prefix spelled as keys that list() leaves out because they hold no
        object: only a filesystem has such things (a FIFO, a directory or a link out where a
        file would be). gc asks, so that a ref it cannot read stops it rather than counting
        as absent."""
        return []

    # -- defaults a backend may improve on ----------------------------------------
    def put_file(self, key, path, overwrite=False):
        """Store the file at `path` under `key` and remove `path` (it was a spool file)."""
        try:
            with open(path, "rb") as f:
                return self.put(key, f.read(), overwrite=overwrite)
        finally:
            os.unlink(path)

    def writer(self, key, overwrite=False):
        """An ObjectWriter for streaming bytes into key (default: spool, then put_file)."""
        return SpoolWriter(self, key, overwrite)

    def spool(self):
        """A temporary file for bytes whose key is only known once they are all read.

        Local directories spool inside the repository so `put_file` is a rename; others in
        the temp directory, locked (flock) while open so a later run tells a live spool
        from one a killed process left (leftovers).
        """
        import fcntl

        try:
            spool = tempfile.NamedTemporaryFile(dir=self.temp_dir, prefix=SPOOL_PREFIX, delete=False)
        except OSError as err:
            where = self.temp_dir or tempfile.gettempdir()
            where = where if len(where) <= 300 else where[:300] + "..."
            raise StorageError(f"cannot create a spool file in {where}: {err.strerror or err}") from None
        fcntl.flock(spool.fileno(), fcntl.LOCK_EX)
        return _SpoolFile(spool)

    def leftovers(self):
        """(what, size, age in seconds) of temporaries killed writers left: spool files in the
        temp directory that no process holds."""
        import glob
        import time

        now = time.time()
        for path in glob.glob(os.path.join(self.temp_dir or tempfile.gettempdir(), SPOOL_PREFIX + "*")):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                st = unheld(fd)
                if st is not None:
                    yield path, st.st_size, max(0.0, now - st.st_mtime)
            finally:
                os.close(fd)

    def clean_leftovers(self, min_age=3600):
        """Remove leftovers older than min_age seconds; return (count, bytes)."""
        count = size = 0
        for path, length, age in list(self.leftovers()):
            if age >= min_age:
                try:
                    os.unlink(path)
                except OSError:
                    continue
                count, size = count + 1, size + length
        return count, size

    def presign(self, key, expires):
        """A URL that GETs key for `expires` seconds, with no credentials (PRESIGN only)."""
        raise NotImplementedError

    def location(self):
        return self.url

    def missing(self):
        """Why there can be no repository here at all (a local path that is no directory), or
        None. An empty location that exists is an empty repository."""
        return None

    def close(self):
        pass


def too_large(key, where, limit):
    from ..errors import CorruptObject

    return CorruptObject(f"{key} in {where} is larger than {limit} bytes, more than such an object can be: "
                         "the repository is damaged")


SPOOL_PREFIX = "dogestry-spool-"


def unheld(fd):
    """The stat of the open fd if it is a regular file no live writer holds locked (a
    temporary a killed process left), else None. Takes the lock: keep fd open while acting."""
    import fcntl

    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return None  # its writer is alive
    return st


class _SpoolFile:
    """A spool file whose lock outlives close(): released when the file is published or removed."""

    def __init__(self, file):
        self._file, self.name = file, file.name
        self._lock_fd = os.dup(file.fileno())

    def write(self, data):
        try:
            return self._file.write(data)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise StorageError(f"no space left in the temp directory {os.path.dirname(self.name)} while "
                                   f"spooling a layer to {self.name}; set [dogestry] temp-dir") from None
            raise StorageError(f"cannot write the spool file {self.name}: {err.strerror or err}") from None

    def close(self):
        """Flush and close. A layer smaller than the file's buffer is written only here, so a
        full disk shows here first: swallowed, the spool was published short (an empty layer
        under its final key, with a descriptor describing the real bytes)."""
        if self._file.closed:
            return
        try:
            self._file.close()
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise StorageError(f"no space left in the temp directory {os.path.dirname(self.name)} while "
                                   f"spooling a layer to {self.name}; set [dogestry] temp-dir") from None
            raise StorageError(f"cannot write the spool file {self.name}: {err.strerror or err}") from None

    def __del__(self):
        if getattr(self, "_lock_fd", None) is not None:
            try:
                os.close(self._lock_fd)
            except OSError:
                pass
            self._lock_fd = None


class ObjectInfo:
    """What a listing says of one key. `etag` is a tag the store derives from the object's
    bytes (S3's ETag), or None: two keys of one store with the same etag hold the same
    bytes, so a reader of many small objects (a thousand refs to one image) reads one of them."""

    __slots__ = ("key", "size", "mtime", "etag")

    def __init__(self, key, size, mtime, etag=None):
        self.key, self.size, self.mtime, self.etag = key, size, mtime, etag

    def __repr__(self):
        return f"ObjectInfo({self.key!r}, {self.size}, {self.mtime})"


class SpoolWriter:
    """Streams into a spool file and publishes it with put_file on commit."""

    def __init__(self, backend, key, overwrite):
        self.backend, self.key, self.overwrite = backend, key, overwrite
        self._spool = backend.spool()

    def write(self, data):
        self._spool.write(data)

    def commit(self):
        self._spool.close()
        return self.backend.put_file(self.key, self._spool.name, overwrite=self.overwrite)

    def abort(self):
        self._spool.close()
        if os.path.exists(self._spool.name):
            os.unlink(self._spool.name)


def _local(url, temp_dir, config):
    from .local import LocalBackend

    return LocalBackend(url, temp_dir=temp_dir)


def _s3(url, temp_dir, config):
    from .s3 import S3Backend

    return S3Backend(url, temp_dir=temp_dir, config=config)


def _presigned(url, temp_dir, config):
    from .presigned import PresignedIndexBackend

    return PresignedIndexBackend(url, temp_dir=temp_dir, config=config)


# One place decides which module serves a URL (dulwich's get_transport_and_path).
SCHEMES = {"file": _local, "s3": _s3, "https": _presigned, "http": _presigned}


def open_backend(url, temp_dir=None, config=None):
    """A backend for a repository URL or a local path."""
    if "://" not in url:
        if not url:
            raise UsageError("empty repository location")
        factory = _local
    else:
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError as err:
            raise UsageError(f"invalid repository URL {mask_url(url)[:200]!r}: {err}") from None
        factory = SCHEMES.get(scheme)
        if factory is None:
            supported = ", ".join(f"{s}://" for s in SCHEMES)
            raise UsageError(f"unsupported repository URL scheme {scheme!r} in {mask_url(url)!r}; "
                             f"supported: a path, {supported}")
    backend = factory(url, temp_dir, config)
    if os.environ.get("DOGESTRY_TEST_CRASH"):
        # The crash-safety tests kill a real push at chosen points (tests/test_reliability.py).
        from .crashpoint import crashing

        backend = crashing(backend, os.environ["DOGESTRY_TEST_CRASH"])
    return backend


def mask_url(url):
    """A URL fit for output: a query string (presigned signatures, credentials) and a
    password in the authority (http://user:password@host/) are hidden."""
    base, sep, query = url.partition("?")
    scheme, sep2, rest = base.partition("://")
    if sep2:
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            base = f"{scheme}://<user>@{authority.rpartition('@')[2]}{slash}{path}"
    if sep and any(marker in query for marker in ("Signature", "Credential", "Security-Token", "AWSAccessKeyId")):
        return base + "?<signed>"
    return base + sep + query
