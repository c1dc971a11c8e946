"""A repository in a local directory (or anything mounted as one)."""

import errno
import os
import tempfile
from urllib.parse import unquote, urlsplit

from ..errors import NotFound, StorageError, UsageError
from . import Backend, check_key, too_large

_CHUNK = 1 << 20


def _path_of(url):
    if url.startswith("file://"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise UsageError(f"file URL {url!r} names host {parts.netloc!r}; use file:///absolute/path")
        return unquote(parts.path)
    return url


class LocalBackend(Backend):
    kind = "local"

    def __init__(self, url, temp_dir=None):
        super().__init__(url, temp_dir)
        self.root = os.path.abspath(_path_of(url))

    def location(self):
        return self.root

    def _path(self, key):
        return os.path.join(self.root, *check_key(key).split("/"))

    def _storage_error(self, err, what):
        return StorageError(f"{what}: {err.strerror or err} ({self.root})")

    def get(self, key, limit=None):
        try:
            with open(self._path(key), "rb") as f:
                data = f.read() if limit is None else f.read(limit + 1)
                if limit is not None and len(data) > limit:
                    raise too_large(key, self.root, limit)
                return data
        except FileNotFoundError:
            raise NotFound(f"{key} not found in {self.root}") from None
        except OSError as err:
            raise self._storage_error(err, f"cannot read {key}") from None

    def open(self, key):
        try:
            return open(self._path(key), "rb", buffering=_CHUNK)
        except FileNotFoundError:
            raise NotFound(f"{key} not found in {self.root}") from None
        except OSError as err:
            raise self._storage_error(err, f"cannot read {key}") from None

    def exists(self, key):
        return os.path.isfile(self._path(key))

    def size(self, key):
        try:
            return os.stat(self._path(key)).st_size
        except FileNotFoundError:
            raise NotFound(f"{key} not found in {self.root}") from None

    def _temp_beside(self, path):
        directory = os.path.dirname(path)
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".tmp-")
        except OSError as err:
            raise self._storage_error(err, f"cannot write in {directory}") from None
        return fd, tmp

    def put(self, key, data, overwrite=False):
        path = self._path(key)
        if not overwrite and os.path.exists(path):
            return False
        fd, tmp = self._temp_beside(path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return self._publish(tmp, path, overwrite)
        except OSError as err:
            raise self._storage_error(err, f"cannot write {key}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _publish(self, tmp, path, overwrite):
        """Make tmp visible as path, atomically; write-once unless overwrite."""
        os.chmod(tmp, 0o644)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path exists: never replaces a published object
            except FileExistsError:
                return False
            os.unlink(tmp)
        _fsync_dir(os.path.dirname(path))
        return True

    def put_file(self, key, path, overwrite=False):
        dest = self._path(key)
        try:
            if not overwrite and os.path.exists(dest):
                return False
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
            try:
                return self._publish(path, dest, overwrite)
            except OSError as err:
                if err.errno != errno.EXDEV:
                    raise
            # The spool is on another filesystem: copy beside the target, then publish.
            fd, tmp = self._temp_beside(dest)
            try:
                with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                return self._publish(tmp, dest, overwrite)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except OSError as err:
            raise self._storage_error(err, f"cannot write {key}") from None
        finally:
            if os.path.exists(path):
                os.unlink(path)

    def writer(self, key, overwrite=False):
        return _LocalWriter(self, key, overwrite)

    def spool(self):
        spool_dir = os.path.join(self.root, ".spool")
        try:
            os.makedirs(spool_dir, exist_ok=True)
            return tempfile.NamedTemporaryFile(dir=spool_dir, prefix=".layer-", delete=False)
        except OSError as err:
            raise self._storage_error(err, "cannot create a spool file") from None

    def list(self, prefix=""):
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        if not os.path.isdir(base):
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = os.path.relpath(dirpath, self.root)
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                yield name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"

    def delete(self, key):
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as err:
            raise self._storage_error(err, f"cannot delete {key}") from None


class _LocalWriter:
    """Streams into a temporary file beside the key; commit publishes it atomically."""

    def __init__(self, backend, key, overwrite):
        self.backend, self.key, self.overwrite = backend, key, overwrite
        self.path = backend._path(key)
        fd, self.tmp = backend._temp_beside(self.path)
        self.file = os.fdopen(fd, "wb", buffering=_CHUNK)

    def write(self, data):
        try:
            self.file.write(data)
        except OSError as err:
            self.abort()
            raise self.backend._storage_error(err, f"cannot write {self.key}") from None

    def commit(self):
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            return self.backend._publish(self.tmp, self.path, self.overwrite)
        except OSError as err:
            raise self.backend._storage_error(err, f"cannot write {self.key}") from None
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)

    def abort(self):
        self.file.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def _fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
