"""A local-directory repository that hostile or damaged files cannot hurt (issue 9, defects 4, 7, 8).

Everything here runs against real files, FIFOs, devices, links and mounts (the tests run
as root: tmpfs and bind mounts are made and unmounted in the test). CLI tests run
bin/dogestry in a wrapper process that reports the peak RSS of its child, under a
timeout that kills the whole process group, so a hang or an unbounded read fails the
test instead of the machine.
"""

import contextlib
import io
import json
import os
import pickle
import resource
import select
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import time

import pytest

from dogestry.backends.local import LocalBackend
from dogestry.errors import CorruptObject, NotFound, StorageError
from dogestry.image import Image
from dogestry.repo import Repository

from conftest import BIN, dogestry

GIB = 1 << 30
RSS_LIMIT = 150 << 20
IMAGE_ID = "sha256:" + "ab" * 32
OLD = 2 * 3600  # seconds: older than clean_leftovers' default min_age


# -- helpers ------------------------------------------------------------------------------
def _repo(tmp_path):
    backend = LocalBackend(str(tmp_path / "repo"))
    backend.put("dogestry.json", b'{"format": "dogestry-repository", "version": 1}\n')
    backend.put("repositories/app/good", f"{IMAGE_ID}\n".encode(), overwrite=True)
    return backend, tmp_path / "repo"


def _finishes(call, seconds=10, memory=2 << 30):
    """Run call in a forked child with `memory` bytes of address space; fail if it blocks.

    An implementation that reads /dev/zero or blocks on a FIFO then costs one killed
    child, not the test run or the machine. The call's value or exception comes back
    pickled.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(r)
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            try:
                result = ("value", call())
            except BaseException as err:  # handed to the parent
                result = ("error", err)
            try:
                data = pickle.dumps(result)
            except Exception:
                data = pickle.dumps(("error", AssertionError(f"unpicklable result {result!r}")))
            with os.fdopen(w, "wb") as f:
                f.write(data)
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + seconds
    with os.fdopen(r, "rb", buffering=0) as f:
        while True:
            ready, _, _ = select.select([f], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"{call} still blocked after {seconds}s")
            data = f.read(65536)
            if not data:
                break
            chunks.append(data)
    os.waitpid(pid, 0)
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "error":
        raise value
    return value


# The address-space cap keeps a regression (a read of /dev/zero) from taking the machine:
# the child fails with MemoryError instead, well above RSS_LIMIT so the check still means something.
_WRAPPER = """
import resource, subprocess, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
rc = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))
sys.exit(rc)
"""


class Run:
    def __init__(self, rc, out, err, seconds, rss):
        self.rc, self.out, self.err, self.seconds, self.rss = rc, out, err, seconds, rss


def cli(tmp_path, *args, timeout=30):
    """bin/dogestry ARGS with no engine reachable; returns a Run with the child's peak RSS in bytes."""
    rss_file = tmp_path / f"rss-{time.monotonic_ns()}"
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock")
    env.pop("DOGESTRY_CONFIG", None)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, str(rss_file), sys.executable, BIN, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"dogestry {' '.join(args)} still running after {timeout}s")
    seconds = time.monotonic() - start
    return Run(proc.returncode, out.decode(), err.decode(), seconds, int(rss_file.read_text()))


def assert_one_line_failure(run, *names):
    lines = run.err.strip().splitlines()
    assert run.rc == 1, (run.rc, run.err)
    assert len(lines) == 1, run.err
    assert "internal error" not in lines[0], lines[0]
    for name in names:
        assert name in lines[0], lines[0]
    assert run.seconds < 20, run.seconds
    assert run.rss < RSS_LIMIT, f"peak RSS {run.rss >> 20} MiB"


def _sparse(path, size):
    with open(path, "wb") as f:
        f.truncate(size)


@contextlib.contextmanager
def _mount(*args):
    target = args[-1]
    subprocess.run(["mount", *args], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", target], check=True)


def _holder(path):
    """A process that creates path, holds flock(LOCK_EX) on it until killed: a live writer."""
    code = ("import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, b'live bytes')\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"
    return proc


def _killed_writer(path):
    """A temporary written by a process killed with SIGKILL mid-write: what a crash leaves."""
    code = ("import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, b'x' * 4096)\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"
    proc.kill()
    proc.wait()


def _age(path, seconds):
    past = time.time() - seconds
    os.utime(path, (past, past))


# -- links --------------------------------------------------------------------------------
def test_ref_linked_to_dev_zero_is_refused_unread(tmp_path):
    backend, root = _repo(tmp_path)
    os.symlink("/dev/zero", root / "repositories/app/zero")
    for call in (lambda: backend.get("repositories/app/zero"), lambda: backend.get("repositories/app/zero", limit=100),
                 lambda: backend.open("repositories/app/zero")):
        with pytest.raises(StorageError, match=r"repositories/app/zero in .*repo is a symbolic link out of the "
                                               r"repository \(to /dev/zero\)"):
            _finishes(call)
    assert not backend.exists("repositories/app/zero")
    assert list(backend.list("repositories/")) == ["repositories/app/good"]


def test_link_out_to_etc_passwd_is_refused_and_not_disclosed(tmp_path):
    backend, root = _repo(tmp_path)
    os.symlink("/etc/passwd", root / "repositories/app/passwd")
    with pytest.raises(StorageError) as err:
        backend.get("repositories/app/passwd")
    assert "/etc/passwd" in str(err.value) and "root:" not in str(err.value)
    os.symlink("../../../../../../../../etc/passwd", root / "repositories/app/relative")
    with pytest.raises(StorageError, match="repositories/app/relative .*out of the repository"):
        backend.get("repositories/app/relative")
    assert sorted(backend.list()) == ["dogestry.json", "repositories/app/good"]


def test_a_linked_directory_cannot_steer_writes_out_of_the_root(tmp_path):
    backend, root = _repo(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "layers")
    os.symlink(outside, root / "configs")
    with pytest.raises(StorageError, match=r"layers/sha256/x in .*repo: layers is a symbolic link out"):
        backend.put("layers/sha256/x", b"data")
    with pytest.raises(StorageError, match="configs/sha256/y .*out of the repository"):
        backend.writer("configs/sha256/y")
    spool = backend.spool()
    spool.write(b"spooled")
    spool.close()
    with pytest.raises(StorageError, match="out of the repository"):
        backend.put_file("layers/sha256/z", spool.name)
    with pytest.raises(StorageError, match="out of the repository"):
        backend.put("configs/sha256/w", b"data", overwrite=True)
    assert list(outside.iterdir()) == []
    assert list(backend.leftovers()) == []  # the refused writes left no temporary either
    assert list(backend.list("layers/")) == []


def test_links_that_stay_inside_are_followed_and_the_root_may_be_a_link(tmp_path):
    backend, root = _repo(tmp_path)
    os.symlink("good", root / "repositories/app/latest")  # a hand-made tag alias
    os.symlink(root / "repositories/app/good", root / "repositories/app/absolute")
    os.symlink("../../dogestry.json", root / "repositories/app/marker")
    assert backend.get("repositories/app/latest") == f"{IMAGE_ID}\n".encode()
    assert backend.get("repositories/app/absolute", limit=100) == f"{IMAGE_ID}\n".encode()
    assert backend.exists("repositories/app/marker")
    assert sorted(backend.list("repositories/")) == ["repositories/app/absolute", "repositories/app/good",
                                                     "repositories/app/latest", "repositories/app/marker"]
    os.symlink(root, tmp_path / "alias")
    through = LocalBackend(str(tmp_path / "alias"))
    assert through.get("repositories/app/absolute") == f"{IMAGE_ID}\n".encode()
    assert through.put("configs/sha256/c", b"config") is True
    assert (root / "configs/sha256/c").read_bytes() == b"config"


def test_link_loops_fail_fast(tmp_path):
    backend, root = _repo(tmp_path)
    os.symlink("b", root / "repositories/app/a")
    os.symlink("a", root / "repositories/app/b")
    with pytest.raises(StorageError, match="repositories/app/a in .*too many levels of symbolic links"):
        _finishes(lambda: backend.get("repositories/app/a"))
    os.symlink(".", root / "repositories/app/self")  # a directory loop list() must not descend
    assert sorted(backend.list("repositories/")) == ["repositories/app/good"]


def test_list_does_not_descend_linked_directories(tmp_path):
    backend, root = _repo(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "app").mkdir(parents=True)
    (elsewhere / "app" / "evil").write_text(IMAGE_ID)
    os.symlink(elsewhere, root / "repositories/other")
    os.symlink(root / "repositories", root / "repositories/app/inner")  # inside, but a directory
    assert list(backend.list("repositories/")) == ["repositories/app/good"]


# -- things that are not regular files -------------------------------------------------------
def _special(root, kind, path):
    path = root / path
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    elif kind == "device":
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # what /dev/zero is
    return path


@pytest.mark.parametrize("kind, says", [("fifo", "a FIFO"), ("directory", "a directory"),
                                        ("socket", "a socket"), ("device", "a character device")])
def test_only_regular_files_are_opened(tmp_path, kind, says):
    backend, root = _repo(tmp_path)
    _special(root, kind, "repositories/app/odd")
    assert _finishes(lambda: backend.exists("repositories/app/odd")) is False
    for call in (lambda: backend.get("repositories/app/odd"), lambda: backend.get("repositories/app/odd", limit=64),
                 lambda: backend.open("repositories/app/odd")):
        with pytest.raises(CorruptObject, match=rf"^repositories/app/odd in .*repo is not a regular file \({says}\)$"):
            _finishes(call)
    assert list(backend.list("repositories/")) == ["repositories/app/good"]


def test_a_fifo_layer_and_marker_do_not_block(tmp_path):
    backend, root = _repo(tmp_path)
    os.unlink(root / "dogestry.json")
    os.mkfifo(root / "dogestry.json")
    (root / "layers/sha256").mkdir(parents=True)
    os.mkfifo(root / "layers/sha256/f")
    with pytest.raises(CorruptObject, match="dogestry.json in .* is not a regular file"):
        _finishes(lambda: backend.get("dogestry.json", limit=4096))
    with pytest.raises(CorruptObject, match="layers/sha256/f in .* is not a regular file"):
        _finishes(lambda: backend.open("layers/sha256/f"))


def test_a_file_where_a_directory_should_be(tmp_path):
    backend, root = _repo(tmp_path)
    (root / "images").write_text("not a directory")
    with pytest.raises(NotFound):
        backend.get("images/sha256/x.json")
    assert not backend.exists("images/sha256/x.json")
    with pytest.raises(StorageError, match=r"cannot write images/sha256/x.json in .*repo: images is a regular "
                                           r"file, not a directory"):
        backend.put("images/sha256/x.json", b"{}")


def test_a_directory_where_a_ref_should_be_cannot_be_overwritten(tmp_path):
    backend, root = _repo(tmp_path)
    (root / "repositories/app/dir").mkdir()
    with pytest.raises(StorageError, match="cannot write repositories/app/dir in .*repo"):
        backend.put("repositories/app/dir", b"x", overwrite=True)
    assert backend.put("repositories/app/dir", b"x") is False  # write-once: something is there


# -- size caps --------------------------------------------------------------------------------
def test_a_large_sparse_file_is_refused_by_its_size_without_reading(tmp_path):
    backend, root = _repo(tmp_path)
    _sparse(root / "repositories/app/big", GIB)
    start = time.monotonic()
    with pytest.raises(CorruptObject, match=r"^repositories/app/big in .*repo is larger than 4096 bytes; "):
        backend.get("repositories/app/big", limit=4096)
    assert time.monotonic() - start < 1
    assert backend.get("repositories/app/good", limit=len(IMAGE_ID) + 1) == f"{IMAGE_ID}\n".encode()
    with pytest.raises(CorruptObject):
        backend.get("repositories/app/good", limit=len(IMAGE_ID))


def test_a_file_longer_than_its_size_says_is_read_only_to_the_limit(tmp_path):
    # procfs files report st_size 0 but hold more: like a file growing after the fstat.
    backend, root = _repo(tmp_path)
    target = root / "repositories/app/grows"
    target.write_bytes(b"")
    with _mount("--bind", "/proc/cpuinfo", str(target)):
        assert os.stat(target).st_size == 0
        with pytest.raises(CorruptObject, match="repositories/app/grows in .* is larger than 16 bytes"):
            backend.get("repositories/app/grows", limit=16)


# -- temporaries ------------------------------------------------------------------------------
def test_live_temporaries_are_locked_and_dead_ones_are_leftovers(tmp_path):
    backend, root = _repo(tmp_path)
    spool = backend.spool()
    spool.write(b"in progress")
    writer = backend.writer("layers/sha256/w")
    writer.write(b"streaming")
    assert list(backend.leftovers()) == []  # both are held by this (live) writer
    spool.close()
    assert list(backend.leftovers()) == []  # closed but not yet published: still held
    writer.commit()
    assert backend.put_file("layers/sha256/s", spool.name) is True
    assert os.listdir(root / ".spool") == []
    dead = root / ".spool" / ".layer-dead"
    _killed_writer(dead)
    [(path, size, age)] = backend.leftovers()
    assert (path, size) == (str(dead), 4096) and 0 <= age < 60


def test_the_next_write_cleans_stale_spools_and_spares_live_ones(tmp_path):
    _backend, root = _repo(tmp_path)
    spool_dir = root / ".spool"
    stale, fresh, live = spool_dir / ".layer-stale", spool_dir / ".layer-fresh", spool_dir / ".layer-live"
    _killed_writer(stale)
    _age(stale, OLD)
    _killed_writer(fresh)  # dead, but maybe a writer between close and publish: too young to remove
    holder = _holder(live)
    try:
        _age(live, OLD)
        backend = LocalBackend(str(root))
        assert backend.put("configs/sha256/c", b"config") is True
        assert not stale.exists()
        assert fresh.exists() and live.exists()
        # Once per backend: a stale file appearing later waits for the next run.
        _killed_writer(stale)
        _age(stale, OLD)
        backend.put("configs/sha256/d", b"config")
        assert stale.exists()
        assert LocalBackend(str(root)).clean_leftovers() == (1, 4096)
        assert sorted(p for p, _s, _a in backend.leftovers()) == [str(fresh)]
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p for p, _s, _a in backend.leftovers()) == [str(fresh), str(live)]
    assert backend.clean_leftovers(min_age=0) == (2, 4096 + len(b"live bytes"))


def test_temporaries_beside_keys_are_found_by_a_full_walk_only(tmp_path):
    backend, root = _repo(tmp_path)
    beside = root / "repositories/app/.good.tmp-abc123"
    _killed_writer(beside)
    _age(beside, OLD)
    assert list(backend.leftovers(everywhere=False)) == []
    assert [p for p, _s, _a in backend.leftovers()] == [str(beside)]
    backend.put("configs/sha256/c", b"config")  # the automatic clean is .spool only: one listdir
    assert beside.exists()
    assert backend.clean_leftovers() == (1, 4096)
    assert not beside.exists()


def test_a_push_cleans_the_spool_a_killed_push_left(tmp_path, engine_named, unique):
    engine = engine_named("d20")
    engine.import_base(f"hostile-{unique}:1")
    root = tmp_path / "repo"
    dogestry("push", str(root), f"hostile-{unique}:1", env=engine.env())
    stale, live = root / ".spool" / ".layer-stale", root / ".spool" / ".layer-live"
    _killed_writer(stale)
    _age(stale, OLD)
    holder = _holder(live)
    try:
        _age(live, OLD)
        engine.import_base(f"hostile-{unique}:2")
        dogestry("push", str(root), f"hostile-{unique}:2", env=engine.env())
        assert not stale.exists()
        assert live.exists()
    finally:
        holder.kill()
        holder.wait()


# -- full and read-only filesystems -------------------------------------------------------------
def test_a_full_disk_names_the_key_and_the_device(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    with _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)):
        backend = LocalBackend(str(mnt / "repo"))
        big = os.urandom(2 << 20)
        root = str(mnt / "repo")
        with pytest.raises(StorageError, match=rf"^no space left on the device holding {root} while writing "
                                               r"configs/sha256/c into its spool directory .*\.spool$"):
            backend.put("configs/sha256/c", big)
        writer = backend.writer("layers/sha256/w")
        with pytest.raises(StorageError, match=rf"^no space left on the device holding {root} while writing "
                                               r"layers/sha256/w"):
            for i in range(0, len(big), 65536):
                writer.write(big[i:i + 65536])
            writer.commit()
        spool = backend.spool()
        with pytest.raises(StorageError, match=rf"^no space left on the device holding {root} while writing a "
                                               r"layer into its spool directory"):
            spool.write(big)
            spool.close()
        spool.close()  # the repository layer's cleanup closes again: quiet after a failure
        os.unlink(spool.name)
        del spool
        assert os.listdir(mnt / "repo" / ".spool") == []  # failed writes leave nothing behind
        assert list(backend.list()) == []


def test_a_full_disk_through_the_repository_layer(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    with _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)):
        repo = Repository(LocalBackend(str(mnt / "repo")), codec="none")
        with pytest.raises(StorageError, match=r"no space left on the device holding .*/repo while writing a "
                                               r"layer into its spool directory"):
            repo.store_layer(iter([os.urandom(1 << 20)] * 3))
        assert os.listdir(mnt / "repo" / ".spool") == []


def test_a_read_only_filesystem_names_the_key(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    with _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)):
        backend = LocalBackend(str(mnt / "repo"))
        backend.put("configs/sha256/a", b"a")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        fresh = LocalBackend(str(mnt / "repo"))
        with pytest.raises(StorageError, match=rf"^{mnt}/repo is on a read-only filesystem; cannot write "
                                               r"repositories/app/1$"):
            fresh.put("repositories/app/1", b"x", overwrite=True)
        with pytest.raises(StorageError, match="read-only filesystem; cannot write a layer"):
            fresh.spool()
        assert fresh.get("configs/sha256/a") == b"a"  # reading still works


# -- the CLI --------------------------------------------------------------------------------------
def _cli_repo(tmp_path):
    """A repository with one real, complete image (one layer) and a ref app:good to it."""
    repo = Repository(LocalBackend(str(tmp_path / "repo")))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    desc, _new = repo.store_layer(iter([buf.getvalue()]))
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [desc.diff_id]}}).encode()
    image_id = repo.put_config(config)
    repo.put_image(Image(image_id, len(config), [desc]))
    from dogestry.refs import parse_ref
    repo.set_ref(parse_ref("app:good"), image_id)
    return tmp_path / "repo", image_id, desc


def test_cli_ref_linked_to_dev_zero(tmp_path):
    root, image_id, _desc = _cli_repo(tmp_path)
    os.symlink("/dev/zero", root / "repositories/app/_tags/zero")
    run = cli(tmp_path, "pull", str(root), "app:zero")
    assert_one_line_failure(run, "repositories/app/_tags/zero", "/dev/zero")
    run = cli(tmp_path, "show-ref", str(root))
    assert run.rc == 0 and run.out == f"{image_id} app:good\n" and run.rss < RSS_LIMIT


def test_cli_ref_linked_to_etc_passwd(tmp_path):
    root, _image_id, _desc = _cli_repo(tmp_path)
    os.symlink("/etc/passwd", root / "repositories/app/_tags/passwd")
    run = cli(tmp_path, "pull", str(root), "app:passwd")
    assert_one_line_failure(run, "repositories/app/_tags/passwd", "out of the repository")
    assert "root:" not in run.out + run.err


@pytest.mark.parametrize("command", ["show-ref", "pull"])
def test_cli_a_1gib_sparse_ref(tmp_path, command):
    # Needs the repository layer to read refs with get(key, limit=...).
    root, _image_id, _desc = _cli_repo(tmp_path)
    _sparse(root / "repositories/app/_tags/big", GIB)
    args = [str(root)] + (["app:big"] if command == "pull" else [])
    assert_one_line_failure(cli(tmp_path, command, *args), "repositories/app/_tags/big")


def test_cli_a_1gib_sparse_marker(tmp_path):
    # Needs the repository layer to read dogestry.json with get(key, limit=...).
    root, _image_id, _desc = _cli_repo(tmp_path)
    os.unlink(root / "dogestry.json")
    _sparse(root / "dogestry.json", GIB)
    assert_one_line_failure(cli(tmp_path, "show-ref", str(root)), "dogestry.json")


def test_cli_a_fifo_ref(tmp_path):
    root, image_id, _desc = _cli_repo(tmp_path)
    os.mkfifo(root / "repositories/app/_tags/fifo")
    assert_one_line_failure(cli(tmp_path, "pull", str(root), "app:fifo"), "repositories/app/_tags/fifo", "a FIFO")
    run = cli(tmp_path, "show-ref", str(root))  # the FIFO is no ref: listed refs are unharmed
    assert run.rc == 0 and run.out == f"{image_id} app:good\n"


def test_cli_a_fifo_marker(tmp_path):
    root, _image_id, _desc = _cli_repo(tmp_path)
    os.unlink(root / "dogestry.json")
    os.mkfifo(root / "dogestry.json")
    assert_one_line_failure(cli(tmp_path, "show-ref", str(root)), "dogestry.json", "a FIFO")


def test_cli_a_fifo_layer(tmp_path):
    root, image_id, desc = _cli_repo(tmp_path)
    layer = root / "layers/sha256" / desc.diff_id.split(":")[1]
    os.unlink(layer)
    os.mkfifo(layer)
    run = cli(tmp_path, "build-load-tar", str(root), image_id)
    assert_one_line_failure(run, f"layers/sha256/{desc.diff_id.split(':')[1]}", "a FIFO")


def test_cli_a_directory_where_a_ref_should_be(tmp_path):
    root, _image_id, _desc = _cli_repo(tmp_path)
    (root / "repositories/app/_tags/dir").mkdir()
    assert_one_line_failure(cli(tmp_path, "pull", str(root), "app:dir"), "repositories/app/_tags/dir", "a directory")


def test_cli_a_directory_where_the_marker_should_be(tmp_path):
    root, _image_id, _desc = _cli_repo(tmp_path)
    os.unlink(root / "dogestry.json")
    (root / "dogestry.json").mkdir()
    assert_one_line_failure(cli(tmp_path, "show-ref", str(root)), "dogestry.json", "a directory")


def test_a_root_that_is_a_fifo_never_blocks(tmp_path):
    os.mkfifo(tmp_path / "repo")
    backend = LocalBackend(str(tmp_path / "repo"))
    with pytest.raises(NotFound):
        _finishes(lambda: backend.get("dogestry.json", limit=4096))
    with pytest.raises(StorageError, match=r"cannot write configs/sha256/c in .*/repo: Not a directory"):
        _finishes(lambda: backend.put("configs/sha256/c", b"x"))
    assert _finishes(lambda: (list(backend.list()), list(backend.leftovers()), backend.clean_leftovers())) == \
        ([], [], (0, 0))


def test_a_spool_on_another_filesystem_is_copied_then_published(tmp_path):
    backend, root = _repo(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    with _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(other)):
        for overwrite in (False, True):
            spooled = other / f"spool-{overwrite}"
            spooled.write_bytes(b"from elsewhere")
            assert backend.put_file(f"layers/sha256/x{int(overwrite)}", str(spooled), overwrite=overwrite) is True
            assert not spooled.exists()
            assert backend.get(f"layers/sha256/x{int(overwrite)}") == b"from elsewhere"
    assert list(backend.leftovers()) == []


# -- permissions (as an unprivileged user: root reads everything) ---------------------------
@pytest.fixture
def world_readable_dir():
    """A directory in /tmp that user nobody can enter (pytest's own are 0700), holding a
    copy of the package, since the checkout may sit where nobody cannot read."""
    import shutil
    import tempfile

    from conftest import ROOT

    top = tempfile.mkdtemp(prefix="dogestry-perm.", dir="/tmp")
    try:
        os.chmod(top, 0o755)
        shutil.copytree(os.path.join(ROOT, "dogestry"), os.path.join(top, "dogestry"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        yield top
    finally:
        shutil.rmtree(top)


def as_nobody(top, *args):
    """bin/dogestry's main as user nobody, with Debian's python3 and the copied package."""
    code = "import sys; from dogestry.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "/usr/bin/python3", "-c", code, *args], capture_output=True, text=True, timeout=60,
                          cwd=top, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": top, "HOME": top})


def test_an_unreadable_directory_is_permission_denied_not_missing(world_readable_dir, engine_named, unique):
    d20 = engine_named("d20")
    repo = os.path.join(world_readable_dir, "repo")
    image = f"{unique}:1"
    image_id = d20.import_base(image)
    try:
        dogestry("push", repo, image, env=d20.env())
        for root, dirs, files in os.walk(repo):
            os.chmod(root, 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
        assert as_nobody(world_readable_dir, "show-ref", repo).returncode == 0  # readable: works
        os.chmod(os.path.join(repo, "images"), 0o700)
        for args in (("update-ref", repo, f"{unique}:9", image_id[7:19]), ("list", repo), ("verify", repo)):
            proc = as_nobody(world_readable_dir, *args)
            assert proc.returncode == 1, (args, proc.stderr)
            assert "permission denied" in proc.stderr and "not found" not in proc.stderr, (args, proc.stderr)
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    finally:
        d20.cleanup()


def test_a_file_url_without_a_path_is_a_usage_error(tmp_path):
    for url in ("file://", "file://localhost"):
        proc = subprocess.run([sys.executable, BIN, "push", url, "some:1"], capture_output=True, text=True,
                              cwd=str(tmp_path), timeout=60)
        assert proc.returncode == 2 and "names no path" in proc.stderr, proc.stderr
        assert os.listdir(tmp_path) == []  # nothing written into the current directory


@pytest.mark.parametrize("kind", ["fifo", "directory", "link out", "dangling link"])
def test_gc_stops_at_a_ref_it_cannot_read_and_verify_names_it(tmp_path, kind):
    """A ref replaced by a FIFO, a directory or a link out of the repository is left out of
    listings (show-ref lists the rest). gc took it for absent and deleted its image; now it
    stops, removing nothing, and verify reports it."""
    root, image_id, desc = _cli_repo(tmp_path)
    ref = root / "repositories/app/_tags/good"
    os.unlink(ref)
    if kind == "fifo":
        os.mkfifo(ref)
    elif kind == "directory":
        ref.mkdir()
    elif kind == "link out":
        (tmp_path / "outside").write_text(image_id + "\n")
        os.symlink(tmp_path / "outside", ref)
    else:
        os.symlink(tmp_path / "nowhere", ref)
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".spool" not in p.parts)
    assert_one_line_failure(cli(tmp_path, "gc", "--grace", "0", str(root)), "repositories/app/_tags/good",
                            "gc cannot tell")
    after = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".spool" not in p.parts)
    assert after == before and f"layers/sha256/{desc.diff_id.split(':')[1]}" in after
    run = cli(tmp_path, "verify", str(root))
    assert run.rc == 1 and "repositories/app/_tags/good" in run.out + run.err, (run.out, run.err)
    ref.unlink() if kind != "directory" else ref.rmdir()
    run = cli(tmp_path, "gc", "--grace", "0", str(root))  # once it is gone, the image is unreachable
    assert run.rc == 0 and run.out.startswith("removed 4 object(s)"), (run.out, run.err)
