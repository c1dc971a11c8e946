"""An audit of the parsers, by reading the code: each spot where bytes from outside could
reach a call that raises something other than DogestryError (an `internal error`), or grow
without bound, proved (or disproved) here through bin/dogestry against real files, a real
engine or a real peer. RELIABILITY.md, "An audit of the parsers", lists them.
"""

import hashlib
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
import uuid

import pytest

from conftest import BIN, dogestry, http_peer, one_line_error
from dogestry.backends.local import LocalBackend
from dogestry.image import Image
from dogestry.operations import _boot_id
from dogestry.repo import Repository

# Under the 64 KiB cap on leases and descriptors; json.loads raises RecursionError, which is
# neither a ValueError nor a DogestryError.
DEEP = b"[" * 50000


def _digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1700000000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _config(diff_ids, **extra):
    return json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                       "rootfs": {"type": "layers", "diff_ids": diff_ids}, **extra}).encode()


def _repo(path, config=None, layers=None, ref="app:1"):
    """A local repository holding one image (written through the library, as a push would)."""
    layers = [_layer({"x": b"x" * 100})] if layers is None else layers
    repo = Repository(LocalBackend(str(path)))
    descs = [repo.store_layer(iter([data]))[0] for data in layers]
    config = _config([d.diff_id for d in descs]) if config is None else config
    image = Image.from_config(config, descs)
    repo.put_config(config)
    repo.put_image(image)
    if ref:
        from dogestry.refs import parse_ref
        repo.set_ref(parse_ref(ref), image.id)
    return image


# -- leases and share indexes that gc and tag read ---------------------------------------------

@pytest.mark.parametrize("lease", [
    DEEP,                                                          # RecursionError
    b'{"images": ["not-an-image-id"]}',                            # hex_of's ValueError
    b'{"images": ["sha256:' + b"A" * 64 + b'"]}',                  # upper-case hex: not a digest either
], ids=["deep", "not-an-id", "upper-case-id"])
def test_gc_reads_a_hostile_writer_lease_without_an_internal_error(tmp_path, lease):
    """A live writer's lease that is not a lease record is a lease with no announced images:
    gc keeps what the age rules keep and removes the rest, no `internal error`."""
    path = tmp_path / "repo"
    _repo(path)
    (path / "leases").mkdir(exist_ok=True)
    (path / "leases" / "push-hostile.json").write_bytes(lease)
    proc = dogestry("gc", "--grace", "0s", str(path), check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    dogestry("verify", str(path))


def test_tag_reads_a_gc_lease_naming_this_host_with_a_pid_beyond_any_pid(tmp_path):
    """os.kill(2**64, 0) raises OverflowError, not OSError: such a pid is no process here."""
    path = tmp_path / "repo"
    _repo(path)
    (path / "leases").mkdir(exist_ok=True)
    record = {"host": socket.gethostname(), "boot": _boot_id(), "pid": 2 ** 64, "what": "gc"}
    (path / "leases" / "gc-hostile.json").write_text(json.dumps(record))
    proc = subprocess.Popen([sys.executable, BIN, "-v", "tag", str(path), "app:1", "app:2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _waits_for_the_gc_then_finishes(proc, path / "leases" / "gc-hostile.json")


def _waits_for_the_gc_then_finishes(proc, lease):
    """A gc lease it cannot read is a gc that may be running: the writer waits for it (and
    says so) until it goes, then finishes."""
    deadline = time.monotonic() + 30
    said = b""
    try:
        while b"waiting for the gc holding" not in said:
            assert proc.poll() is None, proc.stderr.read().decode() + said.decode()
            assert time.monotonic() < deadline, said
            said += os.read(proc.stderr.fileno(), 4096)
        lease.unlink()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (said + err).decode()
    assert b"internal error" not in said + err


@pytest.mark.parametrize("lease", [DEEP, b"\xff\xfe not json", b'"\\ud800"', b"NaN"],
                         ids=["deep", "not-utf8", "surrogate", "nan"])
def test_tag_waits_for_a_gc_lease_it_cannot_read(tmp_path, lease):
    path = tmp_path / "repo"
    _repo(path)
    (path / "leases").mkdir(exist_ok=True)
    (path / "leases" / "gc-hostile.json").write_bytes(lease)
    proc = subprocess.Popen([sys.executable, BIN, "-v", "tag", str(path), "app:1", "app:2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _waits_for_the_gc_then_finishes(proc, path / "leases" / "gc-hostile.json")
    assert dogestry("resolve-ref", str(path), "app:2").stdout.split()[0] == \
        dogestry("resolve-ref", str(path), "app:1").stdout.split()[0]


@pytest.mark.parametrize("index", [
    DEEP,
    b'{"expires": "2999-01-01T00:00:00Z", "objects": 5}',
    b'{"expires": "2999-01-01T00:00:00Z", "objects": null}',
    b'{"expires": "2999-01-01T00:00:00Z", "objects": true}',
    b'{"expires": "\\ud800", "objects": []}',
    b'{"expires": 5, "objects": []}',
], ids=["deep", "objects-int", "objects-null", "objects-true", "expires-surrogate", "expires-int"])
def test_gc_refuses_a_damaged_share_index_in_one_line(tmp_path, index):
    path = tmp_path / "repo"
    _repo(path)
    (path / "shares").mkdir(exist_ok=True)
    (path / "shares" / ("ab" * 32 + ".json")).write_bytes(index)
    err = one_line_error(dogestry("gc", "--grace", "0s", str(path), check=False))
    assert "shares/" + "ab" * 32 + ".json" in err and "damaged" in err


# -- verify's config check --------------------------------------------------------------------

@pytest.mark.parametrize("config", [
    DEEP,
    b'{"rootfs": {"diff_ids": ' + b"[" * 100000 + b"}}",
    b"\xff\xfe",                                 # not UTF-8: json.loads raises a ValueError (kept)
    b'{"rootfs": "\\ud800"}',
], ids=["deep", "deep-diff-ids", "not-utf8", "rootfs-surrogate"])
def test_verify_reports_a_config_that_is_not_json_as_a_problem(tmp_path, config):
    """The config is whatever bytes hash to the image id: a crafted record + config pair
    is a verify problem naming the image, not an internal error."""
    path = tmp_path / "repo"
    image = _repo(path, config=config)
    proc = dogestry("verify", str(path), check=False)
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 1, out
    assert "internal error" not in out and image.id in out and "rootfs.diff_ids" in out, out


# -- a share URL: the index and the answers come from a server we do not control -------------

class _Peer(http.server.BaseHTTPRequestHandler):
    """Answers GET by path from `routes`: (status, headers, body)."""

    routes = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        status, headers, body = self.routes.get(self.path.split("?")[0], (404, {}, b""))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def peer():
    with http_peer(_Peer) as url:
        yield url


MARKER = b'{"format": "dogestry-repository", "version": 2}\n'


def _share(peer, name, refs=None, objects=None, routes=None):
    """Serve a share index at /name whose marker is served too; return the share URL."""
    index = {"format": "dogestry-share", "version": 1, "expires": "2099-01-01T00:00:00Z",
             "refs": refs or {}, "objects": {"dogestry.json": f"{peer}/{name}/marker", **(objects or {})}}
    _Peer.routes[f"/{name}"] = (200, {}, json.dumps(index).encode())
    _Peer.routes[f"/{name}/marker"] = (200, {}, MARKER)
    for path, route in (routes or {}).items():
        _Peer.routes[f"/{name}/{path}"] = route
    return f"{peer}/{name}?X-Amz-Signature=auditsig"


def _bounded(*args, limit=60):
    env = dict(os.environ, DOGESTRY_STALL_TIMEOUT="4")
    try:
        return subprocess.run([sys.executable, BIN, *args], capture_output=True, env=env, timeout=limit)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"dogestry {' '.join(args)[:200]} still ran after {limit} s") from None


def test_a_share_index_object_url_urlsplit_refuses(peer):
    url = _share(peer, "bad-ipv6", objects={"dogestry.json": "http://[::1/marker"})
    err = one_line_error(_bounded("show-ref", url))
    assert "dogestry.json" in err and "auditsig" not in err


def test_a_shared_ref_that_is_a_lone_surrogate(peer):
    """json.loads gives "\\ud800" as a str that .encode() refuses."""
    url = _share(peer, "surrogate-ref", refs={"repositories/app/_tags/1": "\ud800"})
    err = one_line_error(_bounded("show-ref", url))
    assert "app:1" in err and "auditsig" not in err


@pytest.mark.parametrize("content_range", ["bytes 0-0/\u00b2", "bytes 0-0/" + "9" * 5000],
                         ids=["superscript-two", "5000-digits"])
def test_a_shared_object_size_that_int_refuses(peer, content_range):
    """size() of a shared object is the total of a one-byte range: Content-Range is the
    server's text, sent and read as latin-1 ('²'.isdigit() is True; int() refuses '²' and
    more than 4300 digits)."""
    name = f"range-{len(content_range)}"
    layer = "layers/sha256/" + "ab" * 32
    url = _share(peer, name, objects={layer: f"{peer}/{name}/layer"},
                 routes={"layer": (206, {"Content-Range": content_range}, b"x")})
    err = one_line_error(_bounded("verify", "--all", url))
    assert layer in err and "auditsig" not in err


# -- a Docker engine's answers: an engine is input too -----------------------------------------

class _Engine(http.server.BaseHTTPRequestHandler):
    """A Docker Engine API that answers from `routes` ({path: JSON value}); anything else is a
    404 with Docker's error body. `api` is the Api-Version header of every answer."""

    routes, api = {}, "1.41"

    def log_message(self, *args):
        pass

    def _answer(self):
        path = self.path.split("?")[0]
        found = path in self.routes
        body = json.dumps(self.routes[path] if found else {"message": f"No such image: {path}"}).encode()
        self.send_response(200 if found else 404)
        self.send_header("Api-Version", self.api)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = do_HEAD = _answer


@pytest.fixture
def hostile_engine(tmp_path):
    _Engine.routes, _Engine.api = {}, "1.41"
    with http_peer(_Engine) as url:
        yield dict(os.environ, DOCKER_HOST=url.replace("http://", "tcp://"), XDG_CACHE_HOME=str(tmp_path / "cache"),
                   DOGESTRY_STALL_TIMEOUT="4")


def _inspect(image_id, **fields):
    return {"Id": image_id, "RootFS": {"Type": "layers", "Layers": []}, "RepoTags": [], "Os": "linux",
            "Architecture": "amd64", "Size": 0, **fields}


@pytest.mark.parametrize("case", ["api-version-superscript", "driver-status-int", "driver-status-pairs-of-ints",
                                  "listed-id-int", "repo-tags-int", "listed-repo-tags-int"])
def test_pull_into_an_engine_whose_answers_have_the_wrong_types(tmp_path, hostile_engine, case):
    path = tmp_path / "repo"
    image = _repo(path)
    other = "sha256:" + "cd" * 32
    if case == "api-version-superscript":
        _Engine.api = "\u00b2.41"  # latin-1 on the wire; '²'.isdigit() is True, int('²') raises
    elif case.startswith("driver-status"):
        _Engine.api = "1.45"  # new enough for the containerd store: /info is asked
        _Engine.routes["/info"] = {"DriverStatus": 5 if case == "driver-status-int" else [[1, 2]]}
    elif case == "listed-id-int":
        _Engine.routes["/images/json"] = [{"Id": 5}]
    elif case == "repo-tags-int":
        _Engine.routes[f"/images/{image.id}/json"] = _inspect(image.id, RepoTags=5)
    elif case == "listed-repo-tags-int":
        _Engine.routes["/images/json"] = [{"Id": other, "RepoTags": 5}]
        _Engine.routes[f"/images/{other}/json"] = _inspect(other, RepoTags=5)
    proc = subprocess.run([sys.executable, BIN, "pull", str(path), "app:1"], capture_output=True,
                          env=hostile_engine, timeout=60)
    err = one_line_error(proc)
    assert "Docker engine at tcp://127.0.0.1" in err or "docker load into tcp://127.0.0.1" in err, err


# -- unusual images, pushed from one engine generation and pulled into another -----------------

def _dir_layer(salt):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("bin")
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1700000000
        tar.addfile(info)
        data = b"a" * 5000 + salt
        info = tarfile.TarInfo("bin/a")
        info.size, info.mtime = len(data), 1700000000
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _pax_global_layer(salt):
    """A layer that opens with a PAX global header (type 'g'), as `git archive` writes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": "global " + salt.decode()}) as tar:
        info = tarfile.TarInfo("g")
        info.size, info.mtime = len(salt), 1700000000
        tar.addfile(info, io.BytesIO(salt))
    return buf.getvalue()


def _unusual(salt):
    base = _dir_layer(salt)
    return {
        # its diffID covers the bytes after the two end-of-archive blocks too
        "trailing-data": ([base, _layer({"t": salt}) + b"trailing bytes after the end of the archive" * 10], []),
        "pax-global-header": ([base, _pax_global_layer(salt)], []),
        "zero-byte-and-empty-tar-layers": ([base, b"", b"\0" * 1024], []),
        "2MiB-config": ([base], ["BIG=" + "y" * (2 << 20)]),
        "same-diffid-twice": ([base, _layer({"y": salt}), base], []),
    }


def _load_tar(layers, tag, env):
    """A docker-load tar (the v1 layout every engine generation loads) of the layer tars."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": env, "Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [_digest(x) for x in layers]}}).encode()
    names = [f"{_digest(x)[7:]}/layer.tar" for x in layers]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        entries = {**dict(zip(names, layers)), f"{_digest(config)[7:]}.json": config,
                   "manifest.json": json.dumps([{"Config": f"{_digest(config)[7:]}.json", "RepoTags": [tag],
                                                 "Layers": names}]).encode()}
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("direction", ["d20-to-d26c", "d26c-to-d20"])
def test_unusual_images_cross_engine_generations(engine_named, tmp_path, direction):
    source, target = (engine_named(name) for name in direction.split("-to-"))
    salt = uuid.uuid4().hex.encode()
    for case, (layers, env) in _unusual(salt).items():
        tag = f"audit-{case.lower()}:{salt[:8].decode()}"
        source.api.load_image(_load_tar(layers, tag, env))
        source.created.append(tag)
        assert source.layers(tag) == [_digest(x) for x in layers], case
        repo = str(tmp_path / case)
        dogestry("push", repo, tag, env=source.env())
        dogestry("pull", repo, tag, env=target.env())
        target.created.append(tag)
        assert target.layers(tag) == [_digest(x) for x in layers], case
        if env:
            assert env[0] in target.api.inspect_image(tag)["Config"]["Env"], case
        dogestry("verify", repo)


# -- JSON whose parsed form is 25 times its text -------------------------------------------------

MANY = b"[" + b"[]," * (7 << 20) + b"[]]"  # 21 MiB of text, 7 million lists: ~500 MiB parsed
RSS_LIMIT = 200 << 20


def _peak_rss(*args, env=None, limit=120):
    """Run bin/dogestry in a fresh wrapper; (CompletedProcess, peak RSS in bytes of dogestry).
    The CompletedProcess's stderr is dogestry's stdout then its stderr."""
    wrapper = ("import resource, subprocess, sys\n"
               "p = subprocess.run(sys.argv[1:], capture_output=True)\n"
               "sys.stdout.buffer.write(p.stdout + p.stderr)\n"
               "sys.stderr.write(f'{p.returncode} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}')\n")
    run = subprocess.run([sys.executable, "-c", wrapper, sys.executable, BIN, *args], capture_output=True,
                         env=env, timeout=limit)
    status, rss = run.stderr.decode().split()
    return subprocess.CompletedProcess(args, int(status), b"", run.stdout), int(rss)


def test_verify_bounds_what_a_config_of_many_values_costs(tmp_path):
    path = tmp_path / "repo"
    image = _repo(path, config=MANY)
    proc, rss = _peak_rss("verify", str(path))
    assert rss < RSS_LIMIT, f"verify peaked at {rss >> 20} MiB"
    out = proc.stderr.decode()
    assert proc.returncode == 1 and image.id in out and "rootfs.diff_ids" in out, out


def test_gc_bounds_what_a_share_index_of_many_values_costs(tmp_path):
    path = tmp_path / "repo"
    _repo(path)
    (path / "shares").mkdir(exist_ok=True)
    (path / "shares" / ("ab" * 32 + ".json")).write_bytes(MANY)
    proc, rss = _peak_rss("gc", str(path))
    assert rss < RSS_LIMIT, f"gc peaked at {rss >> 20} MiB"
    assert "shares/" + "ab" * 32 + ".json" in one_line_error(proc)


def test_a_share_index_of_many_values_is_refused_before_it_is_parsed(peer):
    _Peer.routes["/many"] = (200, {}, MANY)
    proc, rss = _peak_rss("show-ref", f"{peer}/many?X-Amz-Signature=auditsig")
    assert rss < RSS_LIMIT, f"show-ref peaked at {rss >> 20} MiB"
    assert "share index" in one_line_error(proc)


def test_an_engine_answer_of_many_values_is_refused_before_it_is_parsed(tmp_path, hostile_engine):
    path = tmp_path / "repo"
    _repo(path)
    _Engine.routes["/images/json"] = json.loads(MANY)
    proc, rss = _peak_rss("pull", str(path), "app:1", env=hostile_engine)
    assert rss < RSS_LIMIT, f"pull peaked at {rss >> 20} MiB"
    assert "Docker engine at tcp://127.0.0.1" in one_line_error(proc)


def test_push_from_an_engine_that_gives_an_image_a_size_of_an_exabyte(tmp_path, hostile_engine):
    """The save's socket timeout grows with the image's size (a graphdriver engine exports
    before it sends a byte): 10**18 bytes made it overflow socket.settimeout (OverflowError)."""
    layer = "sha256:" + "ef" * 32
    _Engine.routes["/images/app:1/json"] = _inspect("sha256:" + "cd" * 32, RepoTags=["app:1"], Size=10 ** 18,
                                                     RootFS={"Type": "layers", "Layers": [layer]})
    proc = subprocess.run([sys.executable, BIN, "push", str(tmp_path / "repo"), "app:1"], capture_output=True,
                          env=hostile_engine, timeout=60)
    assert "Docker engine at tcp://127.0.0.1" in one_line_error(proc)


def test_a_producer_whose_consumer_stops_after_its_last_item_is_not_left_blocked():
    """pipeline.produce put its end marker with no timeout: a consumer that stopped after the
    last item (serve answering `Range: bytes=0-0` from an uncached layer) left the thread
    blocked for ever on the full queue, holding up to `depth` chunks. Pure logic: no fake."""
    import threading

    from dogestry.pipeline import produce

    def five():
        yield from range(5)

    for _ in range(3):
        items = produce(five, depth=4, name="dogestry-test-producer")
        assert next(items) == 0
        time.sleep(0.3)  # the producer has filled the queue and waits to put its end marker
        items.close()
    deadline = time.monotonic() + 5
    while any(t.name == "dogestry-test-producer" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "dogestry-test-producer" for t in threading.enumerate())


def test_list_of_a_ref_stamped_beyond_what_gmtime_holds():
    """A ref whose mtime is 2^62 (tmpfs keeps it): `list --json` and `--no-trunc` raised
    OSError from time.gmtime, an internal error. The time is unknown instead."""
    import pathlib
    import shutil
    import tempfile

    shm = pathlib.Path(tempfile.mkdtemp(dir="/dev/shm"))  # ext4 clamps such a time to 2446; tmpfs keeps it
    try:
        image = _repo(shm / "repo")
        os.utime(shm / "repo" / "repositories" / "app" / "_tags" / "1", (2 ** 62, 2 ** 62))
        out = dogestry("list", "--json", str(shm / "repo")).stdout
        assert json.loads(out)["pushed"] is None and json.loads(out)["image_id"] == image.id
        table = dogestry("list", "--no-trunc", str(shm / "repo")).stdout.decode().splitlines()
        assert table[1].split()[-1] == "-" and image.id in table[1]
    finally:
        shutil.rmtree(shm)
