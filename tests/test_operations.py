"""Operating a repository over time: list, tag, untag and retention, gc, verify, lockfiles.

Real engine (d20), real storage: a local directory and SeaweedFS (strict like AWS). The
concurrency tests run dogestry under a pause point (PAUSER below: the real CLI, its real
backend, with one storage operation held until the test has done what it must do at that
exact point: run a gc, run a push, kill -9 a gc), on every backend alike.
"""

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import BIN, S3_BUCKET, S3Server, dogestry
from dogestry.operations import LEASE_SLACK


@pytest.fixture
def d20(engine_named):
    return engine_named("d20")


class LocalRemote:
    def __init__(self, root, engine):
        self.root, self.url, self.engine = str(root), str(root), engine
        self.env = engine.env()

    def keys(self, prefix=""):
        out = set()
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                key = os.path.relpath(os.path.join(dirpath, name), self.root)
                if key.startswith(prefix):
                    out.add(key)
        return out

    def get(self, key):
        with open(os.path.join(self.root, key), "rb") as f:
            return f.read()

    def put(self, key, data):
        path = os.path.join(self.root, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    def delete(self, key):
        os.unlink(os.path.join(self.root, key))


class S3Remote:
    def __init__(self, server, engine, endpoint=None):
        self.server, self.engine = server, engine
        self.prefix = f"ops-{uuid.uuid4().hex[:12]}"
        self.url = server.url(self.prefix)
        self.env = server.env(engine.env())
        self.client = server.client()

    def via(self, endpoint):
        """The URL of this remote through another endpoint (a proxy)."""
        return f"s3://{S3_BUCKET}/{self.prefix}/?endpoint={endpoint}"

    def keys(self, prefix=""):
        return {k for k in self.server.keys(self.prefix) if k.startswith(prefix)}

    def get(self, key):
        return self.client.get_object(Bucket=S3_BUCKET, Key=f"{self.prefix}/{key}")["Body"].read()

    def put(self, key, data):
        self.client.put_object(Bucket=S3_BUCKET, Key=f"{self.prefix}/{key}", Body=data)

    def delete(self, key):
        self.client.delete_object(Bucket=S3_BUCKET, Key=f"{self.prefix}/{key}")


@pytest.fixture(params=["local", "seaweed"])
def remote(request, tmp_path, d20):
    if request.param == "local":
        return LocalRemote(tmp_path / "repo", d20)
    return S3Remote(S3Server("seaweed"), d20)


def run(remote, *args, check=True, url=None):
    """dogestry COMMAND [url] ARGS: the remote's URL goes right after the command word."""
    return dogestry(args[0], url or remote.url, *args[1:], env=remote.env, check=check)


def out(proc):
    return proc.stdout.decode()


def images(engine, unique, big=0):
    """base:1 (1 layer) < app:1 (+COPY +RUN) < app:2 (+COPY +RUN): app:2 shares app:1's layers."""
    engine.import_base(f"t{unique}/base:1")
    engine.build(f"t{unique}/app:1", f"t{unique}/base:1", {"one.txt": f"one {unique}\n"}, big=big)
    engine.build(f"t{unique}/app:2", f"t{unique}/app:1", {"two.txt": "two\n"}, run="echo 2 > /r2.txt")


def object_keys(image_id, remote):
    """Every key the image record of image_id names, read from the remote as stored."""
    record = json.loads(remote.get(f"images/sha256/{image_id[7:]}.json"))
    keys = {f"configs/sha256/{image_id[7:]}", f"images/sha256/{image_id[7:]}.json"}
    for layer in record["layers"]:
        keys |= {f"layers/sha256/{layer['diff_id'][7:]}", f"layers/sha256/{layer['diff_id'][7:]}.json"}
    return keys


def ref_key(name_tag):
    name, tag = name_tag.rsplit(":", 1)
    return f"repositories/{name}/_tags/{tag}"


# The real CLI with one backend method held at its Nth call on a key matching a glob: it
# creates DIR/reached, then waits for DIR/release (or a kill). The pausing call holds a
# lock that every other call of that method takes, so parallel deletes wait behind it, as
# they would behind one stalled request. PAUSE_AT is METHOD:GLOB:N (put, delete, ...).
PAUSER = r"""
import fnmatch, os, sys, threading, time
sys.path.insert(0, sys.argv[1])
from dogestry.backends.local import LocalBackend
from dogestry.backends.s3 import S3Backend
method, glob, n = os.environ["PAUSE_AT"].rsplit(":", 2)
flags, lock, seen = os.environ["PAUSE_DIR"], threading.Lock(), [0]

def pausing(real):
    def call(self, key, *args, **kwargs):
        with lock:
            if fnmatch.fnmatchcase(key, glob):
                seen[0] += 1
                if seen[0] == int(n):
                    open(os.path.join(flags, "reached"), "w").close()
                    deadline = time.monotonic() + 120
                    while not os.path.exists(os.path.join(flags, "release")) and time.monotonic() < deadline:
                        time.sleep(0.02)
        return real(self, key, *args, **kwargs)
    return call

for cls in (LocalBackend, S3Backend):
    setattr(cls, method, pausing(getattr(cls, method)))
from dogestry.cli import main
sys.exit(main(sys.argv[2:]))
"""


class Paused:
    """`dogestry COMMAND REMOTE ARGS...` in another process, held at PAUSE_AT."""

    def __init__(self, remote, tmp_path, at, command, *args):
        self.flags = tmp_path / f"pause-{uuid.uuid4().hex[:8]}"
        self.flags.mkdir()
        env = dict(remote.env, PAUSE_AT=at, PAUSE_DIR=str(self.flags))
        self.proc = subprocess.Popen([sys.executable, "-c", PAUSER, os.path.dirname(os.path.dirname(BIN)), command,
                                      remote.url, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def reached(self, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.flags / "reached").exists():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def release(self):
        (self.flags / "release").touch()

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def finish(self, timeout=120):
        """(returncode, stdout, stderr) once released."""
        self.release()
        stdout, stderr = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, stdout.decode(), stderr.decode()


# -- list, tag, untag -------------------------------------------------------------------

def test_list_many_tags_with_slashes_and_host_port_names(remote, d20, unique):
    images(d20, unique)
    app1, app2 = out(run(remote, "push", f"t{unique}/app:1", f"t{unique}/app:2")).split()[0::2]
    # A thousand refs, written straight to the storage (set_ref would make this test slow):
    # names with several components, a host:port and an IPv6 registry.
    names = [f"t{unique}/app", f"registry.example.com:5000/team/t{unique}", f"[::1]:5000/t{unique}/x/y"]
    refs = {f"{names[i % 3]}:v{i}": (app1 if i % 2 else app2) for i in range(1000)}
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: remote.put(ref_key(item[0]), f"{item[1]}\n".encode()), refs.items()))
    started = time.monotonic()
    rows = [json.loads(line) for line in out(run(remote, "list", "--json")).splitlines()]
    print(f"list of {len(rows)} tags on {type(remote).__name__}: {time.monotonic() - started:.2f}s")
    listed = {f"{r['repository']}:{r['tag']}": r["image_id"] for r in rows}
    assert listed == dict(refs, **{f"t{unique}/app:1": app1, f"t{unique}/app:2": app2})
    assert [r["repository"] for r in rows] == sorted(r["repository"] for r in rows)
    for name in names:  # within a name: newest push first
        times = [r["pushed"] for r in rows if r["repository"] == name]
        assert times == sorted(times, reverse=True)
    sizes = {r["image_id"]: r["size"] for r in rows}
    layers1 = json.loads(remote.get(f"images/sha256/{app1[7:]}.json"))["layers"]
    assert sizes[app1] == sum(layer["size"] for layer in layers1) + len(remote.get(f"configs/sha256/{app1[7:]}"))

    table = out(run(remote, "ls", f"[[]::1]:5000/t{unique}/*")).splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "SIZE", "PUSHED"]
    assert len(table) == 1 + 333 and all(line.startswith(f"[::1]:5000/t{unique}/x/y ") for line in table[1:])
    assert {line.split()[2] for line in table[1:]} == {app1[7:19], app2[7:19]}
    full = out(dogestry("list", "--no-trunc", remote.url, f"t{unique}/app:1", env=remote.env))
    assert app1 in full and f"t{unique}/app " in full
    assert run(remote, "list", "nothing-matches/*", check=False).returncode == 1



class _CountingRefReads:
    """A real backend whose ref reads are counted; `vanish` is deleted right after a listing
    of refs, as if another host untagged it between list's listing and its reads."""

    def __init__(self, inner, vanish=None):
        self._inner, self.vanish, self.ref_reads = inner, vanish, []

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def scan(self, prefix=""):
        infos = list(self._inner.scan(prefix))
        if prefix.startswith("repositories") and self.vanish:
            self._inner.delete(self.vanish)
        return iter(infos)

    def get(self, key, limit=None):
        if key.startswith("repositories/"):
            self.ref_reads.append(key)
        return self._inner.get(key, limit)


@pytest.mark.parametrize("server", ["seaweed", "moto"])
def test_list_on_s3_reads_each_ref_content_once(server, d20, unique, monkeypatch):
    """S3 listings carry ETags derived from the bytes: tags of one image share one GET."""
    from dogestry.backends import open_backend
    from dogestry.operations import list_tags
    from dogestry.repo import Repository

    remote = S3Remote(S3Server(server), d20)
    images(d20, unique)
    app1, app2 = out(dogestry("push", remote.url, f"t{unique}/app:1", f"t{unique}/app:2",
                              env=remote.env)).split()[0::2]
    refs = {f"t{unique}/many:v{i}": (app1 if i % 2 else app2) for i in range(40)}
    for name, image_id in refs.items():
        remote.put(ref_key(name), f"{image_id}\n".encode())
    refs.update({f"t{unique}/app:1": app1, f"t{unique}/app:2": app2})
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", remote.server.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", remote.server.secret)
    gone = f"t{unique}/app:1"  # listed first of app1's tags: the one read for all of them
    backend = _CountingRefReads(open_backend(remote.url), vanish=ref_key(gone))
    rows = list_tags(Repository(backend, create=False))
    assert {str(r.ref): r.image_id for r in rows} == dict(refs, **{gone: None})
    # one read per content, plus, for the group whose first member vanished, the rest of it
    assert len(backend.ref_reads) <= 2 + 20, backend.ref_reads
    backend = _CountingRefReads(open_backend(remote.url))
    list_tags(Repository(backend, create=False))
    assert len(backend.ref_reads) == 2, backend.ref_reads

    # A tag per image, as a build per tag makes: past ETAG_LOOKUP_MIN distinct etags one
    # listing of the image records names them all; a ref written otherwise (CRLF) is read.
    record = json.loads(remote.get(f"images/sha256/{app1[7:]}.json"))
    distinct = {}
    for i in range(20):
        fake = "sha256:" + hashlib.sha256(f"{unique}-{i}".encode()).hexdigest()
        remote.put(f"images/sha256/{fake[7:]}.json",
                   json.dumps(dict(record, id=fake, config=dict(record["config"], digest=fake))).encode())
        remote.put(ref_key(f"t{unique}/build:{i}"), f"{fake}\n".encode())
        distinct[f"t{unique}/build:{i}"] = fake
    remote.put(ref_key(f"t{unique}/build:crlf"), f"{app2}\r\n".encode())
    backend = _CountingRefReads(open_backend(remote.url))
    rows = list_tags(Repository(backend, create=False), [f"t{unique}/build:*"])
    assert {str(r.ref): r.image_id for r in rows} == dict(distinct, **{f"t{unique}/build:crlf": app2})
    assert backend.ref_reads == [ref_key(f"t{unique}/build:crlf")]

def test_tag_and_untag_round_trip_and_retention_keeps_the_newest(remote, d20, unique, monkeypatch):
    images(d20, unique)
    app1 = out(run(remote, "push", f"t{unique}/app:1")).split()[0]
    before = remote.keys("layers/") | remote.keys("configs/") | remote.keys("images/")
    assert out(run(remote, "tag", f"t{unique}/app:1", f"reg.example:5000/t{unique}/app:prod")).split() == \
        [app1, f"reg.example:5000/t{unique}/app:prod"]
    assert out(run(remote, "tag", app1[7:19], f"t{unique}/other")).split() == [app1, f"t{unique}/other:latest"]
    assert remote.keys("layers/") | remote.keys("configs/") | remote.keys("images/") == before  # no data moved
    tags = {line.split()[0] + ":" + line.split()[1] for line in out(run(remote, "list")).splitlines()[1:]}
    assert tags == {f"t{unique}/app:1", f"reg.example:5000/t{unique}/app:prod", f"t{unique}/other:latest"}
    missing = run(remote, "tag", f"t{unique}/nope:1", f"t{unique}/x:1", check=False)
    assert missing.returncode == 1 and f"t{unique}/nope:1 not found" in missing.stderr.decode()

    # untag: all named refs exist or none is removed.
    failed = run(remote, "untag", f"t{unique}/other", f"t{unique}/ghost:1", check=False)
    assert failed.returncode == 1 and f"t{unique}/ghost:1 not found" in failed.stderr.decode()
    assert remote.keys(ref_key(f"t{unique}/other:latest"))
    assert out(run(remote, "rmtag", f"t{unique}/other", f"reg.example:5000/t{unique}/app:prod")).split() == \
        [app1, f"t{unique}/other:latest", app1, f"reg.example:5000/t{unique}/app:prod"]
    assert out(run(remote, "show-ref")).split() == [app1, f"t{unique}/app:1"]
    assert remote.keys("layers/") | remote.keys("configs/") | remote.keys("images/") == before  # until gc

    # Retention: pushed in an order that is neither the tags' sort order nor its reverse.
    # S3 keeps whole seconds, so the tags are written a second apart.
    # Written in-process (the tag command is tested above), a second apart for S3's sake.
    from dogestry.backends import open_backend
    from dogestry.operations import tag
    from dogestry.repo import Repository

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        if var in remote.env:
            monkeypatch.setenv(var, remote.env[var])
    repo = Repository(open_backend(remote.url))
    order = {f"t{unique}/a": ["m", "z", "b", "q", "c"], f"t{unique}/b": ["2", "1"]}
    for i in range(5):
        for name, tags_in_order in order.items():
            if i < len(tags_in_order):
                tag(repo, f"t{unique}/app:1", f"{name}:{tags_in_order[i]}")
        time.sleep(1.05 if isinstance(remote, S3Remote) else 0.05)
    dry = out(run(remote, "untag", "--keep-last", "2", "--dry-run", f"t{unique}/[ab]"))
    assert sorted(dry.split()[1::2]) == sorted(f"t{unique}/a:{t}" for t in ("m", "z", "b"))
    assert len(remote.keys(f"repositories/t{unique}/a/")) == 5
    run(remote, "untag", "--keep-last", "2", f"t{unique}/[ab]")
    left = out(run(remote, "show-ref", f"t{unique}/[ab]:*")).split()[1::2]
    assert sorted(left) == [f"t{unique}/a:c", f"t{unique}/a:q", f"t{unique}/b:1", f"t{unique}/b:2"]
    assert out(run(remote, "show-ref", f"t{unique}/app:1")).split()[1] == f"t{unique}/app:1"  # not matched


# -- gc ---------------------------------------------------------------------------------

def test_gc_removes_exactly_the_unreachable_objects(remote, d20, unique):
    images(d20, unique)
    app1, app2 = out(run(remote, "push", f"t{unique}/app:1", f"t{unique}/app:2")).split()[0::2]
    keep, gone = object_keys(app1, remote), object_keys(app2, remote) - object_keys(app1, remote)
    assert len(gone) == 6  # app:2's record, config, and two layers (data + descriptor)
    # Leftovers of an interrupted push: data without a descriptor, a dead writer's lease.
    orphan = "layers/sha256/" + "ab" * 32
    remote.put(orphan, b"leftover")
    run(remote, "untag", f"t{unique}/app:2")
    everything = remote.keys()
    gone_bytes = sum(len(remote.get(k)) for k in gone) + len(b"leftover")
    report = out(run(remote, "gc"))  # default grace 24h: all of it is younger
    assert report.startswith("removed 0 object(s)") and "7 younger than 24h" in report
    assert remote.keys() == everything
    dry = out(run(remote, "gc", "--grace", "0", "--dry-run"))
    assert dry.startswith("would remove 7 object(s)") and remote.keys() == everything
    report = out(run(remote, "gc", "--grace", "0"))
    assert report.startswith(f"removed 7 object(s), {gone_bytes} bytes"), report
    assert remote.keys() == everything - gone - {orphan}
    assert keep <= remote.keys()
    assert run(remote, "verify", "--all").returncode == 0
    d20.rmi(f"t{unique}/app:2", f"t{unique}/app:1", f"t{unique}/base:1")
    run(remote, "pull", f"t{unique}/app:1")
    assert d20.run(f"t{unique}/app:1") == f"one {unique}\n"


def test_gc_keeps_what_a_leased_writer_wrote_until_the_lease_ends(tmp_path, d20, unique):
    """The lease rule on a local directory, with the lease held by this process."""
    from dogestry.backends import open_backend
    from dogestry.operations import LEASE_SLACK, lease
    from dogestry.repo import Repository

    remote = LocalRemote(tmp_path / "repo", d20)
    images(d20, unique)
    app1 = out(run(remote, "push", f"t{unique}/app:1")).split()[0]
    run(remote, "untag", f"t{unique}/app:1")
    time.sleep(1.1)
    time.sleep(LEASE_SLACK + 0.5)
    repo = Repository(open_backend(remote.url))
    with lease(repo) as held:
        assert remote.keys("leases/") == {held.key}
        app2 = out(run(remote, "push", f"t{unique}/app:2")).split()[0]
        run(remote, "untag", f"t{unique}/app:2")
        needed, written = object_keys(app2, remote), object_keys(app2, remote) - object_keys(app1, remote)
        report = out(run(remote, "gc", "--grace", "0"))
        # app:1's record and config predate the lease and go; what was written since stays,
        # and so do the older layers app:2's record names.
        assert report.startswith("removed 2 object(s)") and \
            f"kept unreachable: {len(written)} written by a push still running" in report, report
        assert remote.keys("layers/") | remote.keys("configs/") | remote.keys("images/") == needed
    assert remote.keys("leases/") == set()
    assert out(run(remote, "gc", "--grace", "0")).startswith(f"removed {len(needed)} object(s)")


def test_gc_keeps_the_objects_of_a_push_running_in_another_process(remote, d20, unique, tmp_path):
    images(d20, unique, big=4 << 20)
    run(remote, "push", f"t{unique}/base:1")
    push = Paused(remote, tmp_path, "put:images/*:1", "push", f"t{unique}/app:1")
    try:
        assert push.reached(), push.proc.stderr.read().decode()
        # Every layer and the config are written; no ref reaches them; grace 0.
        written = remote.keys("layers/") | remote.keys("configs/")
        assert len(remote.keys("leases/")) == 1
        report = out(run(remote, "gc", "--grace", "0"))
        assert report.startswith("removed 0 object(s)") and "written by a push still running" in report, report
        assert remote.keys("layers/") | remote.keys("configs/") == written
        assert push.proc.poll() is None
    finally:
        code, stdout, stderr = push.finish()
    assert code == 0, stderr
    app1 = stdout.split()[0]
    assert remote.keys("leases/") == set()
    d20.rmi(f"t{unique}/app:2", f"t{unique}/app:1", f"t{unique}/base:1")
    run(remote, "pull", f"t{unique}/app:1")
    assert d20.inspect(f"t{unique}/app:1")["Id"] == app1
    assert d20.run(f"t{unique}/app:1") == f"one {unique}\n"


def _unreferenced_app1(remote, d20, unique):
    """app:1 pushed, then untagged and older than a second: what gc --grace 0 removes, and
    what a push of app:1 finds whole and reuses (no object written, so its lease's age rule
    covers nothing: only naming the image in the lease protects it)."""
    images(d20, unique)
    app1 = out(run(remote, "push", f"t{unique}/app:1")).split()[0]
    run(remote, "untag", f"t{unique}/app:1")
    time.sleep(LEASE_SLACK + 1.5)  # older than a lease taken from now on, on S3's whole seconds too
    return app1


def test_gc_after_a_push_checked_its_objects_keeps_them_until_the_ref_is_written(remote, d20, unique, tmp_path):
    """The push's final check has passed and its ref is not yet written: a whole gc runs."""
    app1 = _unreferenced_app1(remote, d20, unique)
    needed = object_keys(app1, remote)
    push = Paused(remote, tmp_path, "put:repositories/*:1", "push", f"t{unique}/app:1")
    try:
        assert push.reached(), push.proc.stderr.read().decode()
        lease = json.loads(remote.get(next(iter(remote.keys("leases/")))))
        assert lease["images"] == [app1]
        report = out(run(remote, "gc", "--grace", "0"))
        assert report.startswith("removed 0 object(s)"), report
        assert needed <= remote.keys()
    finally:
        code, _, stderr = push.finish()
    assert code == 0, stderr
    assert remote.keys("leases/") == set()  # held until the ref was written, then released
    assert run(remote, "verify").returncode == 0
    assert out(run(remote, "gc", "--grace", "0")).startswith("removed 0 object(s)")  # the ref keeps them now


def test_push_waits_for_a_gc_that_chose_its_objects_then_stores_them_again(remote, d20, unique, tmp_path):
    """A gc has chosen the unreferenced app:1 and read the leases (none); a push of app:1
    then starts: it must not check and write its ref before that gc has deleted."""
    app1 = _unreferenced_app1(remote, d20, unique)
    needed = object_keys(app1, remote)
    gc = Paused(remote, tmp_path, "delete:images/*:1", "gc", "--grace", "0")
    try:
        assert gc.reached(), gc.proc.stderr.read().decode()
        push = subprocess.Popen([sys.executable, BIN, "push", "-v", remote.url, f"t{unique}/app:1"],
                                env=remote.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(3)
        assert push.poll() is None, push.communicate()  # waiting for the gc
        assert not remote.keys(ref_key(f"t{unique}/app:1"))
    finally:
        code, report, stderr = gc.finish()
    # The gc deleted them all; the push, polling every GC_POLL, may already be storing them
    # again, so what proves the deletes is the report here and the push's own words below.
    assert code == 0 and report.startswith(f"removed {len(needed)} object(s)"), (report, stderr)
    stdout, stderr = push.communicate(timeout=120)
    assert push.returncode == 0, stderr.decode()
    assert stdout.decode().split() == [app1, f"t{unique}/app:1"]
    assert "waiting for the gc holding leases/gc-" in stderr.decode()
    assert f"objects of image {app1} vanished" in stderr.decode()
    assert run(remote, "verify", "--all").returncode == 0  # reads every object back, verified


def test_a_gc_lease_dated_in_the_future_holds_a_push_no_longer_than_a_dead_one(tmp_path, d20, unique):
    """A gc lease stamped years ahead (a skewed clock on a shared directory, or a hand): by
    the storage's clock it never expires, so a push waited for it until that date. A live gc
    rewrites its lease every LEASE_RENEW seconds; one that stays the same while the push
    watches for LEASE_TIMEOUT is dead, whatever its date. (LEASE_TIMEOUT is cut to 3 s here.)"""
    remote = LocalRemote(tmp_path / "repo", d20)
    images(d20, unique)
    out(run(remote, "push", f"t{unique}/app:1"))
    lease = tmp_path / "repo" / "leases" / ("gc-" + "0" * 32 + ".json")
    lease.parent.mkdir(exist_ok=True)
    lease.write_text(json.dumps({"host": "elsewhere", "pid": 1, "what": "gc", "since": 1}) + "\n")
    os.utime(lease, (4102444800, 4102444800))  # 2100-01-01
    short = ("import sys; import dogestry.operations as o; o.LEASE_TIMEOUT = 3; from dogestry.cli import main; "
             "sys.exit(main())")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", short, "-v", "push", remote.url, f"t{unique}/app:2"],
                          env=remote.env, capture_output=True, timeout=120, cwd=os.path.dirname(os.path.dirname(BIN)))
    assert proc.returncode == 0, proc.stderr.decode()
    assert "waiting for the gc holding leases/gc-" in proc.stderr.decode()
    assert time.monotonic() - started < 60
    assert remote.keys(ref_key(f"t{unique}/app:2"))


def test_push_stores_again_what_a_gc_removed_under_it(remote, d20, unique):
    """A push that finds an unreachable image whole reuses it; a gc may remove it meanwhile.
    Simulated here by removing its layer before the push's final check (the push itself
    cannot be paused at that point without a proxy, so the removal comes first)."""
    images(d20, unique)
    app1 = out(run(remote, "push", f"t{unique}/app:1")).split()[0]
    run(remote, "untag", f"t{unique}/app:1")
    record = json.loads(remote.get(f"images/sha256/{app1[7:]}.json"))
    top = record["layers"][-1]["diff_id"][7:]
    remote.delete(f"layers/sha256/{top}")  # data gone, descriptor left: what only the final check sees
    run(remote, "push", f"t{unique}/app:1")
    assert run(remote, "verify").returncode == 0
    assert f"layers/sha256/{top}" in remote.keys()


def test_gc_killed_at_several_points_leaves_every_ref_complete(remote, d20, unique, tmp_path):
    images(d20, unique)
    d20.build(f"t{unique}/app:3", f"t{unique}/app:1", {"three.txt": "three\n"}, run="echo 3 > /r3.txt")
    for n in (1, 2, 3):
        run(remote, "push", f"t{unique}/app:{n}")
    run(remote, "untag", f"t{unique}/app:2", f"t{unique}/app:3")
    points = [
        ("before the first config", "delete:configs/*:1"),
        ("at the second descriptor", "delete:layers/sha256/*.json:2"),
        ("at the first layer data", "delete:layers/sha256/*[0-9a-f]:1"),
    ]
    for where, at in points:
        gc = Paused(remote, tmp_path, at, "gc", "--grace", "0")
        reached = gc.reached(60)
        gc.kill()
        assert reached, f"gc never got {where}: {gc.proc.stderr.read().decode()}"
        assert run(remote, "verify").returncode == 0, where
        problems = out(run(remote, "verify", "--all", check=False)).splitlines()
        # Only layer data whose descriptor went first may be left: no record lacks a layer.
        assert all("has no descriptor" in line for line in problems), (where, problems)
    # The killed gcs' leases are there; a push on this host does not wait for dead ones.
    assert len(remote.keys("leases/")) == 3
    d20.build(f"t{unique}/app:4", f"t{unique}/app:1", {"four.txt": "four\n"})
    pushed = run(remote, "push", "-v", f"t{unique}/app:4")
    assert "waiting for the gc" not in pushed.stderr.decode()
    report = out(run(remote, "gc", "--grace", "0"))
    assert not report.startswith("removed 0 ")
    assert run(remote, "verify", "--all").returncode == 0
    d20.rmi(f"t{unique}/app:4", f"t{unique}/app:3", f"t{unique}/app:2", f"t{unique}/app:1", f"t{unique}/base:1")
    run(remote, "pull", f"t{unique}/app:1", f"t{unique}/app:4")
    assert d20.run(f"t{unique}/app:1") == f"one {unique}\n"


# -- verify -----------------------------------------------------------------------------

def test_verify_names_each_damaged_object(remote, d20, unique):
    images(d20, unique)
    d20.build(f"t{unique}/app:3", f"t{unique}/app:2", {"three.txt": "three\n" * 1000}, run="echo 3 > /r3.txt")
    base, app1, app2, app3 = out(run(remote, "push", *(f"t{unique}/{n}" for n in ("base:1", "app:1", "app:2",
                                                                                    "app:3")))).split()[0::2]
    healthy = run(remote, "fsck")
    assert healthy.returncode == 0 and out(healthy) == "" and "no problem(s)" in healthy.stderr.decode()
    layers = [layer["diff_id"][7:] for layer in json.loads(remote.get(f"images/sha256/{app3[7:]}.json"))["layers"]]
    assert len(layers) == 7  # base, COPY+RUN, COPY+RUN, COPY+RUN
    flipped, truncated, missing = layers[6], layers[5], layers[3]
    data = bytearray(remote.get(f"layers/sha256/{flipped}"))
    data[len(data) // 2] ^= 0x01
    remote.put(f"layers/sha256/{flipped}", bytes(data))
    remote.put(f"layers/sha256/{truncated}", remote.get(f"layers/sha256/{truncated}")[:-10])
    remote.delete(f"layers/sha256/{missing}")
    remote.delete(f"layers/sha256/{missing}.json")
    remote.put(f"configs/sha256/{base[7:]}", remote.get(f"configs/sha256/{base[7:]}").replace(b'"', b"'", 1))
    ghost = "sha256:" + "fe" * 32
    remote.put(ref_key(f"t{unique}/ghost:1"), f"{ghost}\n".encode())

    result = run(remote, "verify", check=False)
    assert result.returncode == 1
    lines = out(result).splitlines()
    assert len(lines) == 5, lines

    def one(*words):
        found = [line for line in lines if all(w in line for w in words)]
        assert len(found) == 1, (words, lines)

    one(f"sha256:{flipped}", "is corrupt")
    one(f"sha256:{truncated}", "truncated")
    one(f"sha256:{missing}", "missing")
    one(f"config {base}", "digest mismatch")
    one(f"ref t{unique}/ghost:1", ghost, "lacks")
    # Only the named images: app:1 has none of the damaged objects; base:1 has its config.
    assert run(remote, "verify", f"t{unique}/app:1").returncode == 0
    only = run(remote, "verify", f"t{unique}/base:1", check=False)
    assert only.returncode == 1 and len(out(only).splitlines()) == 1 and f"config {base}" in out(only)


# -- lockfiles --------------------------------------------------------------------------

def test_runs_under_one_lockfile_wait_for_each_other_and_time_out_clearly(tmp_path, d20, unique):
    remote = LocalRemote(tmp_path / "repo", d20)
    images(d20, unique)
    lock = str(tmp_path / "dogestry.lock")
    held = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    os.write(held, b"4242 ci-runner\n")
    pushes = [subprocess.Popen([sys.executable, BIN, "push", "-v", "--lockfile", lock, remote.url,
                                f"t{unique}/app:{n}"], env=remote.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
              for n in (1, 2)]
    time.sleep(2)
    assert all(p.poll() is None for p in pushes) and not os.path.exists(remote.root)  # both wait
    timed_out = dogestry("gc", "--lockfile", lock, "--lock-timeout", "1s", remote.url, env=remote.env, check=False)
    assert timed_out.returncode == 1
    assert timed_out.stderr.decode().strip() == (f"dogestry: lock file {lock} is still held by another run after 1s "
                                                 "(--lock-timeout): pid 4242 on ci-runner")
    fcntl.flock(held, fcntl.LOCK_UN)
    os.close(held)
    results = [p.communicate(timeout=120) for p in pushes]
    assert [p.returncode for p in pushes] == [0, 0], [e.decode() for _, e in results]
    took = [float(e.decode().split(f"took lock file {lock} after ")[1].split("s")[0]) for _, e in results]
    # One ran right after the release; the other waited for it to finish.
    ends = sorted(took)
    assert ends[1] > ends[0] + 0.05, took  # the second waited while the first pushed
    assert run(remote, "verify").returncode == 0
    bad = dogestry("pull", "--lock-timeout", "1s", remote.url, f"t{unique}/app:1", env=remote.env, check=False)
    assert bad.returncode == 2 and "--lock-timeout needs --lockfile" in bad.stderr.decode()


def test_gc_and_retention_honour_the_lockfile_on_every_backend(remote, d20, unique, tmp_path):
    """What dogestry-gc(1) and dogestry-untag(1) say of --lockfile and --lock-timeout, on each
    backend: a run on a held lock waits, then runs; a timeout is one line naming the holder."""
    d20.import_base(f"t{unique}/app:1")
    app1 = out(run(remote, "push", f"t{unique}/app:1")).split()[0]
    needed = object_keys(app1, remote)
    remote.put(ref_key(f"t{unique}/r:old"), b"not an image id\n")  # damaged: untag prints "-" for it
    for tag in ("a", "b", "c"):
        time.sleep(1.05 if isinstance(remote, S3Remote) else 0.05)  # S3 keeps whole seconds
        run(remote, "tag", f"t{unique}/app:1", f"t{unique}/r:{tag}")
    lock = str(tmp_path / "ops.lock")
    held = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    os.write(held, b"4242 ci-runner\n")
    for args in (["untag", "--keep-last", "1", f"t{unique}/r"], ["gc", "--grace", "0"], ["gc", "-n"]):
        timed_out = dogestry(args[0], "--lockfile", lock, "--lock-timeout", "1s", remote.url, *args[1:],
                             env=remote.env, check=False)
        assert timed_out.returncode == 1, args
        assert timed_out.stderr.decode() == (f"dogestry: lock file {lock} is still held by another run after 1s "
                                             "(--lock-timeout): pid 4242 on ci-runner\n"), args
    assert len(remote.keys(f"repositories/t{unique}/r/")) == 4
    waiting = subprocess.Popen([sys.executable, BIN, "untag", "--keep-last", "1", "--lockfile", lock, remote.url,
                                f"t{unique}/r"], env=remote.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.5)
    assert waiting.poll() is None and len(remote.keys(f"repositories/t{unique}/r/")) == 4  # it waits
    fcntl.flock(held, fcntl.LOCK_UN)
    os.close(held)
    stdout, stderr = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, stderr.decode()
    assert sorted(stdout.decode().splitlines()) == sorted([f"- t{unique}/r:old", f"{app1} t{unique}/r:a",
                                                           f"{app1} t{unique}/r:b"])
    assert remote.keys(f"repositories/t{unique}/r/") == {ref_key(f"t{unique}/r:c")}
    run(remote, "untag", f"t{unique}/app:1", f"t{unique}/r:c")
    report = out(run(remote, "gc", "--grace", "0", "--lockfile", lock, "--lock-timeout", "5s"))
    assert report.startswith(f"removed {len(needed)} object(s)"), report
    assert not remote.keys("images/") and not remote.keys("leases/")

