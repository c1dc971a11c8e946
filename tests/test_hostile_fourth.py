"""A fourth adversarial pass: the local-directory remote as a hostile filesystem, the
command line, the process environment, and locks and races seen from outside.

Rule for every case (RELIABILITY.md, "Fourth adversarial pass"): no internal error or
traceback, no hang, bounded memory; a failure is one line `dogestry: ...` naming the object,
file or host, exit 1 (2 for usage); nothing half-written; no secret in output. Everything
runs the real CLI (bin/dogestry) against real files, mounts, engines and processes (the
tests run as root: tmpfs mounts are made and unmounted here).
"""

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import BIN, one_line_error
from test_local_hostile import world_readable_dir  # noqa: F401  (a fixture, for the tests as nobody)
from test_serve import make_repo

SECRET = "s3cr3tpw"


def run(*args, env=None, timeout=60, input=None, cwd=None):
    """bin/dogestry with arguments that may be bytes (paths that are not UTF-8)."""
    return subprocess.run([sys.executable, BIN, *args], capture_output=True, env=env, input=input,
                          timeout=timeout, cwd=cwd)


def no_secret(proc):
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert SECRET not in out, out


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A small repository (app:1, app:2, other:1), made without an engine."""
    tmp = tmp_path_factory.mktemp("fourth")
    return make_repo(tmp, {"app:1": [{"a.txt": b"a\n"}, {"b.bin": 50_000}], "app:2": [{"a.txt": b"a\n"}],
                           "other:1": [{"c.txt": b"c\n"}]})


@contextlib.contextmanager
def tmpfs(size="1m", parent=None):
    """A fresh tmpfs mount of the given size; unmounted (lazily, if busy) afterwards."""
    where = tempfile.mkdtemp(prefix="dogestry-fourth.", dir=parent)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", where], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", where], check=False)
        os.rmdir(where)


# -- the command line ---------------------------------------------------------------------
HOSTILE_NUMBERS = ["0", "-1", str(10 ** 30), "nan", "1e999", " 3", "３", "٣", "", "inf", "-5m", "1e999h", "24x",
                   "0x10", "1_0", "+3"]


@pytest.mark.parametrize("value", HOSTILE_NUMBERS)
def test_counts_and_durations_with_hostile_values(repo, tmp_path, value):
    """--keep-last, --grace and --lock-timeout read plain ASCII numbers only; int() and \\d also
    take '３' (full-width) and '٣' (Arabic-Indic) as 3, which made `gc --grace ３` collect
    everything older than 3 seconds."""
    lock = str(tmp_path / "lock")
    for args, valid in ((["untag", "-n", "--keep-last", value, repo, "app"], {"0", str(10 ** 30), " 3"}),
                        (["gc", "-n", "--grace", value, repo], {"0", " 3"}),
                        (["gc", "-n", "--lockfile", lock, "--lock-timeout", value, repo], {"0", " 3"})):
        proc = run(*args)
        if value in valid:
            assert proc.returncode == 0, proc.stderr
        else:
            err = one_line_error(proc, 2)
            assert args[args.index(value) - 1] in err, err


@pytest.mark.parametrize("value", ["３", "-1", "", "1e999", "0", "8d"])
def test_share_expires_with_hostile_values_names_the_option(value):
    """`share --expires ３` said "invalid duration '３'" without naming the option."""
    err = one_line_error(run("share", "--expires", value, "s3://bucket/prefix/", "app:1"), 2)
    assert "--expires" in err, err


@pytest.mark.parametrize("port", ["５０００", "٣", "5000５", "9" * 5000])
def test_serve_listen_port_in_other_digits_is_a_usage_error(repo, port):
    """`serve --listen 127.0.0.1:５` served on port 5 (int() reads full-width digits); 5,000
    digits were an internal error (int() refuses more than 4,300)."""
    proc = run("serve", "--listen", f"127.0.0.1:{port}", repo, timeout=20)
    assert "invalid port" in one_line_error(proc, 2)


def test_the_same_option_twice_takes_the_last(repo):
    proc = run("untag", "-n", "--keep-last", "5", "--keep-last", "0", repo, "app")
    assert proc.returncode == 0 and proc.stdout.count(b"\n") == 2, proc


def test_hostile_lock_files(repo, tmp_path):
    """A directory, FIFO, device, missing directory or read-only mount as --lockfile: one
    line naming it, never a hang. A regular file that refuses writes (/proc/self/mem, EIO)
    was an internal error; the pid written into a lock file is only for a waiter's message,
    so the run now goes on without it."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, says in ((str(tmp_path), "Is a directory"), (str(fifo), "not a regular file"),
                       ("/dev/full", "not a regular file"), (str(tmp_path / "nope" / "lock"), "No such file"),
                       (str(tmp_path / ("x" * 300)), "File name too long"),
                       (str(tmp_path / ("y/" * 3000)), "File name too long")):
        err = one_line_error(run("gc", "-n", "--lockfile", path, repo, timeout=20))
        assert says in err and "lock file" in err and len(err) < 1100, err
    with tmpfs("64k") as ro:
        subprocess.run(["mount", "-o", "remount,ro", ro], check=True)
        err = one_line_error(run("untag", "-n", "--lockfile", os.path.join(ro, "lock"), repo, "app:1"))
        assert "Read-only file system" in err and ro in err, err
    proc = run("gc", "-n", "--lockfile", "/proc/self/mem", repo, timeout=20)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    # --lockfile "$LOCK" with LOCK unset ran unlocked, silently
    err = one_line_error(run("gc", "-n", "--lockfile", "", repo), status=2)
    assert "--lockfile needs a path" in err, err


HOLDER = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"%d somehost\n" % os.getpid())
print("held", flush=True)
time.sleep(600)
"""


def test_a_lock_whose_holder_was_killed_is_taken_at_once(repo, tmp_path):
    """kill -9 of the process holding --lockfile: the next run takes the lock at once, it
    does not wait for the pid written in the file."""
    lock = str(tmp_path / "lock")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, lock], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        err = one_line_error(run("gc", "-n", "--lockfile", lock, "--lock-timeout", "1s", repo))
        assert f"pid {holder.pid} on somehost" in err, err
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        started = time.monotonic()
        proc = run("untag", "--lockfile", lock, "--lock-timeout", "5s", "-n", repo, "app:1")
        assert proc.returncode == 0, proc.stderr
        assert time.monotonic() - started < 4
        with open(lock, "rb") as f:
            assert f.read().split()[0] != str(holder.pid).encode()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("host", [f"tcp://admin:{SECRET}@127.0.0.1:1", f"http://admin:{SECRET}@127.0.0.1:1",
                                  f"https://admin:{SECRET}@[::1]:1/x"])
def test_an_engine_url_with_a_password_never_prints_it(repo, tmp_path, host):
    """DOCKER_HOST, --docker-host and --pullhosts with `user:password@`: every message names
    the engine by its URL, and printed the password (pull, push, a fleet pull's status lines
    and its --json)."""
    env = dict(os.environ, DOCKER_HOST=host)
    for args, environ in ((["pull", repo, "app:1"], env), (["--docker-host", host, "push", str(tmp_path), "x:1"], None),
                          (["pull", "--docker-host", host, repo, "app:1"], None),
                          (["pull", "--pullhosts", f"{host},unix:///nonexistent", repo, "app:1"], None),
                          (["pull", "--json", "--pullhosts", f"{host},unix:///nonexistent", repo, "app:1"], None)):
        proc = run(*args, env=environ)
        no_secret(proc)
        assert proc.returncode == 1, proc.stderr
        assert b"Traceback" not in proc.stderr and b"127.0.0.1:1" in proc.stdout + proc.stderr or b"::1" in \
            proc.stdout + proc.stderr, proc.stderr
        if "--pullhosts" not in args:
            one_line_error(proc)


@pytest.mark.parametrize("remote", [f"file://user:{SECRET}@otherhost/tmp/x", f"http://user:{SECRET}@example.invalid/x",
                                    f"https://user:{SECRET}@example.invalid:8443/idx?X-Amz-Signature=1"])
def test_a_remote_url_with_a_password_never_prints_it(remote):
    """`file://user:pw@host/...` quoted the password in its usage error; a share URL with
    `user:pw@` was tried five times (http.client took `pw@host` for a port) and the error
    quoted `'pw@host'`. Both now fail at once naming only the host (the file URL as a usage
    error; the share URL with exit 1, as test_adversary expects of one fetched and refused)."""
    started = time.monotonic()
    for command in ("show-ref", "list", "verify", "remote"):
        proc = run(command, remote)
        no_secret(proc)
        one_line_error(proc, 2 if remote.startswith("file:") else 1)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("suffix", ["?x=1", "#frag", "?", "#"])
def test_a_file_url_with_a_query_or_fragment_is_a_usage_error(repo, suffix):
    """`file:///srv/repo?x` was read as /srv/repo, the rest silently dropped."""
    assert "query or fragment" in one_line_error(run("show-ref", f"file://{repo}{suffix}"), 2)
    assert run("show-ref", f"file://{repo}").returncode == 0


def test_repository_paths_that_are_odd(repo, tmp_path):
    """A trailing `/.` or `/./`, a `..` inside, `file://localhost/`: the same repository. A
    newline in the path made every error two lines; a 4,000-character path was quoted
    whole (4 KB of error). Both are one short line now."""
    for path in (repo + "/.", repo + "/./", f"{repo}/../{os.path.basename(repo)}", f"file://localhost{repo}"):
        proc = run("show-ref", path)
        assert proc.returncode == 0 and proc.stdout.count(b"\n") == 3, (path, proc.stderr)
    proc = run("show-ref", repo + "/..")  # a directory that is no repository: an empty one, nothing written
    assert proc.returncode == 0 and not proc.stdout and not proc.stderr, proc
    assert not os.path.exists(os.path.join(os.path.dirname(repo), "dogestry.json"))
    for command in (["show-ref"], ["list"], ["verify"], ["remote"], ["tag"], ["resolve-ref"]):
        extra = {"tag": ["app:1", "app:9"], "resolve-ref": ["app:1"]}.get(command[0], [])
        err = one_line_error(run(*command, repo + "\n", *extra))
        assert "\\n" in err, err
        err = one_line_error(run(*command, str(tmp_path / ("d" * 4000)), *extra))
        assert len(err) < 600, len(err)
    assert not os.path.exists(repo + "\n")


def test_a_repository_path_that_is_not_utf8_under_the_c_locale(repo, tmp_path):
    """Bytes 0xff 0xfe in the directory name, LC_ALL=C: every command works and names the
    path with the bytes escaped, not as replacement characters or surrogates."""
    path = os.fsencode(str(tmp_path)) + b"/\xff\xfe-repo"
    subprocess.run(["cp", "-a", repo + "/.", path], check=True)
    env = dict(os.environ, LC_ALL="C", LANG="C")
    for args in (["list"], ["show-ref"], ["verify"], ["remote"], ["gc", "--grace", "0"]):
        proc = run(*args, path, env=env)
        assert proc.returncode == 0, proc.stderr
        assert b"\xef\xbf\xbd" not in proc.stdout + proc.stderr and b"\\udc" not in proc.stdout + proc.stderr
    proc = run("untag", path, "app:2", env=env)
    assert proc.returncode == 0 and b"\\xff\\xfe-repo" in proc.stderr, proc.stderr
    err = one_line_error(run("show-ref", path + b"/nope", env=env))
    assert "\\xff\\xfe-repo/nope" in err, err


@pytest.mark.parametrize("variables", [
    {"COMP_LINE": "dogestry pu", "COMP_POINT": "x"},
    {"COMP_LINE": "dogestry pu", "COMP_POINT": ""},
    {"COMP_LINE": "dogestry pu", "COMP_POINT": "1e999"},
    {"COMP_POINT": "3"},
    {"COMP_LINE": "dogestry pu", "COMP_POINT": "11", "_ARGCOMPLETE": "yes"},
])
def test_completion_with_a_hostile_environment_is_one_line(variables):
    """argcomplete reads COMP_POINT and _ARGCOMPLETE with int() and COMP_LINE with environ[]:
    each was an internal error (ValueError, KeyError)."""
    env = dict(os.environ, **{"_ARGCOMPLETE": "1", **variables})
    one_line_error(run(env=env), 2)


@pytest.mark.parametrize("point", ["11", "999", "-5", "0"])
def test_completion_past_the_end_or_before_the_start(point):
    env = dict(os.environ, _ARGCOMPLETE="1", COMP_LINE="dogestry pu", COMP_POINT=point)
    proc = subprocess.run([sys.executable, BIN], env=env, capture_output=True, timeout=30, pass_fds=(),
                          stdin=subprocess.DEVNULL)
    assert proc.returncode in (0, 1) and not proc.stderr, proc.stderr


# -- the local-directory remote as a hostile filesystem -------------------------------------
def copy_of(repo, tmp_path, name="copy"):
    dest = tmp_path / name
    subprocess.run(["cp", "-a", repo, str(dest)], check=True)
    return dest


def objects(root):
    return sorted(str(p.relative_to(root)) for kind in ("images", "configs", "layers") for p in (root / kind).rglob("*")
                  if p.is_file())


@pytest.mark.parametrize("replace", ["file", "fifo", "link out"])
def test_refs_directory_replaced_is_an_error_never_an_empty_repository(repo, tmp_path, replace):
    """`repositories` replaced by a file, a FIFO, or a link out of the repository was listed
    as empty: show-ref printed nothing with exit 0 and `gc --grace 0` removed every object of
    every image. Now every command that lists refs fails naming it, and gc removes nothing."""
    root = copy_of(repo, tmp_path)
    before = objects(root)
    refs = root / "repositories"
    subprocess.run(["mv", str(refs), str(tmp_path / "refs-elsewhere")], check=True)
    if replace == "file":
        refs.write_text("x")
    elif replace == "fifo":
        os.mkfifo(refs)
    else:
        os.symlink(tmp_path / "refs-elsewhere", refs)
    for args in (["show-ref"], ["list"], ["verify"], ["remote"], ["gc", "--grace", "0"], ["gc", "-n"],
                 ["untag", "--keep-last", "0"]):
        extra = ["app"] if args[0] == "untag" else []
        err = one_line_error(run(*args, str(root), *extra, timeout=30))
        assert "repositories" in err, err
    assert objects(root) == before


def test_an_objects_directory_replaced_by_a_file_is_named(repo, tmp_path):
    root = copy_of(repo, tmp_path)
    subprocess.run(["rm", "-rf", str(root / "layers")], check=True)
    (root / "layers").write_text("x")
    for args in (["verify"], ["gc", "--grace", "0"], ["remote"]):
        assert "layers is a regular file, not a directory" in one_line_error(run(*args, str(root)))
    assert (root / "layers").read_text() == "x"


def test_leases_linked_out_stop_gc(repo, tmp_path):
    """A running push announces itself by a lease; leases listed as empty would let gc delete
    what the push just wrote."""
    root = copy_of(repo, tmp_path)
    (root / "leases").mkdir(exist_ok=True)
    subprocess.run(["rm", "-rf", str(root / "leases")], check=True)
    os.symlink("/tmp", root / "leases")
    before = objects(root)
    for args in (["gc", "--grace", "0"], ["gc", "-n"]):
        assert "leases" in one_line_error(run(*args, str(root)))
    assert objects(root) == before


@pytest.mark.parametrize("kind", ["socket", "dev zero", "directory", "device"])
def test_a_layer_that_is_not_a_regular_file(repo, tmp_path, kind):
    """A layer replaced by a socket, a link to /dev/zero, a directory or a character device:
    verify names it and every reader fails in bounded time; nothing hangs."""
    import stat as stat_module

    root = copy_of(repo, tmp_path)
    layer = max((p for p in (root / "layers/sha256").iterdir() if not p.name.endswith(".json")),
                key=lambda p: p.stat().st_size)
    layer.unlink()
    if kind == "socket":
        os.mknod(layer, stat_module.S_IFSOCK | 0o600)  # bind() would refuse a path this long
    elif kind == "dev zero":
        os.symlink("/dev/zero", layer)
    elif kind == "directory":
        layer.mkdir()
    else:
        os.mknod(layer, stat_module.S_IFCHR | 0o600, os.makedev(1, 5))
    proc = run("verify", str(root), timeout=30)
    assert proc.returncode == 1 and layer.name in proc.stdout.decode(), proc
    assert b"Traceback" not in proc.stderr
    for args in (["build-load-tar", str(root), "app:1"], ["sync-objects", "--image", "app:1", str(root),
                                                          str(tmp_path / "dst")]):
        err = one_line_error(run(*args, timeout=30))
        assert layer.name in err, err
    assert run("show-ref", str(root)).returncode == 0


def test_a_read_only_repository(repo):
    """The repository on a read-only mount: readers work; every writer fails with one line
    naming the read-only filesystem, and nothing changes."""
    with tmpfs("4m") as mnt:
        subprocess.run(["cp", "-a", repo, os.path.join(mnt, "r")], check=True)
        subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
        root = os.path.join(mnt, "r")
        for args in (["show-ref", root], ["list", root], ["verify", "--all", root], ["remote", root],
                     ["resolve-ref", root, "app:1"], ["walk-ancestry", root, "app:1"], ["gc", "-n", root]):
            assert run(*args).returncode == 0, args
        for args in (["gc", root], ["untag", root, "app:1"], ["untag", "--keep-last", "0", root, "app"],
                     ["tag", root, "app:1", "app:9"], ["update-ref", root, "app:7", "app:1"]):
            err = one_line_error(run(*args))
            assert "Read-only file system" in err or "read-only filesystem" in err, err
        assert run("show-ref", root).stdout.count(b"\n") == 3


# -- permissions and the umask (as user nobody: root reads and enters everything) ------------
NOBODY_MAIN = "import sys; from dogestry.cli import main; sys.exit(main(sys.argv[1:]))"


def as_nobody(top, *args, umask="022", input=None):
    """dogestry's main as user nobody under the given umask, with Debian's python3 and the
    package copied where nobody can read it."""
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/bin/sh", "-c",
                           f'umask {umask}; exec "$@"', "sh", "/usr/bin/python3", "-c", NOBODY_MAIN, *args],
                          capture_output=True, timeout=60, cwd=top, input=input,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": top, "HOME": top})


def test_a_repository_written_under_umask_0777_is_usable_by_its_writer(repo, world_readable_dir):
    """Objects are written 0644 whatever the umask, but the directories holding them obeyed
    it: under umask 0777 a user's first write made `dst/` with mode 000 and then failed with
    "permission denied writing dogestry.json in dst" in a directory of its own. The CLI now
    keeps the owner's bits out of the umask (and nothing more than the umask allows)."""
    src = os.path.join(world_readable_dir, "src")
    subprocess.run(["cp", "-a", repo, src], check=True)
    subprocess.run(["chmod", "-R", "a+rX", src], check=True)
    os.mkdir(os.path.join(world_readable_dir, "w"), 0o777)
    os.chmod(os.path.join(world_readable_dir, "w"), 0o777)  # where nobody may create dst
    dst = os.path.join(world_readable_dir, "w", "dst")
    proc = as_nobody(world_readable_dir, "sync-objects", "--image", "app:1", src, dst, umask="0777")
    assert proc.returncode == 0, proc.stderr
    records = as_nobody(world_readable_dir, "resolve-ref", src, "app:1").stdout
    proc = as_nobody(world_readable_dir, "update-ref", "--stdin", dst, input=records, umask="0777")
    assert proc.returncode == 0, proc.stderr
    assert as_nobody(world_readable_dir, "show-ref", dst, umask="0777").stdout == records
    for path in (dst, os.path.join(dst, "repositories", "app"), os.path.join(dst, ".spool")):
        assert os.stat(path).st_mode & 0o777 == 0o700, (path, oct(os.stat(path).st_mode))
    proc = as_nobody(world_readable_dir, "untag", dst, "app:1", umask="0777")
    assert proc.returncode == 0, proc.stderr


def test_unreadable_refs_stop_gc_and_untag(repo, world_readable_dir):
    """refs/ that the user cannot read (EACCES): gc and untag --keep-last fail naming it
    and remove nothing; an unreadable layer is named by verify --all."""
    root = os.path.join(world_readable_dir, "r")
    subprocess.run(["cp", "-a", repo, root], check=True)
    subprocess.run(["chown", "-R", "65534:65534", root], check=True)
    before = objects(pathlib.Path(root))
    os.chmod(os.path.join(root, "repositories"), 0o000)
    try:
        for args in (["gc", "--grace", "0", root], ["untag", "--keep-last", "0", root, "app"], ["show-ref", root]):
            proc = as_nobody(world_readable_dir, *args)
            err = one_line_error(proc)
            assert "permission denied" in err and "repositories" in err, err
    finally:
        os.chmod(os.path.join(root, "repositories"), 0o755)
    assert objects(pathlib.Path(root)) == before
    assert run("show-ref", root).stdout.count(b"\n") == 3


# -- the environment with real engines -------------------------------------------------------
def test_pull_of_a_10mb_layer_with_tmpdir_on_a_1mb_tmpfs(engine_named, unique, tmp_path):
    """TMPDIR and DOGESTRY_TEMP_DIR on a 1 MB tmpfs while pulling a 10 MB layer (d20): the pull
    streams into the engine, so it works and leaves the tmpfs empty; HOME unset or a file
    changes nothing."""
    d20 = engine_named("d20")
    name = f"h4-{unique}:1"
    root = make_repo(tmp_path, {name: [{"big.bin": os.urandom(10 << 20)}]})
    d20.created.append(name)
    with tmpfs("1m") as tiny:
        for variables in ({"TMPDIR": tiny}, {"DOGESTRY_TEMP_DIR": tiny, "HOME": "/etc/passwd"}):
            d20.rmi(name)
            env = dict(d20.env(), **variables)
            env.pop("HOME", None) if "HOME" not in variables else None
            proc = run("pull", root, name, env=env, timeout=120)
            assert proc.returncode == 0, proc.stderr
            assert os.listdir(tiny) == []
            assert d20.inspect(name) is not None


def test_an_open_file_limit_of_32(engine_named, unique, tmp_path):
    """`ulimit -n 32` (prlimit) during a pull and a push of a 20-layer image (d20), and a gc and
    verify of the result: all work."""
    d20 = engine_named("d20")
    name = f"h4-{unique}:20"
    root = make_repo(tmp_path, {name: [{f"f{i}.txt": os.urandom(4000 + i)} for i in range(20)]})
    d20.created.append(name)
    limit = ["prlimit", "--nofile=32", sys.executable, BIN]
    env = d20.env()
    proc = subprocess.run([*limit, "pull", root, name], capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    back = str(tmp_path / "back")
    for args in (["push", back, name], ["verify", back], ["gc", "--grace", "0", back]):
        proc = subprocess.run([*limit, *args], capture_output=True, env=env, timeout=120)
        assert proc.returncode == 0, (args, proc.stderr)
    assert run("show-ref", back).stdout.split() == run("show-ref", root).stdout.split()


# -- locks and races from the outside -----------------------------------------------------------
def test_two_untag_keep_last_at_once_keep_the_newest(repo, tmp_path):
    """Two `untag --keep-last` runs (2 and 3) at once on one remote without a lockfile: the
    union of their removals, never a tag that either would keep."""
    for attempt in range(3):
        root = copy_of(repo, tmp_path, f"keep{attempt}")
        for tag in range(3, 9):
            assert run("tag", str(root), "app:1", f"app:{tag}").returncode == 0
            time.sleep(0.02)  # distinct push times: 'newest' is well defined
        runs = [subprocess.Popen([sys.executable, BIN, "untag", "--keep-last", n, str(root), "app"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in ("2", "3")]
        for proc in runs:
            _out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        refs = run("show-ref", str(root)).stdout.decode().split()[1::2]
        assert sorted(refs) == ["app:7", "app:8", "other:1"], refs
        assert run("verify", str(root)).returncode == 0


def test_gc_while_tag_names_an_unreachable_image(repo, tmp_path):
    """gc --grace 0 racing `tag` of an image no ref reaches: either the tag fails (the image
    is gone) or the new ref's image stays complete; verify is clean either way."""
    import random

    for attempt in range(5):
        root = str(copy_of(repo, tmp_path, f"race{attempt}"))
        image = run("resolve-ref", root, "app:2").stdout.split()[0].decode()
        assert run("untag", root, "app:2").returncode == 0
        gc = subprocess.Popen([sys.executable, BIN, "gc", "--grace", "0", root], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
        time.sleep(random.random() * 0.3)
        tag = run("tag", root, image[7:19], "app:new")
        _out, err = gc.communicate(timeout=60)
        assert gc.returncode == 0, err
        if tag.returncode:
            one_line_error(tag)
        else:
            assert run("resolve-ref", root, "app:new").stdout.split()[0].decode() == image
        assert run("verify", root).returncode == 0


def test_pull_while_gc_deletes_the_image(engine_named, unique, tmp_path):
    """A pull (d20) of an image gc --grace 0 is deleting: the image, whole, or one line and
    the engine without it; never a half-loaded image."""
    import random

    d20 = engine_named("d20")
    name = f"h4-{unique}:1"
    source = make_repo(tmp_path, {name: [{"a.txt": b"a\n"}, {"big.bin": os.urandom(6 << 20)}]})
    image = run("resolve-ref", source, name).stdout.split()[0].decode()
    d20.created.append(image)
    for attempt in range(4):
        d20.rmi(image)
        root = str(copy_of(source, tmp_path, f"pull{attempt}"))
        assert run("untag", root, name).returncode == 0
        pull = subprocess.Popen([sys.executable, BIN, "pull", root, image[7:19]], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=d20.env())
        time.sleep(random.random() * 0.4)
        assert run("gc", "--grace", "0", root).returncode == 0
        _out, err = pull.communicate(timeout=120)
        if pull.returncode:
            one_line_error(subprocess.CompletedProcess(pull.args, pull.returncode, b"", err))
            assert d20.inspect(image) is None
        else:
            assert d20.inspect(image)["RootFS"]["Layers"][-1].startswith("sha256:")
            saved = subprocess.run(["docker", "-H", d20.env()["DOCKER_HOST"], "save", image],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert saved.returncode == 0 and len(saved.stdout) > 6 << 20, saved.stderr  # every layer is there


@pytest.mark.parametrize("remote", ["https://", "https://?X-Amz-Signature=1", "http:///x", "HTTPS://#y"])
def test_a_share_url_without_a_host_is_a_usage_error_at_once(remote):
    """It was tried five times (with backoff) before "no host given"."""
    started = time.monotonic()
    assert "names no host" in one_line_error(run("list", remote), 2)
    assert time.monotonic() - started < 5


def test_a_push_that_fills_the_repository_disk(engine_named, unique):
    """ENOSPC in the middle of a push (d20) to a 2 MB tmpfs remote, a 6 MB layer: one line
    naming the remote and the spool, no ref, no object under its final name that is not
    whole, no temporary left; a later push to a roomier place works."""
    d20 = engine_named("d20")
    name = f"h4-{unique}:1"
    d20.import_base(name, salt=os.urandom(6 << 20).hex())  # about 12 MB of incompressible salt
    with tmpfs("2m") as small:
        root = os.path.join(small, "r")
        err = one_line_error(run("push", root, name, env=d20.env(), timeout=120))
        assert "no space left" in err and root in err, err
        assert run("show-ref", root).stdout == b""
        assert not os.listdir(os.path.join(root, ".spool"))
        assert not os.path.exists(os.path.join(root, "repositories"))
        proc = run("verify", "--all", root)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_lock_file_made_under_umask_0777_opens_again(repo, world_readable_dir):
    """The lock file was created with mode 000 under umask 0777; the same user's next run
    could not open it ("Permission denied")."""
    work = os.path.join(world_readable_dir, "w")
    os.mkdir(work)
    os.chmod(work, 0o777)
    lock = os.path.join(work, "lock")
    src = os.path.join(world_readable_dir, "src")
    subprocess.run(["cp", "-a", repo, src], check=True)
    subprocess.run(["chmod", "-R", "a+rX", src], check=True)
    for attempt in range(2):
        proc = as_nobody(world_readable_dir, "gc", "-n", "--lockfile", lock, src, umask="0777")
        assert proc.returncode == 0, (attempt, proc.stderr)
    assert os.stat(lock).st_mode & 0o600 == 0o600


def test_no_repository_is_made_at_the_filesystem_root(repo):
    """`push "$DIR/" IMAGE` with DIR unset (or `file:///`) scattered dogestry.json, layers/,
    images/, configs/, repositories/, leases/ and .spool/ over /. A repository is never made
    there now; reading / (an empty location) still works."""
    made = ["dogestry.json", "layers", "images", "configs", "repositories", "leases", ".spool"]
    existed = {name for name in made if os.path.lexists("/" + name)}
    try:
        for remote in ("/", "file:///", "/tmp/../", "file://localhost/"):
            err = one_line_error(run("sync-objects", "--image", "app:1", repo, remote), 2)
            assert "filesystem root" in err, err
            err = one_line_error(run("update-ref", remote, "app:9", "app:1"), 1)
        assert run("show-ref", "/").returncode == 0
        assert {name for name in made if os.path.lexists("/" + name)} == existed
    finally:
        for name in made:
            if name not in existed and os.path.lexists("/" + name):
                subprocess.run(["rm", "-rf", "/" + name], check=False)


def test_tag_untag_and_gc_on_a_full_disk(repo):
    """The remote's disk full: `tag` fails with one line and writes no ref (not even an empty
    one); `untag` works, and then gc (whose lease needs the blocks untag freed) removes what
    no ref reaches."""
    with tmpfs("1m") as mnt:
        root = os.path.join(mnt, "r")
        subprocess.run(["cp", "-a", repo, root], check=True)
        subprocess.run(["dd", "if=/dev/zero", f"of={mnt}/fill", "bs=1k"], capture_output=True)
        subprocess.run(["dd", "if=/dev/zero", f"of={mnt}/fill2", "bs=1", "count=100000"], capture_output=True)
        err = one_line_error(run("tag", root, "app:1", "app:full"))
        assert "no space left" in err and root in err, err
        assert not os.path.exists(os.path.join(root, "repositories/app/_tags/full"))
        assert os.listdir(os.path.join(root, ".spool")) == []
        assert run("untag", root, "app:2").returncode == 0
        proc = run("gc", "--grace", "0", root)
        assert proc.returncode == 0 and b"removed 2 object(s)" in proc.stdout, proc
        assert run("verify", root).returncode == 0


def test_a_repository_path_in_utf8_is_named_as_typed(tmp_path):
    path = str(tmp_path / "dépôt\x01")
    err = one_line_error(run("show-ref", path))
    assert "dépôt\\x01" in err, err
