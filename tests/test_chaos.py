"""A fifth adversarial pass: many writers and interruptions at once (RELIABILITY.md, "Fifth
adversarial pass").

Each scenario runs the real CLI (bin/dogestry) in several processes against a real local
directory and SeaweedFS (strict S3), with the real engine d20 for pushes and pulls, and
then checks the repository's invariants, not any interleaving:

- every ref names a complete image (verify, and check_repository reading every object);
- a command that exited 0 having written a ref left that ref in place (the refs such
  commands write are names nobody removes);
- gc removed nothing a ref reaches (the same checks) nor what a running push needed (the
  push ended with a whole image);
- nothing partial under a final name, no temporary or lease left by a command that ended;
- every failure is one line `dogestry: ...`, exit 1, no traceback; no run hangs (each is
  bounded by a timeout that fails the test).

Schedules are seeded, so a failure replays. DOGESTRY_CHAOS_SCALE (default 1) multiplies
the seeds and the steps for deeper hunts by hand.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest

from conftest import BIN, S3Server, TestEngine, ENGINES
from test_reliability import LocalStore, S3Store, check_repository

SCALE = max(1, int(os.environ.get("DOGESTRY_CHAOS_SCALE", "1") or "1"))
TIMEOUT = 240  # seconds for any one command: a run that takes longer is a hang, and fails the test


def run(args, env, timeout=TIMEOUT, input=None):
    """bin/dogestry ARGS, bounded: a TimeoutExpired fails the test (after killing the run)."""
    try:
        return subprocess.run([sys.executable, BIN, *args], env=env, capture_output=True, timeout=timeout,
                              input=input)
    except subprocess.TimeoutExpired:
        pytest.fail(f"dogestry {' '.join(args)} did not end within {timeout}s")


def failure_is_one_line(proc, what):
    """A failed run: exit 1, one `dogestry: ` line, no internal error. A run that ended 0 passes."""
    if proc.returncode == 0:
        return
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 1, f"{what}: exit {proc.returncode}: {err}"
    assert "internal error" not in err and "Traceback" not in err, f"{what}: {err}"
    assert err.startswith("dogestry: ") and err.count("\n") == 1, f"{what}: {err}"


# -- images and remotes -----------------------------------------------------------------

class Images:
    """Small images on d20 sharing layers: base < a < b, base < c, base < p (p is the one pulled)."""

    def __init__(self, engine):
        self.engine = engine
        self.u = uuid.uuid4().hex[:8]
        u = self.u
        engine.import_base(f"t{u}/base:1")
        engine.build(f"t{u}/a:1", f"t{u}/base:1", {"a.txt": f"a {u}\n"})
        engine.build(f"t{u}/b:1", f"t{u}/a:1", {"b.txt": f"b {u}\n"}, run="echo b > /rb.txt")
        engine.build(f"t{u}/c:1", f"t{u}/base:1", {"c.txt": f"c {u}\n"}, run="echo c > /rc.txt")
        engine.build(f"t{u}/p:1", f"t{u}/base:1", {"p.txt": f"p {u}\n"}, big=300_000)
        self.names = {k: f"t{u}/{k}:1" for k in "abcp"}
        self.ids = {k: engine.inspect(name)["Id"] for k, name in self.names.items()}
        self.pull_lock = threading.Lock()


@pytest.fixture(scope="module")
def imgs():
    if "d20" not in ENGINES:
        pytest.fail("engine d20 is not configured: run the tests with scripts/test")
    eng = TestEngine("d20", ENGINES["d20"])
    yield Images(eng)
    eng.cleanup()


class Remote:
    """A repository under test: its URL, the environment to reach it, and an independent reader."""

    def __init__(self, kind, tmp_path, engine_env):
        self.kind = kind
        if kind == "local":
            self.store = LocalStore(tmp_path / f"repo-{uuid.uuid4().hex[:6]}")
            self.env = dict(engine_env)
        else:
            server = S3Server("seaweed")
            self.store = S3Store(server)
            self.env = server.env(engine_env)
        self.url = self.store.url

    def keys(self):
        return self.store.keys()

    def refs(self):
        """{ref key: image id} read independently of dogestry."""
        return {k: self.store.get(k).decode().strip() for k in self.keys() if k.startswith("repositories/")}

    def leases(self):
        return [k for k in self.keys() if k.startswith("leases/")]


def ref_key(name_tag):
    name, tag = name_tag.rsplit(":", 1)
    return f"repositories/{name}/_tags/{tag}"


def invariants(remote, expected=(), ended=True):
    """verify and an independent read of every object; `expected`: {name:tag: image id} that
    must be in place. With ended (no process of ours still runs, none was killed): no lease
    and no temporary is left."""
    proc = run(["verify", remote.url], remote.env)
    assert proc.returncode == 0, f"verify: {proc.stdout.decode()}{proc.stderr.decode()}"
    check_repository(remote.store)
    refs = remote.refs()
    for name, image_id in dict(expected).items():
        assert refs.get(ref_key(name)) == image_id, f"{name}: a command wrote it and ended 0, now {refs.get(ref_key(name))}"
    if ended:
        assert remote.leases() == [], remote.leases()
        assert remote.store.temporaries() == [], remote.store.temporaries()
    return refs


def seeded(seeds):
    """The CI seeds, and SCALE times as many for a hunt by hand."""
    return list(seeds) + [1000 + i for i in range(len(seeds) * (SCALE - 1))]


# -- 1. a seeded random schedule of racing commands ----------------------------------------

class Schedule:
    """Workers running seeded random commands against R (and R2 for sync-objects), at once.

    Name spaces keep the end state checkable whatever the interleaving: `pin` refs (p, and
    the images the schedule starts from) are never removed; `keep` refs are written once
    each by one command (tag, update-ref, push of a fresh engine tag) and never removed, so
    every one whose command ended 0 must end in place; `churn` refs are tagged and untagged
    (one by one and by --keep-last) at random; the pushed a/b/c refs are untagged too.
    """

    def __init__(self, imgs, remote, mirror, seed, lock, steps, workdir):
        self.imgs, self.remote, self.mirror = imgs, remote, mirror
        self.rng_seed, self.lock, self.steps = seed, lock, steps
        self.u = imgs.u
        self.lockfile = os.path.join(workdir, "chaos.lock") if lock else None
        self.kept = {}  # name:tag -> image id, for keep refs whose command ended 0
        self.mirrored = {}  # the same, in the mirror
        self.results = []
        self.shares = []  # URLs printed by a share that ended 0: each must work at the end
        self.guard = threading.Lock()
        self.failures = []

    def locked(self, args):
        return args + ["--lockfile", self.lockfile] if self.lockfile else args

    def record(self, what, proc):
        with self.guard:
            self.results.append((what, proc.returncode))
        failure_is_one_line(proc, what)

    def must_succeed(self, what, proc):
        self.record(what, proc)
        assert proc.returncode == 0, f"{what}: {proc.stderr.decode()}"

    def step(self, rng, w, s):
        u, r, env = self.u, self.remote, self.remote.env
        ids, names = self.imgs.ids, self.imgs.names
        ops = ["push", "push", "tag", "tag", "untag", "keep-last", "gc", "gc", "update-ref", "sync", "pull"]
        if self.lock:
            ops.append("gc-mirror")  # beside sync-objects and (locked) update-ref in the mirror
        if r.kind != "local":
            ops.append("share")
        op = rng.choice(ops)
        if op == "push":
            which = rng.sample("abc", rng.randint(1, 2))
            # a fresh engine tag for one of them: a keep ref the push must leave in place
            fresh = f"t{u}/keep:push-w{w}s{s}"
            self.imgs.engine.api.tag(names[which[0]], f"t{u}/keep", f"push-w{w}s{s}")
            proc = run(self.locked(["push", r.url, fresh, *(names[k] for k in which)]), env)
            self.imgs.engine.api.remove_image(fresh)
            self.record(f"push {which}", proc)
            if proc.returncode == 0:
                self.kept[fresh] = ids[which[0]]
        elif op == "tag":
            k = rng.choice("abcp")
            target = f"t{u}/keep:tag-w{w}s{s}" if rng.random() < 0.5 else f"t{u}/churn{w}:s{s}"
            proc = run(["tag", r.url, ids[k], target], env)
            if k == "p":
                self.must_succeed("tag of the pinned image", proc)  # a ref reaches it: gc never removes it
            self.record(f"tag {k} {target}", proc)
            if proc.returncode == 0 and "keep:" in target:
                self.kept[target] = ids[k]
        elif op == "untag":
            victim = rng.choice([names[k] for k in "abc"] + [f"t{u}/churn{rng.randrange(4)}:s{rng.randrange(s + 1)}"])
            self.record(f"untag {victim}", run(self.locked(["untag", r.url, victim]), env))
        elif op == "keep-last":
            self.record("untag --keep-last", run(self.locked(["untag", r.url, "--keep-last", "1", f"t{u}/churn*"]), env))
        elif op == "gc":
            self.record("gc", run(self.locked(["gc", "--grace", "0", r.url]), env))
        elif op == "update-ref":
            # update-ref takes no lease: only a ref to an image another ref reaches is promised
            # complete beside a gc, unless both run under one lock (dogestry-repository(5)).
            k = rng.choice("abcp") if self.lock else "p"
            target = f"t{u}/keep:upd-w{w}s{s}"
            args = ["update-ref", r.url, target, ids[k]]
            if self.lock:
                proc = subprocess.run(["flock", "-w", str(TIMEOUT), self.lockfile, sys.executable, BIN, *args],
                                      env=env, capture_output=True, timeout=TIMEOUT + 10)
            else:
                proc = run(args, env)
            if k == "p":
                self.must_succeed("update-ref to the pinned image", proc)
            self.record(f"update-ref {k}", proc)
            if proc.returncode == 0:
                self.kept[target] = ids[k]
        elif op == "sync":
            k = rng.choice("abcp")
            proc = run(["sync-objects", "--image", ids[k], r.url, self.mirror.url], env)
            if k == "p":
                self.must_succeed("sync-objects of the pinned image", proc)
            self.record(f"sync {k}", proc)
            if proc.returncode == 0:
                target = f"t{u}/keep:sync-w{w}s{s}"
                args = ["update-ref", self.mirror.url, target, ids[k]]
                if self.lock:
                    # a gc of the mirror (under the lock) may have taken the image since the sync
                    # ended: update-ref then refuses it, in one line
                    proc = subprocess.run(["flock", "-w", str(TIMEOUT), self.lockfile, sys.executable, BIN, *args],
                                          env=self.mirror.env, capture_output=True, timeout=TIMEOUT + 10)
                    self.record("update-ref in the mirror", proc)
                else:
                    proc = run(args, self.mirror.env)
                    self.must_succeed("update-ref in the mirror", proc)
                if proc.returncode == 0:
                    self.mirrored[target] = ids[k]
        elif op == "gc-mirror":
            self.record("gc-mirror", run(self.locked(["gc", "--grace", "0", self.mirror.url]), self.mirror.env))
        elif op == "share":
            k = rng.choice("abcp")
            proc = run(["share", r.url, ids[k], "--expires", "1h"], env)
            if k == "p":
                self.must_succeed("share of the pinned image", proc)
            self.record(f"share {k}", proc)
            if proc.returncode == 0:
                self.shares.append((proc.stdout.decode().strip(), ids[k]))
        elif op == "pull":
            with self.imgs.pull_lock:  # one pull at a time: each removes p from the engine first
                self.imgs.engine.rmi(names["p"])
                self.must_succeed("pull of the pinned image",
                                  run(self.locked(["pull", r.url, names["p"]]), env))
                assert self.imgs.engine.inspect(names["p"])["Id"] == ids["p"]

    def worker(self, w):
        rng = random.Random(f"{self.rng_seed}/{w}")
        try:
            for s in range(self.steps):
                self.step(rng, w, s)
        except BaseException as err:  # noqa: BLE001  (reported by the test thread)
            self.failures.append(f"worker {w}: {err!r}"[:2000])

    def run(self, workers=4):
        threads = [threading.Thread(target=self.worker, args=(w,)) for w in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not self.failures, self.failures


SCHEDULES = [("local", 11, True), ("local", 12, False), ("seaweed", 13, False), ("seaweed", 14, True)]


@pytest.mark.parametrize("kind,seed,lock", [(k, s, lk) for k, s0, lk in SCHEDULES for s in seeded([s0])])
def test_a_random_schedule_of_racing_commands_keeps_every_invariant(imgs, tmp_path, kind, seed, lock):
    env = imgs.engine.env()
    r, mirror = Remote(kind, tmp_path, env), Remote(kind, tmp_path, env)
    # Start from the images pushed and p pinned.
    assert run(["push", r.url, *imgs.names.values()], r.env).returncode == 0
    assert run(["sync-objects", "--image", imgs.ids["p"], r.url, mirror.url], r.env).returncode == 0
    assert run(["update-ref", mirror.url, imgs.names["p"], imgs.ids["p"]], r.env).returncode == 0
    sched = Schedule(imgs, r, mirror, seed, lock, steps=6 * SCALE, workdir=str(tmp_path))
    sched.run(workers=4)
    refs = invariants(r, {imgs.names["p"]: imgs.ids["p"], **sched.kept})
    invariants(mirror, {imgs.names["p"]: imgs.ids["p"], **sched.mirrored})
    # Quiet now: one more gc removes everything unreachable, and what is left is whole.
    assert run(["gc", "--grace", "0", r.url], r.env).returncode == 0
    assert invariants(r, {imgs.names["p"]: imgs.ids["p"], **sched.kept}) == refs
    proc = run(["verify", "--all", r.url], r.env)
    assert proc.returncode == 0, proc.stdout.decode()
    for url, image_id in sched.shares:  # gc keeps what an unexpired share index hands out
        proc = run(["verify", url, image_id], env)
        assert proc.returncode == 0, f"a share that ended 0: {proc.stdout.decode()}{proc.stderr.decode()}"
    ops = sorted({what.split()[0] for what, _ in sched.results} | ({"gc-mirror"} & {w for w, _ in sched.results}))
    print(f"seed {seed} {kind} lock={lock}: {len(sched.results)} commands, "
          f"{sum(rc == 0 for _, rc in sched.results)} ended 0, ops {ops}, keep refs {len(sched.kept)}, "
          f"mirrored {len(sched.mirrored)}, shares {len(sched.shares)}")


# -- 2. kill -9 anywhere, while another process pushes -------------------------------------

# Storage operations to die at (dogestry/backends/crashpoint.py), per command; a point the
# run never reaches lets it end normally. Half the cases are killed after a seeded delay instead.
KILL_POINTS = {
    "tag": ["put:leases/*:1", "before-put:repositories/*", "put:repositories/*", "before-delete:leases/*"],
    "untag": ["before-delete:repositories/*", "delete:repositories/*"],
    "keep-last": ["before-delete:repositories/*:1", "delete:repositories/*:1", "delete:repositories/*:2"],
    "update-ref": ["before-put:repositories/*", "put:repositories/*"],
    "sync-objects": ["write:layers/sha256/*:1", "before-commit:layers/sha256/*:1", "commit:layers/sha256/*:1",
                     "put_file:layers/sha256/*:1", "put:layers/sha256/*.json:1", "before-put:configs/*",
                     "put:configs/*", "before-put:images/*"],
    "share": ["put:leases/*:1", "before-put:shares/*", "put:shares/*"],
    "gc": ["put:leases/gc-*", "before-delete:images/*", "delete:configs/*:1", "delete:layers/sha256/*.json:1",
           "delete:layers/sha256/*:2", "before-delete:leases/*"],
}


def killed(args, env, rng):
    """Run args and kill -9 it at a seeded storage operation or after a seeded delay; the
    CompletedProcess (returncode -9 when the kill came first) and how it was killed."""
    command = "keep-last" if "--keep-last" in args else args[0]
    if rng.random() < 0.5:
        how = rng.choice(KILL_POINTS[command])
        return run(args, dict(env, DOGESTRY_TEST_CRASH=how)), how
    delay = rng.uniform(0.05, 1.5)
    # A TMPDIR of its own, removed after: Python's first tempfile.gettempdir() probes the
    # directory with a file of 8 random characters (written, then unlinked), and a kill -9
    # between the two leaves that file behind (seen once as "ix44r_98" in the suite's TMPDIR).
    private_tmp = tempfile.mkdtemp(prefix="dogestry-chaos-killed-")
    proc = subprocess.Popen([sys.executable, BIN, *args], env=dict(env, TMPDIR=private_tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"dogestry {' '.join(args)} did not end within {TIMEOUT}s of its kill")
    finally:
        shutil.rmtree(private_tmp, ignore_errors=True)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), f"after {delay:.2f}s"


def kill_case(imgs, r, mirror, rng, n):
    """One case: a push in another process; one command killed; invariants; then a retry."""
    u, ids, names, env = imgs.u, imgs.ids, imgs.names, r.env
    commands = ["tag", "untag", "keep-last", "update-ref", "sync-objects", "gc"] + (["share"] * (r.kind != "local"))
    command = rng.choice(commands)
    k = rng.choice("abc")
    churn = f"t{u}/churn:c{n}"
    # What the command works on, and something for gc to remove: the image the push pushes
    # is untagged first, so gc and the push race over its objects.
    assert run(["tag", r.url, ids[k], churn], env).returncode == 0
    assert run(["tag", r.url, ids[k], f"t{u}/churn:d{n}"], env).returncode == 0
    pushed = rng.choice("abc")
    untagged = run(["untag", r.url, names[pushed]], env)
    failure_is_one_line(untagged, "untag before the case")
    target = f"t{u}/keep:{command}-{n}"
    args = {"tag": ["tag", r.url, ids[k], target],
            "untag": ["untag", r.url, churn],
            "keep-last": ["untag", r.url, "--keep-last", "1", f"t{u}/churn"],
            "update-ref": ["update-ref", r.url, target, ids["p"]],
            "sync-objects": ["sync-objects", "--image", ids[k], r.url, mirror.url],
            "share": ["share", r.url, ids[k], "--expires", "1h"],
            "gc": ["gc", "--grace", "0", r.url]}[command]
    push = {}
    pusher = threading.Thread(target=lambda: push.update(proc=run(["push", r.url, names[pushed]], env)))
    pusher.start()
    proc, how = killed(args, env, rng)
    pusher.join()
    what = f"case {n}: {' '.join(args)} killed at {how}"
    assert push["proc"].returncode == 0, f"{what}: the push beside it: {push['proc'].stderr.decode()}"
    if proc.returncode != -signal.SIGKILL:
        failure_is_one_line(proc, what)
    expected = {names[pushed]: ids[pushed], names["p"]: ids["p"]}
    refs = invariants(r, expected, ended=False)
    if command in ("tag", "update-ref"):
        assert refs.get(ref_key(target)) in (None, ids[k] if command == "tag" else ids["p"]), what
    # The retry succeeds; an untag whose ref the killed run already removed says so instead.
    if command == "untag" and ref_key(churn) not in refs:
        retry = run(args, env)
        assert retry.returncode == 1 and b"not found" in retry.stderr, (what, retry.stderr)
    else:
        retry = run(args, env)
        assert retry.returncode == 0, f"{what}: the retry: {retry.stderr.decode()}"
    if command in ("tag", "update-ref"):
        expected[target] = ids[k] if command == "tag" else ids["p"]
    if command == "sync-objects":
        invariants(mirror, ended=False)
        assert run(["update-ref", mirror.url, target, ids[k]], mirror.env).returncode == 0
    if command == "share":
        shared = run(["verify", retry.stdout.decode().strip(), ids[k]], env)
        assert shared.returncode == 0, (what, shared.stdout, shared.stderr)
    invariants(r, expected, ended=False)
    return proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("kind,seed", [(k, s) for k, s0 in (("local", 21), ("seaweed", 22)) for s in seeded([s0])])
def test_commands_killed_anywhere_beside_a_push_leave_every_invariant(imgs, tmp_path, kind, seed):
    env = imgs.engine.env()
    r, mirror = Remote(kind, tmp_path, env), Remote(kind, tmp_path, env)
    assert run(["push", r.url, *imgs.names.values()], r.env).returncode == 0
    rng = random.Random(seed)
    kills = sum(kill_case(imgs, r, mirror, rng, n) for n in range(6 * SCALE))
    # Leftovers of the killed runs (leases of dead processes, temporaries) stop nothing: the
    # next gc collects, and what stays is whole.
    assert run(["gc", "--grace", "0", r.url], r.env).returncode == 0
    invariants(r, {imgs.names["p"]: imgs.ids["p"]}, ended=False)
    assert kills >= SCALE, f"only {kills} of the runs were killed"
    print(f"seed {seed} {kind}: {6 * SCALE} cases, {kills} killed")


# -- writers that held no lease: sync-objects into a mirror, share --------------------------

def test_gc_of_a_mirror_keeps_what_a_running_sync_objects_wrote(imgs, tmp_path):
    """sync-objects is a writer of the destination: held after it published the layers and
    before the config and image record, a `gc --grace 0` of the destination must keep them,
    or the sync ends 0 with an image record whose layers are gone."""
    from test_operations import Paused

    env = imgs.engine.env()
    for kind in ("local", "seaweed"):
        r, mirror = Remote(kind, tmp_path, env), Remote(kind, tmp_path, env)
        assert run(["push", r.url, imgs.names["b"], imgs.names["p"]], r.env).returncode == 0
        assert run(["sync-objects", "--image", imgs.ids["p"], r.url, mirror.url], r.env).returncode == 0
        sync = Paused(r, tmp_path, "put:configs/*:1", "sync-objects", mirror.url, "--image", imgs.ids["b"])
        assert sync.reached(), sync.finish()
        gc = run(["gc", "--grace", "0", mirror.url], mirror.env)
        assert gc.returncode == 0, gc.stderr
        rc, _, err = sync.finish()
        assert rc == 0, err
        assert run(["update-ref", mirror.url, imgs.names["b"], imgs.ids["b"]], mirror.env).returncode == 0
        invariants(mirror, {imgs.names["b"]: imgs.ids["b"]})


def test_a_share_written_beside_a_gc_hands_out_only_objects_that_stay(imgs, tmp_path):
    """share of an image no ref reaches (by id), held right before it writes its index while
    a whole `gc --grace 0` runs: the URL it prints must work, so the gc keeps the image or
    the share fails with one line."""
    from test_operations import Paused

    env = imgs.engine.env()
    r = Remote("seaweed", tmp_path, env)
    assert run(["push", r.url, imgs.names["c"], imgs.names["p"]], r.env).returncode == 0
    assert run(["untag", r.url, imgs.names["c"]], r.env).returncode == 0
    share = Paused(r, tmp_path, "put:shares/*:1", "share", imgs.ids["c"], "--expires", "1h")
    assert share.reached(), share.finish()
    gc = run(["gc", "--grace", "0", r.url], r.env)
    assert gc.returncode == 0, gc.stderr
    rc, out, err = share.finish()
    if rc == 0:
        shared = run(["verify", out.strip(), imgs.ids["c"]], env)
        assert shared.returncode == 0, f"share ended 0 but its URL fails: {shared.stdout.decode()}{shared.stderr.decode()}"
        # and a gc now keeps what the index hands out
        assert run(["gc", "--grace", "0", r.url], r.env).returncode == 0
        assert run(["verify", out.strip(), imgs.ids["c"]], env).returncode == 0
    else:
        failure_is_one_line(subprocess.CompletedProcess([], rc, b"", err.encode()), "share")
    invariants(r, {imgs.names["p"]: imgs.ids["p"]}, ended=True)


# -- 5. two installs of different codecs writing one repository at once ---------------------

@pytest.fixture(scope="module")
def codec_configs(tmp_path_factory):
    where = tmp_path_factory.mktemp("codecs")
    (where / "lz4.cfg").write_text("# the default codec: lz4\n")
    (where / "none.cfg").write_text("[compressor]\n  lz4 = false\n")
    return {"lz4": str(where / "lz4.cfg"), "none": str(where / "none.cfg")}


def _read_all(r, image_id, env):
    """build-load-tar of the image, every layer read and verified (to /dev/null)."""
    with open(os.devnull, "wb") as sink:
        proc = subprocess.run([sys.executable, BIN, "build-load-tar", r.url, image_id], env=env, stdout=sink,
                              stderr=subprocess.PIPE, timeout=TIMEOUT)
    return proc


@pytest.mark.parametrize("kind,seed", [(k, s) for k, s0 in (("local", 51), ("seaweed", 52)) for s in seeded([s0])])
def test_two_codecs_pushing_shared_layers_at_once_leave_every_layer_readable(imgs, codec_configs, tmp_path, kind,
                                                                             seed):
    rng = random.Random(seed)
    env = imgs.engine.env()
    for round_ in range(2):
        r = Remote(kind, tmp_path, env)
        # Each install pushes a seeded pick of images; the picks overlap, and every pick
        # shares the base layer, so the two race over layers in both codecs.
        picks = {codec: rng.sample("abcp", 3) for codec in ("lz4", "none")}
        procs = [subprocess.Popen([sys.executable, BIN, "push", r.url, *(imgs.names[k] for k in pick)],
                                  env=dict(r.env, DOGESTRY_CONFIG=codec_configs[codec]),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for codec, pick in sorted(picks.items(), key=lambda _: rng.random())]
        # Readers meanwhile: whatever they find under a ref reads whole, whichever codec won.
        while any(p.poll() is None for p in procs):
            k = rng.choice("abcp")
            proc = _read_all(r, imgs.names[k], dict(r.env, DOGESTRY_CONFIG=codec_configs[rng.choice(["lz4", "none"])]))
            failure_is_one_line(proc, f"build-load-tar {k} during the pushes")
            # (before a push wrote the ref, or the directory: not there yet)
            assert proc.returncode == 0 or b"not found" in proc.stderr or b"no repository" in proc.stderr, proc.stderr
        for p in procs:
            _, err = p.communicate(timeout=TIMEOUT)
            assert p.returncode == 0, err.decode()
        pushed = {k for pick in picks.values() for k in pick}
        invariants(r, {imgs.names[k]: imgs.ids[k] for k in pushed})
        for k in sorted(pushed):
            proc = _read_all(r, imgs.ids[k], r.env)
            assert proc.returncode == 0, proc.stderr
        codecs = {json.loads(r.store.get(key))["codec"] for key in r.keys()
                  if key.startswith("layers/") and key.endswith(".json")}
        print(f"seed {seed} {kind} round {round_}: {picks}, codecs stored {sorted(codecs)}")
        if "p" in pushed:
            with imgs.pull_lock:
                imgs.engine.rmi(imgs.names["p"])
                assert run(["pull", r.url, imgs.names["p"]], r.env).returncode == 0
                assert imgs.engine.run(imgs.names["p"], "cat", "/p.txt") == f"p {imgs.u}\n"


# -- 3. full disks -----------------------------------------------------------------------

def fill(mnt, leave=0):
    """Fill the tmpfs at mnt until `leave` bytes (about) stay free; returns the filler paths."""
    paths = [os.path.join(mnt, "fill"), os.path.join(mnt, "fill-small")]
    subprocess.run(["dd", "if=/dev/zero", f"of={paths[0]}", "bs=64k"], capture_output=True)
    subprocess.run(["dd", "if=/dev/zero", f"of={paths[1]}", "bs=1k"], capture_output=True)
    subprocess.run(["dd", "if=/dev/zero", f"of={paths[1]}-b", "bs=1", "count=100000"], capture_output=True)
    paths.append(paths[1] + "-b")
    if leave:
        with open(paths[0], "r+b") as f:
            f.truncate(max(0, os.path.getsize(paths[0]) - leave))
    return paths


def test_update_ref_sync_objects_and_gc_on_a_full_disk(imgs, tmp_path):
    """A full remote: update-ref fails in one line and writes no ref; sync-objects into a
    mirror too small for its layers fails in one line leaving no partial object, lease or
    temporary; gc on a disk full to the last byte cannot write its lease (one line, nothing
    removed), and with one block free deletes what it should: deleting needs no space."""
    from test_hostile_fourth import tmpfs

    env = imgs.engine.env()
    src = Remote("local", tmp_path, env)
    assert run(["push", src.url, imgs.names["a"], imgs.names["c"], imgs.names["p"]], env).returncode == 0
    with tmpfs("8m") as mnt:
        r = Remote("local", tmp_path, env)
        r.store = LocalStore(os.path.join(mnt, "r"))
        r.url = r.store.url
        subprocess.run(["cp", "-a", src.store.root, r.store.root], check=True)
        assert run(["untag", r.url, imgs.names["c"]], env).returncode == 0
        fillers = fill(mnt)
        before = sorted(r.keys())
        err = run(["update-ref", r.url, f"t{imgs.u}/full:1", imgs.ids["a"]], env)
        failure_is_one_line(err, "update-ref on a full disk")
        assert err.returncode == 1 and b"no space left" in err.stderr, err.stderr
        gc = run(["gc", "--grace", "0", r.url], env)
        failure_is_one_line(gc, "gc on a full disk")
        assert sorted(r.keys()) == before
        invariants(r, {imgs.names["a"]: imgs.ids["a"], imgs.names["p"]: imgs.ids["p"]})
        with open(fillers[0], "r+b") as f:  # 64 KB: room for a lease, and no more
            f.truncate(os.path.getsize(fillers[0]) - 65536)
        gc = run(["gc", "--grace", "0", r.url], env)
        assert gc.returncode == 0 and b"removed 0 object" not in gc.stdout, gc
        invariants(r, {imgs.names["a"]: imgs.ids["a"], imgs.names["p"]: imgs.ids["p"]})
        assert run(["update-ref", r.url, f"t{imgs.u}/full:1", imgs.ids["a"]], env).returncode == 0
    with tmpfs("256k") as mnt:
        mirror = Remote("local", tmp_path, env)
        mirror.store = LocalStore(os.path.join(mnt, "m"))
        mirror.url = mirror.store.url
        proc = run(["sync-objects", "--image", imgs.ids["p"], src.url, mirror.url], env)
        failure_is_one_line(proc, "sync-objects into a full mirror")
        assert proc.returncode == 1 and b"no space left" in proc.stderr, proc.stderr
        # nothing partial under a final name, no lease, no temporary
        check_repository(mirror.store)
        assert mirror.leases() == [] and mirror.store.temporaries() == []


def test_a_push_racing_a_gc_on_a_nearly_full_disk(imgs, tmp_path):
    """A push racing a `gc --grace 0` on a disk with 150 KB left: of an image it must store
    (300 KB: it needs what the gc frees), and of an untagged image whose objects are all there
    (it needs room only for its lease and ref, while the gc deletes those objects). Each
    ends whole or fails in one line, and the repository keeps every invariant."""
    from test_hostile_fourth import tmpfs

    env = imgs.engine.env()
    src = Remote("local", tmp_path, env)
    assert run(["push", src.url, imgs.names["a"], imgs.names["c"], imgs.names["p"]], env).returncode == 0
    for attempt, (untagged, pushed) in enumerate([("c", "p"), ("p", "p"), ("c", "p"), ("p", "p")]):
        with tmpfs("8m") as mnt:
            r = Remote("local", tmp_path, env)
            r.store = LocalStore(os.path.join(mnt, "r"))
            r.url = r.store.url
            subprocess.run(["cp", "-a", src.store.root, r.store.root], check=True)
            assert run(["untag", r.url, imgs.names[untagged]], env).returncode == 0
            if untagged != "p":
                assert run(["untag", r.url, imgs.names["p"]], env).returncode == 0
                assert run(["gc", "--grace", "0", r.url], env).returncode == 0
            fill(mnt, leave=150_000)
            commands = [["push", r.url, imgs.names[pushed]], ["gc", "--grace", "0", r.url]]
            procs = [subprocess.Popen([sys.executable, BIN, *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE) for args in commands[::1 - 2 * (attempt % 2)]]
            results = []
            for p in procs:
                out, err = p.communicate(timeout=TIMEOUT)
                results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
                failure_is_one_line(results[-1], " ".join(p.args[2:4]))
            expected = {imgs.names["a"]: imgs.ids["a"]}
            if any(res.returncode == 0 and "push" in res.args for res in results):
                expected[imgs.names[pushed]] = imgs.ids[pushed]
            refs = invariants(r, expected)
            assert ref_key(imgs.names[pushed]) not in refs or imgs.names[pushed] in expected
            print(f"attempt {attempt}: " + ", ".join(f"{res.args[2]} exit {res.returncode}" for res in results))


def test_commands_with_their_temp_dir_on_a_full_disk(imgs, tmp_path):
    """TMPDIR and DOGESTRY_TEMP_DIR on a 64 KB tmpfs, full: tag, untag, update-ref, gc and
    sync-objects into S3 need no spool there (they succeed); a push to S3 from d20 (which spools
    layers) fails in one line naming the spool, beside a gc, and leaves every invariant."""
    from test_hostile_fourth import tmpfs

    env = imgs.engine.env()
    src = Remote("local", tmp_path, env)
    assert run(["push", src.url, imgs.names["a"], imgs.names["p"]], env).returncode == 0
    r = Remote("seaweed", tmp_path, env)
    with tmpfs("64k") as tmp:
        fill(tmp)
        tenv = dict(r.env, TMPDIR=tmp, DOGESTRY_TEMP_DIR=tmp)
        for args in (["sync-objects", "--image", imgs.ids["a"], src.url, r.url],
                     ["update-ref", r.url, imgs.names["a"], imgs.ids["a"]],
                     ["tag", r.url, imgs.ids["a"], f"t{imgs.u}/t:1"],
                     ["untag", r.url, imgs.names["a"]],
                     ["gc", "--grace", "0", r.url]):
            proc = run(args, tenv)
            assert proc.returncode == 0, f"{args[0]}: {proc.stderr.decode()}"
        procs = [subprocess.Popen([sys.executable, BIN, *args], env=tenv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for args in (["push", r.url, imgs.names["c"]], ["gc", "--grace", "0", r.url])]
        results = [(p, *p.communicate(timeout=TIMEOUT)) for p in procs]
        push, gc = results
        failure_is_one_line(subprocess.CompletedProcess([], push[0].returncode, push[1], push[2]), "push")
        assert gc[0].returncode == 0, gc[2]
        assert push[0].returncode == 1 and b"no space left" in push[2], push[2]
        assert os.listdir(tmp) == ["fill", "fill-small", "fill-small-b"] or sorted(os.listdir(tmp)) == sorted(
            ["fill", "fill-small", "fill-small-b"]), os.listdir(tmp)
    invariants(r, {f"t{imgs.u}/t:1": imgs.ids["a"]})


def test_an_s3_answer_whose_body_stalls_after_a_write_is_one_line(imgs, tmp_path):
    """What the full temp dir above first showed (SeaweedFS answered one PUT late): a store
    that sends an answer's headers to a write, then stalls in its body. botocore reads such a
    body outside its own error translation, so urllib3's ReadTimeoutError came through as an
    internal error; it is a stall like any other: retried, then one line within the stall
    timeout."""
    import http.server

    from conftest import http_peer

    class Stalling(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _missing(self):
            body = b"<Error><Code>NoSuchKey</Code><Message>no</Message></Error>"
            self.send_response(404)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = _missing

        def do_PUT(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"<")
            self.wfile.flush()
            time.sleep(6)

    env = dict(imgs.engine.env(), AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s", DOGESTRY_STALL_TIMEOUT="4")
    src = Remote("local", tmp_path, env)
    assert run(["push", src.url, imgs.names["a"]], env).returncode == 0
    with http_peer(Stalling) as base:
        started = time.monotonic()
        proc = run(["sync-objects", "--image", imgs.ids["a"], src.url, f"s3://bucket/p/?endpoint={base}"], env,
                   timeout=120)
        elapsed = time.monotonic() - started
    # (lines before the last are the stall notices stderr gives while it waits)
    err = proc.stderr.decode().splitlines()
    assert proc.returncode == 1 and "internal error" not in proc.stderr.decode(), proc.stderr
    assert err[-1].startswith("dogestry: ") and "no answer from S3" in err[-1] and "gave up" in err[-1], err
    assert all("retrying" in line for line in err[:-1]), err
    assert elapsed < 60, elapsed


# -- 4. clocks ------------------------------------------------------------------------------

def _stamp(path, seconds):
    """Set a file's atime and mtime to now + seconds (as `touch -d` would)."""
    when = time.time() + seconds
    os.utime(path, (when, when))


@pytest.mark.parametrize("skew", [-600, 600, -10 * 365 * 86400, 10 * 365 * 86400])
def test_a_running_push_whose_lease_is_stamped_by_a_skewed_clock_ends_whole(imgs, tmp_path, skew):
    """A push held before its image record, its lease stamped `skew` seconds off (a writer
    whose clock is 10 minutes, or 10 years, behind or ahead, on a store that takes the
    writer's clock), while `gc --grace 1s` runs: behind, the lease looks dead and gc may take
    what the push wrote; ahead, it looks live. Either way the push ends 0 with its image
    whole (it checks before its ref and stores again what is gone) and nothing a ref reaches
    is removed."""
    from test_operations import Paused

    env = imgs.engine.env()
    r = Remote("local", tmp_path, env)
    assert run(["push", r.url, imgs.names["a"]], env).returncode == 0
    before = set(r.keys())
    push = Paused(r, tmp_path, "put:images/*:1", "push", imgs.names["c"])
    assert push.reached(), push.finish()
    assert len(r.leases()) == 1, r.leases()
    # The writer's clock stamps all it wrote: its lease and its new objects.
    for key in set(r.keys()) - before:
        _stamp(os.path.join(r.store.root, key), skew)
    time.sleep(1.5)  # older than the grace, by the store's clock, for everything the push wrote
    gc = run(["gc", "--grace", "1s", r.url], env)
    assert gc.returncode == 0, gc.stderr
    layers_after_gc = {k for k in r.keys() if k.startswith("layers/")}
    rc, _, err = push.finish()
    assert rc == 0, err
    invariants(r, {imgs.names["a"]: imgs.ids["a"], imgs.names["c"]: imgs.ids["c"]})
    if skew > 0:
        # A lease stamped ahead is live: gc kept everything the push had written.
        assert {k for k in r.keys() if k.startswith("layers/")} == layers_after_gc
    print(f"skew {skew}: gc said {gc.stdout.decode().strip()}")


def test_objects_stamped_far_in_the_past_or_future_and_a_one_second_grace(imgs, tmp_path):
    """Objects whose mtimes are 30 years past or 80 years ahead (touch -d), reached by a ref
    or not, and `gc --grace 1s`: every ref stays whole; unreachable objects from the past go;
    those stamped in the future are younger than any grace on this clock and stay until a
    gc's clock passes them (what the protocol promises: ages are differences of the store's
    timestamps)."""
    env = imgs.engine.env()
    r = Remote("local", tmp_path, env)
    assert run(["push", r.url, imgs.names["b"], imgs.names["c"], imgs.names["p"]], env).returncode == 0
    assert run(["untag", r.url, imgs.names["c"], imgs.names["p"]], env).returncode == 0
    root = r.store.root
    keys = sorted(r.keys())
    only = {name: {k for k in keys if imgs.ids[name][7:] in k} for name in "bcp"}
    for i, key in enumerate(keys):
        if key.startswith(("layers/", "images/", "configs/", "repositories/")):
            past = (i % 2 == 0) if not any(key in only[n] for n in "cp") else key in only["c"]
            _stamp(os.path.join(root, key), -30 * 365 * 86400 if past else 80 * 365 * 86400)
    gc = run(["gc", "--grace", "1s", r.url], env)
    assert gc.returncode == 0, gc.stderr
    left = set(r.keys())
    invariants(r, {imgs.names["b"]: imgs.ids["b"]})
    assert not only["c"] & left, "the unreachable image stamped in the past stays"
    assert only["p"] <= left, "objects stamped in the future were removed"
    verify_all = run(["verify", "--all", r.url], env)
    assert verify_all.returncode == 0, verify_all.stdout


def test_retention_spares_a_tag_a_push_moved_after_it_listed(imgs, tmp_path):
    """`untag --keep-last 1` lists the tags, then reads the doomed ones; held there, a push
    moves a doomed tag to another image (now the newest). Deleting it would lose the push's
    ref on a decision taken on its old write: retention lists again right before deleting
    and spares it."""
    from test_operations import Paused

    env = imgs.engine.env()
    u = imgs.u
    for kind in ("local", "seaweed"):
        r = Remote(kind, tmp_path, env)
        assert run(["push", r.url, imgs.names["a"], imgs.names["c"]], r.env).returncode == 0
        assert run(["tag", r.url, imgs.ids["a"], f"t{u}/ret:old"], r.env).returncode == 0
        time.sleep(1.1)  # S3 keeps whole seconds
        assert run(["tag", r.url, imgs.ids["a"], f"t{u}/ret:new"], r.env).returncode == 0
        retention = Paused(r, tmp_path, "get:repositories/*:1", "untag", "--keep-last", "1", f"t{u}/ret")
        assert retention.reached(), retention.finish()
        time.sleep(1.1)
        assert run(["tag", r.url, imgs.ids["c"], f"t{u}/ret:old"], r.env).returncode == 0
        rc, out, err = retention.finish()
        assert rc == 0, err
        assert f"t{u}/ret:old" not in out, out
        invariants(r, {f"t{u}/ret:old": imgs.ids["c"], f"t{u}/ret:new": imgs.ids["a"], imgs.names["c"]: imgs.ids["c"]})
