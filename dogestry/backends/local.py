"""A repository in a local directory (or anything mounted as one).

A local repository may be damaged or hostile (a shared mount, a copied tree), so:

- Below the root, paths are walked one component at a time with openat(O_NOFOLLOW) from
  the directory opened before, never by path string. A symbolic link is followed only when
  its target, resolved over those opened directories, stays inside the root; a link out
  (`repositories/app/1 -> /dev/zero`, `layers -> /etc`) is refused. Links that stay inside
  are harmless (whoever can write one could write the file itself, and every object is
  verified by digest) and useful (`repositories/app/latest -> 1.4` as a hand-made alias);
  resolving them ourselves, over held directory descriptors, means a concurrent swap of a
  component cannot steer a read or a write out of the tree. The root itself may be a link.
- Only regular files are opened for reading: the entry is lstat'ed first and opened
  O_NONBLOCK|O_NOFOLLOW, then fstat'ed, so a FIFO, device or socket is refused without a
  read that could block or never end. `get(key, limit)` never reads more than limit+1 bytes.
- Every temporary lives in ROOT/.spool (same filesystem as the objects, so publishing is
  still one link or rename) and is flock'ed by its writer for as long as it lives. A
  temporary left by a killed writer is unlocked: `leftovers()` finds it and
  `clean_leftovers()` removes it once it is old enough; the first write of each backend
  does that for .spool (one listdir, however large the repository).
- Every OSError becomes a one-line StorageError naming the key, the root and, for a full
  disk, whether the write was spooling.
"""

import errno
import fcntl
import os
import re
import stat
import time
import weakref
from urllib.parse import unquote, urlsplit

from ..errors import CONTROL_ESCAPES, CorruptObject, DogestryError, NotFound, StorageError, UsageError
from . import Backend, ObjectInfo, check_key, unheld

_CHUNK = 1 << 20
_OBJECT_DIRS = ("layers", "configs", "images")  # what gc deletes, as opposed to what keeps objects alive
SPOOL_DIR = ".spool"
_MAX_LINKS = 40  # as the kernel's MAXSYMLINKS: a longer chain is a loop
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# A temporary beside a key: written by dogestry before temporaries moved to .spool, and
# still by the cross-filesystem fallback of _publish.
_BESIDE_TEMP_RE = re.compile(r"^\..+\.tmp-[A-Za-z0-9_]+$")


def _path_of(url):
    if url.startswith("file://"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            # Without its user:password@, which is not for output (and means nothing here).
            host = parts.netloc.rpartition("@")[2]
            raise UsageError(f"file URL {_shown('file://' + host + parts.path)!r} names host {_shown(host)!r}; "
                             "use file:///absolute/path")
        if parts.query or parts.fragment or url.endswith(("?", "#")):
            # Dropped silently, `file:///srv/repo?x` would be /srv/repo: say so instead of guessing.
            raise UsageError(f"file URL {_shown(url.partition('?')[0].partition('#')[0])!r} has a query or "
                             "fragment; use file:///absolute/path (write ? and # in a path as %3F and %23)")
        if not parts.path:  # file:// alone would be the current directory: never guess a place to write
            raise UsageError(f"file URL {url!r} names no path; use file:///absolute/path")
        return unquote(parts.path)
    return url


def _shown(path, limit=300):
    """A path fit for a one-line message: control characters (a newline typed into the
    repository path) escaped, bytes that are not UTF-8 as \\xff, and a very long one cut
    in the middle."""
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace").translate(CONTROL_ESCAPES)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]}"


def _kind(mode):
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISLNK, "a symbolic link"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "of an unknown type"


class _LinkOut(StorageError):
    """A symbolic link below the root whose target is outside it."""


class LocalBackend(Backend):
    kind = "local"

    def __init__(self, url, temp_dir=None):
        super().__init__(url, temp_dir)
        self.root = os.path.abspath(_path_of(url))
        self.shown = _shown(self.root)  # the root in messages
        self._cleaned = False
        # Temporaries this backend created and still holds locked, by path, so put_file
        # can release the lock of a spool it consumes. Weak: a spool object dropped
        # without put_file releases its lock when it is collected.
        self._live = weakref.WeakValueDictionary()

    def missing(self):
        if os.path.isdir(self.root):
            return None
        return "a file, not a directory" if os.path.lexists(self.root) else "no such directory"

    def location(self):
        return self.shown

    # -- walking below the root -------------------------------------------------------
    def _inside(self, target):
        """Components of an absolute link target below the root, or None when it is outside."""
        target = os.path.normpath(target)
        for base in {self.root, os.path.realpath(self.root)}:
            if target == base:
                return []
            if target.startswith(base.rstrip("/") + "/"):
                return target[len(base.rstrip("/")) + 1:].split("/")
        return None

    def _open_root(self, create):
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create:
                raise
            os.makedirs(self.root, exist_ok=True)
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _walk(self, parts, create=False, follow_last=True, what=None):
        """Open the directory holding the last of `parts`: (dir fd, last name).

        Links are followed only inside the root (see the module docstring); with
        follow_last=False the last component is returned as it is (a write replaces a
        link, it does not write through it). With create, missing directories are made.
        Raises FileNotFoundError/NotADirectoryError for a missing path, _LinkOut for a
        link out of the root.
        """
        what = what or "/".join(parts)
        fds = [self._open_root(create)]
        names = []
        pending = list(parts)
        links = 0
        try:
            while True:
                name = pending.pop(0)
                if name in ("", "."):
                    if pending:
                        continue
                    name = "."  # a link to "dir/": the entry is the directory itself
                if name == "..":
                    if not names:
                        raise _LinkOut(f"{what} in {self.shown} leads out of the repository through a relative "
                                       "symbolic link; refusing to follow it")
                    os.close(fds.pop())
                    names.pop()
                    continue
                if not pending:
                    if follow_last:
                        try:
                            st = os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
                        except FileNotFoundError:
                            st = None
                        if st is not None and stat.S_ISLNK(st.st_mode):
                            links = self._expand(fds, names, pending, name, links, what)
                            continue
                    result = fds.pop(), name
                    return result
                try:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=fds[-1])
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(name, 0o755, dir_fd=fds[-1])
                    except FileExistsError:
                        pass  # a concurrent writer made it
                    pending.insert(0, name)
                    continue
                except OSError as err:
                    if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        raise NotADirectoryError(errno.ENOTDIR, f"{'/'.join(names + [name])} is {_kind(st.st_mode)}, "
                                                 "not a directory") from None
                    links = self._expand(fds, names, pending, name, links, what)
                    continue
                fds.append(fd)
                names.append(name)
        finally:
            for fd in fds:
                os.close(fd)

    def _expand(self, fds, names, pending, name, links, what):
        """Replace the link `name` in the walk by its target; restart at the root for an absolute one."""
        links += 1
        target = os.readlink(name, dir_fd=fds[-1])
        link = "/".join(names + [name])
        subject = f"{what} in {self.shown}" + ("" if link == what else f": {link}")
        if links > _MAX_LINKS:
            raise _LinkOut(f"{subject}: too many levels of symbolic links")
        if target.startswith("/"):
            rest = self._inside(target)
            if rest is None:
                raise _LinkOut(f"{subject} is a symbolic link out of the repository (to {target}); "
                               "refusing to follow it")
            while len(fds) > 1:
                os.close(fds.pop())
            names.clear()
            pending[:0] = rest
        else:
            pending[:0] = target.split("/")
        return links

    def _key_parts(self, key):
        return check_key(key).split("/")

    # -- errors ----------------------------------------------------------------------
    def _read_error(self, err, key):
        if isinstance(err, DogestryError):
            return err
        if err.errno in (errno.EACCES, errno.EPERM):
            return StorageError(f"permission denied reading {key} in {self.shown}")
        return StorageError(f"cannot read {key} in {self.shown}: {err.strerror or err}")

    def _write_error(self, err, key, spooling=False):
        if isinstance(err, DogestryError):
            return err
        where = f"its spool directory {os.path.join(self.shown, SPOOL_DIR)}" if spooling else self.shown
        if err.errno == errno.ENOSPC:
            return StorageError(f"no space left on the device holding {self.shown} while writing {key}"
                                + (f" into {where}" if spooling else ""))
        if err.errno == errno.EDQUOT:
            return StorageError(f"disk quota exceeded on the device holding {self.shown} while writing {key}"
                                + (f" into {where}" if spooling else ""))
        if err.errno == errno.EROFS:
            return StorageError(f"{self.shown} is on a read-only filesystem; cannot write {key}")
        if err.errno in (errno.EACCES, errno.EPERM):
            return StorageError(f"permission denied writing {key} in {where}")
        return StorageError(f"cannot write {key} in {where}: {err.strerror or err}")

    # -- reading ---------------------------------------------------------------------
    def _lstat_regular(self, key):
        """(dir fd, name, stat) of the regular file at key; the caller closes dir fd."""
        try:
            dir_fd, name = self._walk(self._key_parts(key))
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{key} not found in {self.shown}") from None
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            os.close(dir_fd)
            raise NotFound(f"{key} not found in {self.shown}") from None
        except BaseException:
            os.close(dir_fd)
            raise
        if not stat.S_ISREG(st.st_mode):
            os.close(dir_fd)
            raise CorruptObject(f"{key} in {self.shown} is not a regular file ({_kind(st.st_mode)})")
        return dir_fd, name, st

    def _open_regular(self, key):
        """An fd open for reading on the regular file at key, and its fstat."""
        try:
            for _ in range(3):
                dir_fd, name, _st = self._lstat_regular(key)
                try:
                    fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
                except OSError as err:
                    if err.errno == errno.ELOOP:
                        continue  # replaced by a link since the lstat: walk again
                    if err.errno == errno.ENOENT:
                        raise NotFound(f"{key} not found in {self.shown}") from None
                    raise
                finally:
                    os.close(dir_fd)
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):  # replaced since the lstat
                    os.close(fd)
                    raise CorruptObject(f"{key} in {self.shown} is not a regular file ({_kind(st.st_mode)})")
                return fd, st
            raise StorageError(f"{key} in {self.shown} keeps changing while it is opened")
        except OSError as err:
            raise self._read_error(err, key) from None

    def get(self, key, limit=None):
        """The object's bytes; with limit, CorruptObject for an object larger than limit bytes."""
        fd, st = self._open_regular(key)
        too_large = CorruptObject(f"{key} in {self.shown} is larger than {limit} bytes; it is not an object "
                                  "dogestry wrote (a damaged or foreign file)")
        with os.fdopen(fd, "rb", buffering=0) as f:
            try:
                if limit is None:
                    return f.read()
                if st.st_size > limit:
                    raise too_large
                # The file may have grown since the fstat: read at most one byte too many.
                parts, total = [], 0
                while total <= limit and (data := f.read(limit + 1 - total)):
                    parts.append(data)
                    total += len(data)
            except OSError as err:
                raise self._read_error(err, key) from None
        if total > limit:
            raise too_large
        return b"".join(parts)

    def open(self, key):
        fd, _st = self._open_regular(key)
        return _Reader(self, key, os.fdopen(fd, "rb", buffering=_CHUNK))

    def exists(self, key):
        """True only for a regular file; False for a missing key, a FIFO, device, directory, socket or a link out."""
        try:
            dir_fd, _name, _st = self._lstat_regular(key)
        except (NotFound, CorruptObject, _LinkOut):
            return False
        except OSError as err:
            raise self._read_error(err, key) from None
        os.close(dir_fd)
        return True

    def size(self, key):
        try:
            dir_fd, _name, st = self._lstat_regular(key)
        except OSError as err:
            raise self._read_error(err, key) from None
        os.close(dir_fd)
        return st.st_size

    # -- temporaries -----------------------------------------------------------------
    def _spool_fd(self):
        """The .spool directory, made if missing; never through a link (cleaning looks only there)."""
        root_fd = self._open_root(create=True)
        try:
            for _ in range(2):
                try:
                    return os.open(SPOOL_DIR, _DIR_FLAGS, dir_fd=root_fd)
                except FileNotFoundError:
                    try:
                        os.mkdir(SPOOL_DIR, 0o755, dir_fd=root_fd)
                    except FileExistsError:
                        pass  # a concurrent writer made it
                except OSError as err:
                    if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(SPOOL_DIR, dir_fd=root_fd, follow_symlinks=False)
                    raise StorageError(f"{os.path.join(self.shown, SPOOL_DIR)} is {_kind(st.st_mode)}, not the "
                                       "directory dogestry keeps its temporaries in; remove it") from None
            return os.open(SPOOL_DIR, _DIR_FLAGS, dir_fd=root_fd)
        finally:
            os.close(root_fd)

    def _temp(self, prefix, key, in_dir_fd=None):
        """A new locked temporary in .spool (or, for the cross-device fallback, in in_dir_fd)."""
        if in_dir_fd is None:
            dir_fd = self._spool_fd()
            display = os.path.join(self.root, SPOOL_DIR)
        else:
            dir_fd, display = os.dup(in_dir_fd), self.root
        try:
            while True:
                name = f"{prefix}{os.urandom(8).hex()}"
                try:
                    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                                 dir_fd=dir_fd)
                    break
                except FileExistsError:
                    continue
        except BaseException:
            os.close(dir_fd)
            raise
        temp = _Temp(self, key, dir_fd, name, fd, os.path.join(display, name))
        self._live[temp.name] = temp
        return temp

    def _first_write(self):
        """Remove stale temporaries of killed writers, once per backend, from .spool only."""
        if self._cleaned:
            return
        if os.path.realpath(self.root) == "/" and not os.path.lexists(os.path.join(self.root, "dogestry.json")):
            # `push "$DIR/" ...` with DIR unset: never scatter a repository over /.
            raise UsageError(f"refusing to make a repository at {self.shown}, the filesystem root; "
                             "name a directory (e.g. /srv/images)")
        self._cleaned = True
        try:
            self.clean_leftovers(everywhere=False)
        except (OSError, DogestryError):
            # Housekeeping: a temporary we may not remove must not fail the write that
            # follows; that write reports any real problem with the repository itself.
            pass

    def _candidates(self, everywhere):
        """(dir fd, name, path) of every file that may be a temporary; dir fds are borrowed."""
        try:
            root_fd = self._open_root(create=False)
        except (FileNotFoundError, NotADirectoryError):
            return  # no repository, so no temporaries
        except OSError as err:
            raise StorageError(f"cannot look for temporaries in {self.shown}: {err.strerror or err}") from None
        try:
            try:
                spool_fd = os.open(SPOOL_DIR, _DIR_FLAGS, dir_fd=root_fd)
            except OSError:
                spool_fd = None
            if spool_fd is not None:
                try:
                    with os.scandir(spool_fd) as entries:
                        names = sorted(e.name for e in entries if e.is_file(follow_symlinks=False))
                    for name in names:
                        yield spool_fd, name, os.path.join(self.root, SPOOL_DIR, name)
                finally:
                    os.close(spool_fd)
            if everywhere:
                for dir_fd, rel, files, _links in self._tree(root_fd, ""):
                    for name in files:
                        if _BESIDE_TEMP_RE.match(name):
                            yield dir_fd, name, os.path.join(self.root, rel, name)
        finally:
            os.close(root_fd)

    def _stale(self, everywhere):
        """Yield (dir fd, name, path, stat) of unlocked temporaries, holding their lock meanwhile."""
        for dir_fd, name, path in self._candidates(everywhere):
            try:
                fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue  # gone (published or cleaned) or not a file any more
            try:
                st = unheld(fd)
                if st is not None:
                    yield dir_fd, name, path, st
            finally:
                os.close(fd)

    def leftovers(self, everywhere=True):
        """(path, size, age in seconds) of every temporary no live writer holds.

        everywhere=False looks in .spool only (one listdir); otherwise the whole tree is
        walked too for the `.NAME.tmp-*` files older versions left beside keys.
        """
        now = time.time()
        for _dir_fd, _name, path, st in self._stale(everywhere):
            yield path, st.st_size, max(0.0, now - st.st_mtime)

    def clean_leftovers(self, min_age=3600, everywhere=True):
        """Remove the temporaries no writer holds and nobody wrote for min_age seconds: (count, bytes)."""
        count = size = 0
        now = time.time()
        for dir_fd, name, _path, st in self._stale(everywhere):
            # mtime, not ctime: a spool written until a second ago belongs to a writer
            # that may only be between its close and its publish.
            if now - st.st_mtime < min_age:
                continue
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                continue
            count += 1
            size += st.st_size
        return count, size

    # -- writing ---------------------------------------------------------------------
    def _parent(self, key, create=True):
        """(dir fd, name) where key's entry goes, creating the directories below the root."""
        return self._walk(self._key_parts(key), create=create, follow_last=False, what=key)

    def put(self, key, data, overwrite=False):
        self._key_parts(key)
        self._first_write()
        try:
            dir_fd, name = self._parent(key)
        except OSError as err:
            raise self._write_error(err, key) from None
        try:
            if not overwrite and _present(dir_fd, name):
                return False
            temp = self._temp(_temp_prefix(name), key)
            try:
                temp.write(data)
                temp.finish()
                return self._publish(temp.dir_fd, temp.base, dir_fd, name, overwrite, key)
            finally:
                temp.discard()
        except OSError as err:
            raise self._write_error(err, key) from None
        finally:
            os.close(dir_fd)

    def _publish(self, src_dir_fd, src, dir_fd, name, overwrite, key):
        """Make the finished temporary src visible as name in dir_fd, atomically; write-once unless overwrite."""
        try:
            if overwrite:
                os.replace(src, name, src_dir_fd=src_dir_fd, dst_dir_fd=dir_fd)
            else:
                try:
                    # linkat fails if name exists: never replaces a published object.
                    os.link(src, name, src_dir_fd=src_dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
                except FileExistsError:
                    return False
                os.unlink(src, dir_fd=src_dir_fd)
        except OSError as err:
            if err.errno != errno.EXDEV:
                raise
            # The temporary is on another filesystem (a spool from elsewhere, or a
            # mount below the root): copy it beside the target, then publish that.
            beside = self._temp(_temp_prefix(name), key, in_dir_fd=dir_fd)
            try:
                with open(os.open(src, _READ_FLAGS, dir_fd=src_dir_fd), "rb", buffering=0) as f:
                    while chunk := f.read(_CHUNK):
                        beside.write(chunk)
                beside.finish()
                return self._publish(beside.dir_fd, beside.base, dir_fd, name, overwrite, key)
            finally:
                beside.discard()
        os.fsync(dir_fd)
        return True

    def put_file(self, key, path, overwrite=False):
        self._key_parts(key)
        self._first_write()
        temp = self._live.get(path)
        try:
            dir_fd, name = self._parent(key)
            try:
                if not overwrite and _present(dir_fd, name):
                    return False
                if temp is not None:
                    temp.finish()
                    return self._publish(temp.dir_fd, temp.base, dir_fd, name, overwrite, key)
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.chmod(path, 0o644)
                return self._publish(None, path, dir_fd, name, overwrite, key)
            finally:
                os.close(dir_fd)
        except OSError as err:
            raise self._write_error(err, key) from None
        finally:
            if temp is not None:
                temp.discard()
            elif os.path.lexists(path):
                os.unlink(path)

    def writer(self, key, overwrite=False):
        self._key_parts(key)
        self._first_write()
        return _LocalWriter(self, key, overwrite)

    def spool(self):
        """A locked temporary in .spool for bytes whose key is not known yet (a layer being hashed)."""
        self._first_write()
        try:
            return self._temp(".layer-", "a layer", None)
        except OSError as err:
            raise self._write_error(err, "a layer", spooling=True) from None

    # -- listing and deleting --------------------------------------------------------
    def _tree(self, dir_fd, rel, others=None):
        """Walk below dir_fd without following links: (dir fd, rel, regular files, links), sorted.
        `others`, a list, collects the rel paths of the rest: FIFOs, sockets, devices and
        directories (each directory is also walked).

        Directory fds are only valid during their iteration step.
        """
        try:
            with os.scandir(dir_fd) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            raise self._read_error(err, rel or "the repository") from None
        files = [e.name for e in entries if e.is_file(follow_symlinks=False)]
        links = [e.name for e in entries if e.is_symlink()]
        if others is not None:
            others += [rel + e.name for e in entries if not e.is_file(follow_symlinks=False) and not e.is_symlink()]
        yield dir_fd, rel, files, links
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                sub = os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as err:
                if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue  # removed, or replaced by a file or a link, since the scan
                # A directory we may not read would hide its keys: say so, never "not found".
                raise self._read_error(err, f"{rel}{entry.name}/") from None
            try:
                yield from self._tree(sub, f"{rel}{entry.name}/", others)
            finally:
                os.close(sub)

    def list(self, prefix=""):
        """Every key under prefix: regular files, and links to regular files inside the root.

        Linked directories are not descended (a loop or the whole filesystem may be
        behind one); FIFOs, devices, sockets, temporaries and names that are not keys
        are left out.
        """
        for key, _ in self._listing(prefix):
            yield key

    def scan(self, prefix=""):
        for key, st in self._listing(prefix):
            yield ObjectInfo(key, st.st_size, st.st_mtime)

    def unlisted(self, prefix=""):
        """Names under prefix that list() leaves out although they are spelled as keys: a
        FIFO, socket, device or directory, or a link that leads out of the root or nowhere."""
        others, listed = [], set()
        for key, _ in self._listing(prefix, others):
            listed.add(key)
        return sorted(key for key in others if key not in listed and not key.rsplit("/", 1)[-1].startswith(".")
                      and _is_key(key))

    def _listing(self, prefix, others=None):
        """(key, stat) for list() and scan(): one lstat each, the target's stat for a link.
        `others`, a list, collects what is left out (see unlisted)."""
        rel = prefix.rstrip("/")
        try:
            if rel:
                parent_fd, name = self._walk(self._key_parts(rel))
                try:
                    base = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
                finally:
                    os.close(parent_fd)
            else:
                base = self._open_root(create=False)
        except FileNotFoundError:
            return  # nothing under prefix
        except _LinkOut as err:
            # Objects behind a link out are not listed (nothing there is ever deleted or read).
            # Refs, leases and share indexes are what keep objects alive: listed as empty, a
            # `repositories` linked elsewhere made gc delete every object. Refuse instead.
            if rel.split("/")[0] in _OBJECT_DIRS:
                return
            raise StorageError(f"cannot list {prefix}: {err}") from None
        except NotADirectoryError:
            if not rel:
                return  # the root itself: missing() says what it is
            # A file (or FIFO, device...) where the directory should be is damage, not an empty
            # directory: listed as empty, `repositories` made gc take every image for unreachable.
            raise StorageError(f"cannot list {prefix} in {self.shown}: {self._not_a_directory(rel)}") from None
        except OSError as err:  # unreadable is not empty: "not found" would mislead
            raise self._read_error(err, prefix or "the repository") from None
        try:
            for _dir_fd, sub, files, links in self._tree(base, f"{rel}/" if rel else "", others):
                for name in sorted(files + links):
                    key = sub + name
                    if name.startswith(".") or not _is_key(key):
                        continue
                    if name in links and not self.exists(key):
                        if others is not None:
                            others.append(key)
                        continue
                    try:
                        if name in links:  # a link inside the root: the size of what it leads to
                            fd, _, st = self._lstat_regular(key)
                            os.close(fd)
                        else:
                            st = os.stat(name, dir_fd=_dir_fd, follow_symlinks=False)
                    except (OSError, DogestryError):
                        continue  # gone since the scan
                    yield key, st
        finally:
            os.close(base)

    def _not_a_directory(self, rel):
        """Which component of rel is not a directory, for a message (by path: only said, never followed)."""
        path = self.root
        for part in rel.split("/"):
            path = os.path.join(path, part)
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                break
            if not stat.S_ISDIR(mode):
                return f"{os.path.relpath(path, self.root)} is {_kind(mode)}, not a directory"
        return "a component of it is not a directory"

    def delete(self, key):
        try:
            dir_fd, name = self._parent(key, create=False)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as err:
            raise self._write_error(err, key) from None
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise StorageError(f"cannot delete {key} in {self.shown}: {err.strerror or err}") from None
        finally:
            os.close(dir_fd)


def _present(dir_fd, name):
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def _temp_prefix(name):
    # A name stays under NAME_MAX (255) whatever the key's last component.
    return f".{name[:100]}.tmp-"


def _is_key(key):
    try:
        check_key(key)
        return True
    except UsageError:
        return False


class _Temp:
    """A temporary file locked by its writer (flock) for as long as this object holds it.

    It acts as the spool file the repository layer writes (write, close, name); close()
    only flushes: the lock is kept until the bytes are published or discarded, so no
    cleaner takes a finished spool for a leftover.
    """

    def __init__(self, backend, key, dir_fd, base, fd, path):
        self.backend, self.key = backend, key
        self.dir_fd, self.base, self.name = dir_fd, base, path
        self._fd = fd
        self._failed = False
        # From here on the fds are closed when this object is discarded or collected.
        self._finalizer = weakref.finalize(self, _release, fd, dir_fd)
        self._file = open(fd, "wb", buffering=_CHUNK, closefd=False)
        fcntl.flock(fd, fcntl.LOCK_EX)

    def write(self, data):
        try:
            self._file.write(data)
        except OSError as err:
            self._failed = True
            raise self.backend._write_error(err, self.key, spooling=True) from None

    def close(self):
        if self._file.closed:
            return
        try:
            self._file.close()
        except OSError as err:
            # After a failed write the buffer still holds bytes that cannot be written:
            # that error was raised already, and the caller's cleanup must get to unlink.
            if not self._failed:
                raise self.backend._write_error(err, self.key, spooling=True) from None

    def finish(self):
        """Flush to disk and make it readable, ready to be published."""
        self.close()
        try:
            os.fsync(self._fd)
            os.fchmod(self._fd, 0o644)
        except OSError as err:
            raise self.backend._write_error(err, self.key, spooling=True) from None

    def discard(self):
        """Remove the temporary if it is still there, and release its lock."""
        if not self._finalizer.alive:
            return
        try:
            self._file.close()
        except OSError:
            pass  # its bytes are being thrown away
        try:
            os.unlink(self.base, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
        finally:
            self._finalizer()


def _release(fd, dir_fd):
    os.close(fd)
    os.close(dir_fd)


class _Reader:
    """A binary reader whose read errors name the key and the root."""

    def __init__(self, backend, key, file):
        self._backend, self._key, self._file = backend, key, file

    def read(self, n=-1):
        try:
            return self._file.read(n)
        except OSError as err:
            raise self._backend._read_error(err, self._key) from None

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _LocalWriter:
    """Streams into a locked temporary in .spool; commit publishes it atomically under key."""

    def __init__(self, backend, key, overwrite):
        self.backend, self.key, self.overwrite = backend, key, overwrite
        try:
            # Resolved now, so a key leading out of the root fails before any byte is sent.
            self._dir_fd, self._name = backend._parent(key)
        except OSError as err:
            raise backend._write_error(err, key) from None
        try:
            self.temp = backend._temp(_temp_prefix(self._name), key)
        except OSError as err:
            os.close(self._dir_fd)
            raise backend._write_error(err, key, spooling=True) from None

    def write(self, data):
        try:
            self.temp.write(data)
        except BaseException:
            self.abort()
            raise

    def commit(self):
        try:
            self.temp.finish()
            return self.backend._publish(self.temp.dir_fd, self.temp.base, self._dir_fd, self._name,
                                         self.overwrite, self.key)
        except OSError as err:
            raise self.backend._write_error(err, self.key) from None
        finally:
            self.abort()

    def abort(self):
        self.temp.discard()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None
