"""Reliability promises (RELIABILITY.md), each against the real thing: real engines, SeaweedFS, files.

- crash safety: a push killed with SIGKILL at chosen storage operations
  (dogestry/backends/crashpoint.py), with the codec switched between attempts; a killed pull;
- corruption on the remote or in transit is never loaded;
- faults on the wire (tests/faultproxy.py) end in success or a clear error within a bound;
- concurrency: pushes sharing layers, one image in two codecs, push and pull of one tag,
  five parallel pulls;
- resource bounds: peak RSS of a 2 GB image, temporary disk, temporaries after success,
  failure and SIGINT;
- secrets never appear in any output, --debug tracebacks included.

Every repository a test touches is checked byte for byte by check_repository, which reads
the stored objects itself (it does not trust dogestry's own verification).
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import uuid

import lz4.frame
import pytest

from conftest import BIN, ENGINES, S3_BUCKET, S3Server, TestEngine, dogestry
from faultproxy import Fault, FaultProxy

KILLED = -signal.SIGKILL
BIG = 12 << 20  # the random layer: more than one 8 MiB S3 part, several 1 MiB writes


# -- the repository, read independently of dogestry ------------------------------------

class LocalStore:
    """A repository directory: its visible keys, and the temporaries beside them."""

    def __init__(self, root):
        self.root = str(root)
        self.url = self.root

    def keys(self):
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = os.path.relpath(dirpath, self.root)
            out += [name if rel == "." else f"{rel}/{name}" for name in filenames if not name.startswith(".")]
        return sorted(out)

    def get(self, key):
        with open(os.path.join(self.root, key), "rb") as f:
            return f.read()

    def chunks(self, key):
        with open(os.path.join(self.root, key), "rb") as f:
            while data := f.read(1 << 20):
                yield data

    def stamp(self, key):
        st = os.stat(os.path.join(self.root, key))
        return st.st_ino, st.st_mtime_ns

    def temporaries(self):
        """Every file with a dot-name in its path: spools (.spool/), temporaries beside keys (.KEY.tmp-*)."""
        found = []
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), self.root)
                if any(part.startswith(".") for part in rel.split(os.sep)):
                    found.append(rel)
        return sorted(found)

    def temp_bytes(self):
        return sum(os.path.getsize(os.path.join(self.root, p)) for p in self.temporaries()
                   if os.path.exists(os.path.join(self.root, p)))


class S3Store:
    """A repository under a prefix of the test bucket; temporaries are unfinished multipart uploads."""

    def __init__(self, server, prefix=None, endpoint=None):
        self.server = server
        self.prefix = prefix or f"rel-{uuid.uuid4().hex[:12]}"
        self.client = server.client()
        self.url = f"s3://{S3_BUCKET}/{self.prefix}/?endpoint={endpoint or server.endpoint}"

    def keys(self):
        return self.server.keys(self.prefix)

    def get(self, key):
        return self.client.get_object(Bucket=S3_BUCKET, Key=f"{self.prefix}/{key}")["Body"].read()

    def chunks(self, key):
        body = self.client.get_object(Bucket=S3_BUCKET, Key=f"{self.prefix}/{key}")["Body"]
        yield from body.iter_chunks(1 << 20)

    def stamp(self, key):
        head = self.client.head_object(Bucket=S3_BUCKET, Key=f"{self.prefix}/{key}")
        return head["ETag"], head["LastModified"]

    def temporaries(self):
        uploads = self.client.list_multipart_uploads(Bucket=S3_BUCKET, Prefix=f"{self.prefix}/").get("Uploads") or []
        return sorted(u["Key"][len(self.prefix) + 1:] + " " + u["UploadId"] for u in uploads)


def _sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _check_layer(store, key, desc, verified):
    if (key, desc["digest"]) in verified:
        return
    # Streamed, so a 2 GB layer costs the test no memory (and no forked child inherits it).
    assert desc["codec"] in ("lz4", "none"), f"{key}: unknown codec {desc['codec']}"
    stored, raw = hashlib.sha256(), hashlib.sha256()
    size = raw_size = 0
    decoder = lz4.frame.LZ4FrameDecompressor() if desc["codec"] == "lz4" else None
    for data in store.chunks(key):
        stored.update(data)
        size += len(data)
        while data or (decoder is not None and not decoder.needs_input and not decoder.eof):
            out = decoder.decompress(data, max_length=1 << 20) if decoder is not None else data
            data = b""
            raw.update(out)
            raw_size += len(out)
            if decoder is None or not out:
                break
    assert "sha256:" + stored.hexdigest() == desc["digest"] and size == desc["size"], \
        f"{key}: the stored bytes are not the ones described ({desc['codec']} {desc['size']} bytes)"
    assert decoder is None or decoder.eof, f"{key}: truncated lz4 frame"
    assert "sha256:" + raw.hexdigest() == desc["diff_id"] == f"sha256:{key.rsplit('/', 1)[1]}", \
        f"{key}: content is not layer {desc['diff_id']}"
    assert raw_size == desc["uncompressed_size"], f"{key}: wrong uncompressed size"
    verified.add((key, desc["digest"]))


def check_repository(store):
    """The crash-safety invariants, by reading every object: each descriptor describes the
    bytes stored under its key; each image record has its config and every layer it names,
    described as stored; each ref names a whole image. Returns the keys."""
    keys = set(store.keys())
    verified = set()
    for key in sorted(keys):
        if key.startswith("layers/sha256/") and key.endswith(".json"):
            assert key[:-5] in keys, f"descriptor {key} was published without its data"
            _check_layer(store, key[:-5], json.loads(store.get(key)), verified)
    for key in sorted(keys):
        if key.startswith("images/sha256/"):
            image_id = "sha256:" + key.rsplit("/", 1)[1][:-5]
            record = json.loads(store.get(key))
            assert record["id"] == image_id, key
            config_key = f"configs/sha256/{image_id[7:]}"
            assert config_key in keys, f"image record {key} was published without its config"
            assert _sha(store.get(config_key)) == image_id and len(store.get(config_key)) == record["config"]["size"]
            for layer in record["layers"]:
                data_key = f"layers/sha256/{layer['diff_id'][7:]}"
                assert data_key in keys and data_key + ".json" in keys, f"{key} names {data_key}, which is missing"
                _check_layer(store, data_key, layer, verified)
    for key in sorted(keys):
        if key.startswith("repositories/"):
            target = store.get(key).decode().strip()
            assert f"images/sha256/{target[7:]}.json" in keys, f"ref {key} points at {target}, which is not whole"
    return keys


def ref_target(store, name):
    """The image id the ref name:tag holds, in either ref layout (format 1: repositories/N/T,
    format 2: repositories/N/_tags/T), or None."""
    repo_name, tag = name.rsplit(":", 1)
    keys = set(store.keys())
    for key in (f"repositories/{repo_name}/_tags/{tag}", f"repositories/{repo_name}/{tag}"):
        if key in keys:
            return store.get(key).decode().strip()
    return None


def _layer_data_keys(keys):
    return {k for k in keys if k.startswith("layers/sha256/") and not k.endswith(".json")}


# -- images, built once per engine for the crash matrix --------------------------------

class Apps:
    """t<unique>/app:1 (busybox base, hello.txt, a BIG random file, a RUN) and app:2 on top of it."""

    def __init__(self, engine, big=BIG):
        self.engine = engine
        self.unique = uuid.uuid4().hex[:10]
        self.base, self.app1, self.app2 = (f"t{self.unique}/base:1", f"t{self.unique}/app:1",
                                           f"t{self.unique}/app:2")
        engine.import_base(self.base)
        engine.build(self.app1, self.base, {"hello.txt": f"hello {self.unique}\n"}, big=big)
        engine.build(self.app2, self.app1, {"two.txt": "two\n"}, run="echo 2 > /r2.txt")
        self.names = [self.app1, self.app2]
        self.layers = {name: engine.layers(name) for name in self.names}
        self.ids = {name: engine.inspect(name)["Id"] for name in self.names}
        self.big = self.layers[self.app1][2]  # COPY big.bin

    def all_layers(self):
        return {d for name in self.names for d in self.layers[name]}


def _engine(name):
    if name not in ENGINES:
        pytest.fail(f"engine {name} is not configured: run the tests with scripts/test")
    return TestEngine(name, ENGINES[name])


@pytest.fixture(scope="module")
def apps20():
    eng = _engine("d20")
    yield Apps(eng)
    eng.cleanup()


@pytest.fixture(scope="module")
def apps26():
    eng = _engine("d26")
    yield Apps(eng)
    eng.cleanup()


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    """DOGESTRY_CONFIG files per codec: the default (lz4) and `[compressor] lz4 = false`."""
    where = tmp_path_factory.mktemp("cfg")
    (where / "lz4.cfg").write_text("# the default codec\n")
    (where / "none.cfg").write_text("[compressor]\n  lz4 = false\n")
    return {"lz4": str(where / "lz4.cfg"), "none": str(where / "none.cfg")}


@pytest.fixture
def d20(engine_named):
    return engine_named("d20")


@pytest.fixture
def seaweed_server():
    return S3Server("seaweed")


def _stored_layers(stderr):
    return set(re.findall(r"^stored layer (sha256:[0-9a-f]{64})", stderr.decode(), re.M))


def _one_line_error(proc):
    err = proc.stderr.decode().strip()
    assert proc.returncode == 1, f"exit {proc.returncode}: {err}"
    assert len(err.splitlines()) == 1 and err.startswith("dogestry: "), err
    return err


# -- crash safety: push -----------------------------------------------------------------

# (point, spec, codec of the killed push, codec of the re-run, what is left behind)
LOCAL_D20 = [
    ("during-save", "write:spool:1", "lz4", "none"),
    ("mid-layer", "write:spool:7", "none", "lz4"),
    ("data-spooled-not-published", "before-put_file:layers/sha256/*", "lz4", "none"),
    ("between-data-and-descriptor", "put_file:layers/sha256/*:2", "lz4", "none"),
    ("between-layers", "put:layers/sha256/*.json:2", "none", "lz4"),
    ("between-layers-and-configs", "before-put:configs/*", "lz4", "none"),
    ("between-config-and-record", "put:configs/*:1", "none", "lz4"),
    ("between-records", "put:images/*:1", "lz4", "none"),
    ("during-ref-write", "before-put:repositories/*", "none", "lz4"),
    ("between-refs", "put:repositories/*:1", "lz4", "none"),
]
# Docker 25+ names layers by diffID, so they stream straight to a writer of their key.
LOCAL_D26 = [
    ("streamed-during-save", "write:layers/sha256/*:1", "none", "lz4"),
    ("streamed-mid-layer", "write:layers/sha256/*:7", "lz4", "none"),
    ("streamed-before-commit", "before-commit:layers/sha256/*:2", "none", "lz4"),
    ("streamed-between-data-and-descriptor", "commit:layers/sha256/*:2", "lz4", "none"),
]
S3_D26 = [
    ("s3-mid-multipart-layer", "write:layers/sha256/*:11", "lz4", "none"),
    ("s3-between-data-and-descriptor", "commit:layers/sha256/*:3", "none", "lz4"),
    ("s3-between-layers-and-configs", "before-put:configs/*", "lz4", "none"),
    ("s3-during-ref-write", "before-put:repositories/*", "none", "lz4"),
]
S3_D20 = [
    ("s3-spooled-between-data-and-descriptor", "put_file:layers/sha256/*:2", "none", "lz4"),
]


def crash_then_rerun(apps, store, spec, first, second, configs, env):
    """Kill a push at spec, check the repository, push again with the other codec and check
    that the re-run completes, stores only the layers whose data was missing and rewrites nothing.
    Returns the temporaries the killed push left."""
    killed = dogestry("push", store.url, *apps.names, check=False,
                      env=dict(env, DOGESTRY_TEST_CRASH=spec, DOGESTRY_CONFIG=configs[first]))
    assert killed.returncode == KILLED, f"crash point {spec} was never reached: {killed.stderr.decode()}"
    keys = check_repository(store)
    left = store.temporaries()
    present = {k: store.stamp(k) for k in _layer_data_keys(keys)}

    rerun = dogestry("-v", "push", store.url, *apps.names, env=dict(env, DOGESTRY_CONFIG=configs[second]))
    keys = check_repository(store)
    missing = {d for d in apps.all_layers() if f"layers/sha256/{d[7:]}" not in present}
    assert _stored_layers(rerun.stderr) == missing, rerun.stderr.decode()
    for key, stamp in present.items():
        assert store.stamp(key) == stamp, f"the re-run rewrote {key}, which was already stored"
    records = [line.split() for line in rerun.stdout.decode().splitlines()]
    assert records == [[apps.ids[name], name] for name in apps.names]
    for name in apps.names:
        assert ref_target(store, name) == apps.ids[name]
    assert set(store.temporaries()) <= set(left), "the re-run left temporaries of its own"
    # dogestry's own reader agrees: a full load tar of the top image verifies every layer.
    tar = dogestry("build-load-tar", store.url, apps.ids[apps.app2], env=env).stdout
    assert len(tar) > 1 << 20
    return left


@pytest.mark.parametrize("point,spec,first,second", LOCAL_D20, ids=[c[0] for c in LOCAL_D20])
def test_killed_push_local_d20(apps20, configs, tmp_path, point, spec, first, second):
    store = LocalStore(tmp_path / "repo")
    left = crash_then_rerun(apps20, store, spec, first, second, configs, apps20.engine.env())
    if point == "mid-layer":
        assert any(os.path.getsize(os.path.join(store.root, p)) for p in left), "not killed mid-layer"


@pytest.mark.parametrize("point,spec,first,second", LOCAL_D26, ids=[c[0] for c in LOCAL_D26])
def test_killed_push_local_d26(apps26, configs, tmp_path, point, spec, first, second):
    store = LocalStore(tmp_path / "repo")
    left = crash_then_rerun(apps26, store, spec, first, second, configs, apps26.engine.env())
    if point == "streamed-mid-layer":
        assert any(os.path.getsize(os.path.join(store.root, p)) for p in left), "not killed mid-layer"


@pytest.mark.parametrize("point,spec,first,second", S3_D26, ids=[c[0] for c in S3_D26])
def test_killed_push_s3_d26(apps26, configs, seaweed_server, point, spec, first, second):
    store = S3Store(seaweed_server)
    left = crash_then_rerun(apps26, store, spec, first, second, configs, seaweed_server.env(apps26.engine.env()))
    if point == "s3-mid-multipart-layer":
        assert left, "not killed inside a multipart upload"


@pytest.mark.parametrize("point,spec,first,second", S3_D20, ids=[c[0] for c in S3_D20])
def test_killed_push_s3_d20(apps20, configs, seaweed_server, point, spec, first, second):
    store = S3Store(seaweed_server)
    crash_then_rerun(apps20, store, spec, first, second, configs, seaweed_server.env(apps20.engine.env()))


def test_the_next_push_removes_temporaries_a_killed_push_left(apps20, apps26, configs, tmp_path):
    """Killed mid-layer on both write paths (a spool; a file beside the key), the temporaries
    are removed by the next push once nobody could still be writing them (an hour old)."""
    store = LocalStore(tmp_path / "repo")
    for apps, spec in ((apps20, "write:spool:7"), (apps26, "write:layers/sha256/*:7")):
        killed = dogestry("push", store.url, *apps.names, check=False,
                          env=dict(apps.engine.env(), DOGESTRY_TEST_CRASH=spec))
        assert killed.returncode == KILLED
    left = store.temporaries()
    assert len(left) >= 2 and store.temp_bytes() > 0
    old = time.time() - 2 * 3600
    for path in left:
        os.utime(os.path.join(store.root, path), (old, old))
    dogestry("push", store.url, apps20.app1, env=apps20.engine.env())
    assert store.temporaries() == [], f"left behind by the killed pushes and still there: {left}"


def test_repushed_repository_pulls_whole_after_a_crash(d20, configs, tmp_path):
    """End to end: killed between data and descriptor, re-pushed in the other codec, the
    images pull into an engine that lacks them and run."""
    apps = Apps(d20, big=2 << 20)
    store = LocalStore(tmp_path / "repo")
    crash_then_rerun(apps, store, "put_file:layers/sha256/*:2", "lz4", "none", configs, d20.env())
    d20.rmi(apps.app2, apps.app1, apps.base)
    dogestry("pull", store.url, *apps.names, env=d20.env())
    assert d20.layers(apps.app2) == apps.layers[apps.app2]
    assert d20.run(apps.app2, "cat", "/hello.txt", "/two.txt") == f"hello {apps.unique}\ntwo\n"


# -- crash safety: pull -------------------------------------------------------------------

def _images_with_chain(engine, layers):
    return [img["Id"] for img in engine.api.images(all=True)
            if (engine.inspect(img["Id"]) or {}).get("RootFS", {}).get("Layers") == layers]


def _unchanged_or_whole(engine, apps, name):
    """After a failed or killed pull: no image with the pulled layers, or the whole image."""
    found = engine.inspect(name)
    chained = _images_with_chain(engine, apps.layers[name])
    if found is None and not chained:
        return "unchanged"
    assert found is not None and found["RootFS"]["Layers"] == apps.layers[name], (found, chained)
    assert engine.run(name, "cat", "/hello.txt") == f"hello {apps.unique}\n"
    return "whole"


def test_killed_pull_leaves_the_engine_unchanged_or_whole(engine, tmp_path):
    apps = Apps(engine, big=4 << 20)
    store = LocalStore(tmp_path / "repo")
    dogestry("push", store.url, apps.app1, env=engine.env())
    engine.rmi(apps.app2, apps.app1, apps.base)
    spec = f"read:layers/sha256/{apps.big[7:]}:3"  # 2 MiB of the 4 MiB layer have gone to the engine
    killed = dogestry("pull", store.url, apps.app1, check=False, env=dict(engine.env(), DOGESTRY_TEST_CRASH=spec))
    assert killed.returncode == KILLED, killed.stderr.decode()
    time.sleep(1)  # the engine notices the dropped connection
    assert _unchanged_or_whole(engine, apps, apps.app1) == "unchanged"
    dogestry("pull", store.url, apps.app1, env=engine.env())
    assert _unchanged_or_whole(engine, apps, apps.app1) == "whole"


# -- corruption is never loaded -------------------------------------------------------------

def _damage(store, apps, how):
    """Damage the repository one way; return the text the error must name."""
    big = f"layers/sha256/{apps.big[7:]}"
    path = os.path.join(store.root, big)
    if how == "flipped-byte":
        data = bytearray(store.get(big))
        data[len(data) // 2] ^= 0x40
    elif how == "truncated":
        data = store.get(big)[:-4096]
    elif how == "swapped-object":
        other = f"layers/sha256/{apps.layers[apps.app1][1][7:]}"  # the hello.txt layer's bytes
        data = store.get(other)
    elif how == "mismatched-config":
        image_id = apps.ids[apps.app1]
        config = json.loads(store.get(f"configs/sha256/{image_id[7:]}"))
        config["config"]["Cmd"] = ["cat", "/etc/passwd"]
        path = os.path.join(store.root, f"configs/sha256/{image_id[7:]}")
        data = json.dumps(config).encode()
        os.chmod(path, 0o644)
        with open(path, "wb") as f:
            f.write(data)
        return image_id
    with open(path, "wb") as f:
        f.write(data)
    return apps.big


@pytest.fixture(scope="module")
def pushed20(apps20, tmp_path_factory):
    """apps20's app:1 in a local repository, for tests that damage a copy of it."""
    root = tmp_path_factory.mktemp("pushed") / "repo"
    dogestry("push", str(root), apps20.app1, env=apps20.engine.env())
    return root


# The images were built on d20; d26 lacks them, so a pull there has everything to load.
@pytest.mark.parametrize("how", ["flipped-byte", "truncated", "swapped-object", "mismatched-config"])
def test_damaged_repository_is_never_loaded(apps20, pushed20, engine_named, tmp_path, how):
    d26 = engine_named("d26")
    shutil.copytree(pushed20, tmp_path / "repo")
    store = LocalStore(tmp_path / "repo")
    named = _damage(store, apps20, how)
    err = _one_line_error(dogestry("pull", store.url, apps20.app1, env=d26.env(), check=False))
    assert named in err and "corrupt" in err, err
    assert _unchanged_or_whole(d26, apps20, apps20.app1) == "unchanged"


def test_damage_in_transit_is_never_loaded(apps20, engine_named, seaweed_server):
    d26 = engine_named("d26")
    with FaultProxy(seaweed_server.endpoint) as proxy:
        store = S3Store(seaweed_server, endpoint=proxy.url)
        dogestry("push", store.url, apps20.app1, env=seaweed_server.env(apps20.engine.env()))
        proxy.faults = [Fault("GET", f"layers/sha256/{apps20.big[7:]}", "flip", times=100)]
        err = _one_line_error(dogestry("pull", store.url, apps20.app1, env=seaweed_server.env(d26.env()),
                                       check=False))
        assert apps20.big in err and "corrupt" in err, err
        assert "flip" in [s for _, _, s in proxy.requests("GET", apps20.big[7:])]
    assert _unchanged_or_whole(d26, apps20, apps20.app1) == "unchanged"


# -- faults on the wire -----------------------------------------------------------------------

WIRE_BOUND = 120  # seconds: a push or pull of these images through every injected fault


def test_transient_faults_end_in_success_within_a_bound(d20, seaweed_server):
    apps = Apps(d20, big=17 << 20)  # three parts of 8 MiB
    env = seaweed_server.env(d20.env())
    big = apps.big[7:]
    with FaultProxy(seaweed_server.endpoint) as proxy:
        store = S3Store(seaweed_server, endpoint=proxy.url)
        proxy.faults = [Fault("PUT", "partNumber=1", "503"), Fault("PUT", "partNumber=2", "500", times=2),
                        Fault("PUT", "partNumber=3", "stall", delay=3), Fault("POST", "uploadId=", "500"),
                        Fault("PUT", "configs/sha256/", "503"), Fault("PUT", "repositories/", "drop-request")]
        started = time.monotonic()
        dogestry("push", store.url, *apps.names, env=env)
        assert time.monotonic() - started < WIRE_BOUND
        assert all(f.times == 0 for f in proxy.faults), [(f.path_contains, f.action, f.times) for f in proxy.faults]
        check_repository(store)

        d20.rmi(apps.app2, apps.app1, apps.base)
        proxy.faults = [Fault("GET", f"layers/sha256/{big}", "503"), Fault("GET", f"layers/sha256/{big}", "500"),
                        Fault("GET", f"layers/sha256/{big}", "drop-response"),
                        Fault("GET", f"layers/sha256/{big}", "stall-body", delay=3),
                        Fault("GET", "images/sha256/", "503"), Fault("GET", "repositories/", "500")]
        started = time.monotonic()
        dogestry("pull", store.url, apps.app2, env=env)
        assert time.monotonic() - started < WIRE_BOUND
        assert all(f.times == 0 for f in proxy.faults), [(f.path_contains, f.action, f.times) for f in proxy.faults]
    assert d20.run(apps.app2, "cat", "/hello.txt", "/two.txt") == f"hello {apps.unique}\ntwo\n"


def test_persistent_faults_end_in_a_clear_error_after_the_retry_budget(d20, seaweed_server, tmp_path):
    apps = Apps(d20, big=10 << 20)
    env = seaweed_server.env(d20.env())
    spool = tmp_path / "spool"
    spool.mkdir()
    cfg = tmp_path / "dogestry.cfg"
    cfg.write_text(f"[dogestry]\n  temp-dir = {spool}\n")
    env["DOGESTRY_CONFIG"] = str(cfg)
    big = apps.big[7:]
    with FaultProxy(seaweed_server.endpoint) as proxy:
        store = S3Store(seaweed_server, endpoint=proxy.url)
        proxy.faults = [Fault("PUT", "partNumber=", "503", times=10 ** 6)]
        started = time.monotonic()
        err = _one_line_error(dogestry("push", store.url, apps.app1, env=env, check=False))
        assert time.monotonic() - started < WIRE_BOUND
        assert "layers/sha256/" in err and "SlowDown" in err, err
        assert os.listdir(spool) == [], "a failed push left its spool files"
        assert store.temporaries() == [], "a failed push left its multipart upload"
        assert not any(k.startswith("repositories/") for k in store.keys())

        proxy.faults = []
        dogestry("push", store.url, apps.app1, env=env)
        d20.rmi(apps.app2, apps.app1, apps.base)
        proxy.faults = [Fault("GET", f"layers/sha256/{big}", "drop-response", times=10 ** 6)]
        started = time.monotonic()
        err = _one_line_error(dogestry("pull", store.url, apps.app1, env=env, check=False))
        assert time.monotonic() - started < WIRE_BOUND
        assert big in err and "gave up" in err, err
    assert _unchanged_or_whole(d20, apps, apps.app1) == "unchanged"


# -- concurrency ------------------------------------------------------------------------------

def _run_all(commands):
    """Start every command at once; return their CompletedProcess-like results in order."""
    procs = [subprocess.Popen([sys.executable, BIN, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for args, env in commands]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def _all_succeeded(results):
    for res in results:
        assert res.returncode == 0, res.stderr.decode()


def test_concurrent_pushes_sharing_layers(apps20, tmp_path, seaweed_server):
    env = apps20.engine.env()
    local = LocalStore(tmp_path / "repo")
    s3 = S3Store(seaweed_server)
    s3env = seaweed_server.env(env)
    _all_succeeded(_run_all([(["push", local.url, apps20.app1], env), (["push", local.url, apps20.app2], env),
                             (["push", s3.url, apps20.app1], s3env), (["push", s3.url, apps20.app2], s3env)]))
    for store in (local, s3):
        keys = check_repository(store)
        assert _layer_data_keys(keys) == {f"layers/sha256/{d[7:]}" for d in apps20.all_layers()}
        assert len({k for k in keys if k.startswith("repositories/")}) == 2
        assert [ref_target(store, name) for name in apps20.names] == [apps20.ids[name] for name in apps20.names]
    assert local.temporaries() == [] and s3.temporaries() == []


def test_same_image_pushed_twice_at_once_in_two_codecs(apps26, configs, tmp_path, seaweed_server):
    env = apps26.engine.env()
    for store, store_env in ((LocalStore(tmp_path / "repo"), env), (S3Store(seaweed_server), seaweed_server.env(env))):
        _all_succeeded(_run_all([(["push", store.url, apps26.app2], dict(store_env, DOGESTRY_CONFIG=configs[codec]))
                                 for codec in ("lz4", "none")]))
        check_repository(store)
        assert dogestry("build-load-tar", store.url, apps26.ids[apps26.app2], env=store_env).returncode == 0


def test_push_and_pull_of_one_tag_at_once(d20, engine_named, tmp_path):
    """The pull gets the old image or the new one, whole, never a mixture."""
    d26 = engine_named("d26")
    apps = Apps(d20, big=4 << 20)
    store = LocalStore(tmp_path / "repo")
    tag = f"t{apps.unique}/live:1"
    d20.api.tag(apps.app1, f"t{apps.unique}/live", "1")
    d20.created.append(tag)
    dogestry("push", store.url, tag, env=d20.env())
    d20.api.tag(apps.app2, f"t{apps.unique}/live", "1", force=True)
    seen = set()
    for _ in range(3):
        d26.rmi(tag)
        pull, push = _run_all([(["pull", store.url, tag], d26.env()), (["push", store.url, tag], d20.env())])
        _all_succeeded([pull, push])
        d26.created.append(tag)
        layers = d26.layers(tag)
        assert layers in (apps.layers[apps.app1], apps.layers[apps.app2]), layers
        seen.add(len(layers))
        assert d26.run(tag, "cat", "/hello.txt") == f"hello {apps.unique}\n"
        check_repository(store)
    assert ref_target(store, tag) == apps.ids[apps.app2]


def test_five_parallel_pulls(d20, tmp_path):
    apps = Apps(d20, big=4 << 20)
    store = LocalStore(tmp_path / "repo")
    dogestry("push", store.url, *apps.names, env=d20.env())
    d20.rmi(apps.app2, apps.app1, apps.base)
    _all_succeeded(_run_all([(["pull", store.url, apps.app2], d20.env())] * 5))
    assert d20.layers(apps.app2) == apps.layers[apps.app2]
    assert d20.run(apps.app2, "cat", "/hello.txt", "/two.txt") == f"hello {apps.unique}\ntwo\n"


# -- resource bounds ----------------------------------------------------------------------------

RSS_LIMIT = 150 << 20
TWO_GB = 2 << 30


def _sparse_rootfs_tar(path, size):
    """A rootfs tar with one file of `size` zero bytes, written sparse: no disk, no memory."""
    info = tarfile.TarInfo("zeros.bin")
    info.size = size
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    with open(path, "wb") as f:
        f.write(header)
        f.seek(len(header) + size + (-size % 512))
        f.write(b"\0" * 1024)  # the end-of-archive blocks


def _vm_hwm(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _measured(args, env, sample=None):
    """Run dogestry; return (CompletedProcess, peak RSS in bytes, peak of sample() while it ran).

    The peak RSS is the process's own VmHWM, read until it exits: wait4's ru_maxrss would
    also count the test process's memory at fork time (Linux carries it across exec).
    """
    proc = subprocess.Popen([sys.executable, BIN, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak, hwm = [0], [0]
    done = threading.Event()

    def sampler():
        while not done.wait(0.02):
            try:
                hwm[0] = max(hwm[0], _vm_hwm(proc.pid))
                if sample is not None:
                    peak[0] = max(peak[0], sample())
            except (OSError, ValueError):
                pass

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    out, err = proc.communicate()
    done.set()
    thread.join()
    return subprocess.CompletedProcess(args, proc.returncode, out, err), hwm[0], peak[0]


def test_two_gigabyte_image_in_bounded_memory_and_temporary_disk(d20, tmp_path, unique):
    rootfs = tmp_path / "rootfs.tar"
    _sparse_rootfs_tar(rootfs, TWO_GB)
    name = f"t{unique}/huge:1"
    d20.api.import_image_from_file(str(rootfs), repository=name.split(":")[0], tag="1")
    d20.created.append(name)
    rootfs.unlink()
    [diff_id] = d20.layers(name)
    store = LocalStore(tmp_path / "repo")

    pushed, rss, temp_peak = _measured(["push", store.url, name], d20.env(), store.temp_bytes)
    assert pushed.returncode == 0, pushed.stderr.decode()
    stored = os.path.getsize(os.path.join(store.root, f"layers/sha256/{diff_id[7:]}"))
    assert 10 << 20 < rss <= RSS_LIMIT, f"push of a 2 GB image peaked at {rss >> 20} MiB"
    assert temp_peak <= stored + (1 << 20), f"temporaries reached {temp_peak} bytes for a {stored}-byte layer"
    assert store.temporaries() == []

    d20.rmi(name)  # the pull below verifies every byte; check_repository would cost 2 GB of hashing more
    pulled, rss, _ = _measured(["pull", store.url, name], d20.env())
    assert pulled.returncode == 0, pulled.stderr.decode()
    assert 10 << 20 < rss <= RSS_LIMIT, f"pull of a 2 GB image peaked at {rss >> 20} MiB"
    assert d20.layers(name) == [diff_id]


def test_spool_of_an_s3_push_is_bounded_by_the_layer_in_flight(d20, seaweed_server, tmp_path):
    """Docker <= 24 names layers only after reading them: each is spooled in temp-dir, one at a time."""
    apps = Apps(d20, big=16 << 20)
    spool = tmp_path / "spool"
    spool.mkdir()
    cfg = tmp_path / "dogestry.cfg"
    cfg.write_text(f"[dogestry]\n  temp-dir = {spool}\n")
    store = S3Store(seaweed_server)
    env = dict(seaweed_server.env(d20.env()), DOGESTRY_CONFIG=str(cfg))

    def spooled():
        return sum(os.path.getsize(os.path.join(spool, n)) for n in os.listdir(spool))

    pushed, _, peak = _measured(["push", store.url, *apps.names], env, spooled)
    assert pushed.returncode == 0, pushed.stderr.decode()
    largest = max(json.loads(store.get(k))["size"] for k in store.keys() if k.endswith(".json")
                  and k.startswith("layers/"))
    assert 0 < peak <= largest + (1 << 20), (peak, largest)
    assert os.listdir(spool) == [] and store.temporaries() == []


def _interrupt_when(proc, ready, timeout=120):
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the push never reached the point to interrupt"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return err.decode()


def test_sigint_leaves_no_temporaries(d20, seaweed_server, tmp_path):
    apps = Apps(d20, big=64 << 20)
    local = LocalStore(tmp_path / "repo")
    proc = subprocess.Popen([sys.executable, BIN, "push", local.url, apps.app1], env=d20.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = _interrupt_when(proc, lambda: local.temp_bytes() > 4 << 20)
    assert proc.returncode == 130 and err.strip() == "dogestry: interrupted", err
    assert local.temporaries() == []
    check_repository(local)

    spool = tmp_path / "spool"
    spool.mkdir()
    cfg = tmp_path / "dogestry.cfg"
    cfg.write_text(f"[dogestry]\n  temp-dir = {spool}\n")
    s3 = S3Store(seaweed_server)
    proc = subprocess.Popen([sys.executable, BIN, "push", s3.url, apps.app1], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(seaweed_server.env(d20.env()), DOGESTRY_CONFIG=str(cfg)))
    err = _interrupt_when(proc, lambda: sum(os.path.getsize(spool / n) for n in os.listdir(spool)) > 4 << 20)
    assert proc.returncode == 130 and err.strip() == "dogestry: interrupted", err
    assert os.listdir(spool) == [] and s3.temporaries() == []
    check_repository(s3)


# -- secrets ----------------------------------------------------------------------------------------

def _leaks(streams, secrets):
    text = b"\n".join(streams).decode("utf-8", "replace")
    found = [s for s in secrets if s in text]
    found += re.findall(r"(?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|AWSAccessKeyId)=[^&\s]+",
                        text)
    return found


def test_no_secret_in_any_output_or_debug_traceback(d20, seaweed_server, tmp_path, unique):
    d20.import_base(f"t{unique}/base:1")
    base_env = d20.env()
    good = seaweed_server.env(base_env)
    url = S3Store(seaweed_server).url
    dogestry("push", url, f"t{unique}/base:1", env=good)
    shared = dogestry("share", url, f"t{unique}/base:1", "--expires", "1h", env=good).stdout.decode().strip()
    signature = re.search(r"X-Amz-Signature=([0-9a-f]+)", shared).group(1)
    credential = re.search(r"X-Amz-Credential=([^&]+)", shared).group(1)

    wrong = seaweed_server.env(base_env)
    wrong.update(AWS_ACCESS_KEY_ID="AKIALEAKCHECK7QX2ZZ9", AWS_SECRET_ACCESS_KEY="leak/secret+Kq8vLr2mXw9",
                 AWS_SESSION_TOKEN="leaktokenFQoGZXIvYXdzEJr")
    cfg = tmp_path / "secret.cfg"
    cfg.write_text("[s3]\n  access-key-id = AKIACFGLEAK55RT7\n  secret-key = cfg/secret+Zz81Qa\n")
    cfg.chmod(0o644)
    no_aws = {k: v for k, v in base_env.items() if not k.startswith("AWS_")}
    tampered = shared.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    runs = [
        (["--debug", "push", url, f"t{unique}/base:1"], wrong),
        (["--debug", "-v", "pull", url, f"t{unique}/base:1"], wrong),
        (["--debug", "remote", url], wrong),
        (["--debug", "--config", str(cfg), "push", url, f"t{unique}/base:1"], no_aws),
        (["--debug", "-v", "pull", shared, f"t{unique}/base:1"], no_aws),
        (["--debug", "-v", "pull", tampered, f"t{unique}/base:1"], no_aws),
        (["--debug", "show-ref", tampered], no_aws),
        (["--debug", "push", shared, f"t{unique}/base:1"], no_aws),
        (["-v", "push", url, f"t{unique}/base:1"], good),
    ]
    secrets = [seaweed_server.secret, "leak/secret+Kq8vLr2mXw9", "leaktokenFQoGZXIvYXdzEJr", "cfg/secret+Zz81Qa",
               "AKIALEAKCHECK7QX2ZZ9", "AKIACFGLEAK55RT7", signature, credential]
    failures = 0
    for args, env in runs:
        proc = dogestry(*args, env=env, check=False)
        failures += proc.returncode != 0
        assert _leaks([proc.stdout, proc.stderr], secrets) == [], (args, proc.stderr.decode()[-2000:])
        if "--config" in args:
            assert "readable by other users" in proc.stderr.decode()
    assert failures >= 6  # the wrong credentials, the config's, the tampered URL and the read-only share fail
