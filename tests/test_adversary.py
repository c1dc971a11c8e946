"""An attacker's view of dogestry's inputs, through bin/dogestry as a user meets them.

Each case is one a hostile or broken party can set up: a share URL served by something
other than S3 (a login page, a redirect loop, a server that never answers, stalls
mid-body or trickles), a share index written by hand (a zoneless expiry, object URLs that
are not http(s) or not strings), a config path that is a FIFO, and unusual images (an
empty layer, hard links, a layer of only whiteouts, the same layer twice, 120 layers, a
1 MiB ENV) through push and pull on real engines. The rule for every one: one line on
stderr starting `dogestry: `, exit 1 (2 for usage), never `internal error`, never a hang
beyond the stall timeout, never a signature in output. RELIABILITY.md lists them.
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

from conftest import BIN, add_bytes, dogestry, http_peer, one_line_error

SECRET = "X-Amz-Signature=adversarysig0123456789"
STALL = 4  # DOGESTRY_STALL_TIMEOUT for the network cases: each must end well within twice this


def _bounded(*args, env=None, cwd=None, limit=60):
    """bin/dogestry with a time limit: a hang is this suite's failure, not CI's."""
    try:
        return subprocess.run([sys.executable, BIN, *args], capture_output=True, env=env, cwd=cwd, timeout=limit)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"dogestry {' '.join(args)[:200]} still ran after {limit} s") from None


def _one_line_error(proc, status=1):
    err = one_line_error(proc, status)
    assert "adversarysig" not in err + proc.stdout.decode("utf-8", "replace"), err
    return err


# -- a share URL served by something hostile ----------------------------------------------

class _Hostile(http.server.BaseHTTPRequestHandler):
    """Answers by path: each path is one way a server can misbehave."""

    routes = {}

    def log_message(self, *args):
        pass

    def _send(self, status, body=b"", length=None, ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self):
        kind, value = self.routes.get(self.path.split("?")[0], ("status", 404))
        try:
            if kind == "json":
                self._send(200, json.dumps(value).encode())
            elif kind == "html":
                self._send(200, b"<html><body>Sign in</body></html>", ctype="text/html")
            elif kind == "status":
                self._send(value)
            elif kind == "redirect-loop":
                self.send_response(302)
                self.send_header("Location", self.path)
                self.end_headers()
            elif kind == "silent":
                time.sleep(value)
            elif kind == "stall-body":
                self._send(200, b'{"format"', length=100000)
                time.sleep(value)
            elif kind == "cut":
                self._send(200, b'{"format"', length=100000)
                self.connection.shutdown(socket.SHUT_RDWR)
            elif kind == "trickle":
                self._send(200, b"", length=100000)
                for _ in range(100000):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.3)
        except OSError:
            pass  # the client gave up, as it should


@pytest.fixture(scope="module")
def hostile():
    with http_peer(_Hostile) as url:
        yield url


def _index(**fields):
    index = {"format": "dogestry-share", "version": 1, "expires": "2099-01-01T00:00:00Z", "refs": {},
             "objects": {}}
    index.update(fields)
    return index


def _share_cases(base):
    return {
        "login-page": (("html", None), "is not a dogestry share index"),
        "redirect-loop": (("redirect-loop", None), "redirect"),
        "never-answers": (("silent", 60), "gave up"),
        "stalls-mid-body": (("stall-body", 60), "broke off"),
        "cut-mid-body": (("cut", None), "broke off"),
        "trickles": (("trickle", None), "stall-timeout"),
        "http-401": (("status", 401), "HTTP 401"),
        "zoneless-expiry": (("json", _index(expires="2099-01-01T00:00:00")), "damaged share index (expires"),
        "version-as-string": (("json", _index(version="1")), "damaged share index (version"),
        "version-zero": (("json", _index(version=0)), "damaged share index (version"),
        "object-url-int": (("json", _index(objects={"dogestry.json": 5})), "no URL for"),
        "object-url-file": (("json", _index(objects={"dogestry.json": "file:///etc/passwd"})), "no http(s) URL"),
        "object-url-ftp": (("json", _index(objects={"dogestry.json": "ftp://127.0.0.1:1/x"})), "no http(s) URL"),
        "object-url-garbage": (("json", _index(objects={"dogestry.json": "not a url"})), "no http(s) URL"),
        "marker-stalls": (("json", _index(objects={"dogestry.json": f"{base}/stall-body"})), "dogestry.json"),
        "marker-cut": (("json", _index(objects={"dogestry.json": f"{base}/cut"})), "dogestry.json"),
        "marker-is-html": (("json", _index(objects={"dogestry.json": f"{base}/login-page"})), "dogestry.json"),
    }


SHARE_CASES = sorted(_share_cases("http://x"))


@pytest.mark.parametrize("case", SHARE_CASES)
def test_a_hostile_share_server_is_one_line_within_the_stall_timeout(hostile, case):
    cases = _share_cases(hostile)
    _Hostile.routes.update({f"/{name}": route for name, (route, _) in cases.items()})
    env = dict(os.environ, DOGESTRY_STALL_TIMEOUT=str(STALL))
    started = time.monotonic()
    proc = _bounded("show-ref", f"{hostile}/{case}?{SECRET}", env=env)
    took = time.monotonic() - started
    err = _one_line_error(proc)
    assert cases[case][1] in err, err
    assert took < 2 * STALL + 5, f"{case} took {took:.0f} s with a {STALL} s stall timeout"


def test_the_stall_timeout_of_a_share_comes_from_the_config_file_too(hostile, tmp_path):
    _Hostile.routes["/silent-cfg"] = ("silent", 60)
    cfg = tmp_path / "dogestry.cfg"
    cfg.write_text(f"[dogestry]\n  stall-timeout = {STALL}\n")
    env = {k: v for k, v in os.environ.items() if k != "DOGESTRY_STALL_TIMEOUT"}
    started = time.monotonic()
    err = _one_line_error(_bounded("--config", str(cfg), "remote", f"{hostile}/silent-cfg?{SECRET}", env=env))
    assert "gave up" in err and time.monotonic() - started < 2 * STALL + 5, err


# -- the config file -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "implicit-fifo"])
def test_a_config_path_that_is_not_a_regular_file_never_blocks(tmp_path, kind):
    repo = tmp_path / "repo"
    repo.mkdir()
    if kind == "dev-zero":
        args, cwd, shown = ["--config", "/dev/zero"], None, "/dev/zero"
    else:
        fifo = tmp_path / "dogestry.cfg"
        os.mkfifo(fifo)
        # ./dogestry.cfg is read when no --config is given
        args, cwd, shown = ((["--config", str(fifo)], None, str(fifo)) if kind == "fifo"
                            else ([], str(tmp_path), "dogestry.cfg"))
    env = {k: v for k, v in os.environ.items() if k != "DOGESTRY_CONFIG"}
    started = time.monotonic()
    err = _one_line_error(_bounded(*args, "remote", str(repo), env=env, cwd=cwd, limit=20), 2)
    assert f"config file {shown} is not a regular file" in err
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("content,works", [(b"[dogestry]\r\n  temp-dir = /tmp\r\n", True),
                                           (b"[s3]\nendpoint = http://a\n[s3]\nendpoint = http://b\n", True),
                                           (b"[weird]\nunknown-key = 1\n", True),
                                           (b"# " + b"x" * (2 << 20) + b"\n", False)],
                         ids=["crlf", "duplicate-sections", "unknown-keys", "2MB-comment"])
def test_config_files_written_by_other_tools(tmp_path, content, works):
    cfg = tmp_path / "dogestry.cfg"
    cfg.write_bytes(content)
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = _bounded("--config", str(cfg), "remote", str(repo))
    if works:
        assert proc.returncode == 0, proc.stderr
    else:
        assert str(cfg) in _one_line_error(proc, 2)


# -- unusual images through real engines ------------------------------------------------------

def _digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, value in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, value
                tar.addfile(info)
            else:
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
    return buf.getvalue()


def _load_tar(layers, tag, env):
    """A docker-load tar (the v1 layout every engine loads) of the given layer tars."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": env, "Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [_digest(x) for x in layers]}}).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name, data):
            add_bytes(tar, name, data)
        names = [f"{_digest(x)[7:]}/layer.tar" for x in layers]
        for name, data in dict(zip(names, layers)).items():
            add(name, data)
        add(f"{_digest(config)[7:]}.json", config)
        add("manifest.json", json.dumps([{"Config": f"{_digest(config)[7:]}.json", "RepoTags": [tag],
                                          "Layers": names}]).encode())
    return buf.getvalue()


def _odd_images(salt):
    base = _layer([("bin", "dir", None), ("bin/a", "file", b"a" * 5000 + salt)])
    return {
        "empty-layer": ([_layer([])], []),
        "hard-links": ([base, _layer([("d", "dir", None), ("d/f", "file", b"f" * 500 + salt),
                                      ("d/g", "hardlink", "d/f"), ("d/h", "hardlink", "d/f")])], []),
        "only-whiteouts": ([base, _layer([("bin/.wh.a", "file", b"")])], []),
        "opaque-whiteout": ([base, _layer([("bin", "dir", None), ("bin/.wh..wh..opq", "file", b"")])], []),
        "same-layer-twice": ([base, _layer([("y", "file", salt)]), base], []),
        "120-layers": ([base] + [_layer([(f"f{i}", "file", b"%d" % i + salt)]) for i in range(120)], []),
        "1MiB-env": ([base], ["BIG=" + "x" * (1 << 20)]),
    }


@pytest.mark.parametrize("case", sorted(_odd_images(b"")))
def test_unusual_images_push_and_pull_whole(engine, tmp_path, case):
    layers, env = _odd_images(uuid.uuid4().hex.encode())[case]
    tag = f"adversary-{case.lower()}:{uuid.uuid4().hex[:8]}"
    engine.api.load_image(_load_tar(layers, tag, env))
    engine.created.append(tag)
    repo = str(tmp_path / "repo")
    dogestry("push", repo, tag, env=engine.env())
    engine.api.remove_image(tag, force=True)
    dogestry("pull", repo, tag, env=engine.env())
    assert engine.layers(tag) == [_digest(x) for x in layers]
    dogestry("verify", repo)
    # and the same tar through the plumbing that reads tars, without an engine
    tar = tmp_path / "load.tar"
    tar.write_bytes(_load_tar(layers, tag, env))
    out = dogestry("save-to-repo", "--input", str(tar), str(tmp_path / "plumbing")).stdout.decode()
    assert out.split()[1] == tag


# -- URLs that carry more than a location ----------------------------------------------------

@pytest.mark.parametrize("url,says", [
    ("s3://images/../prod/", "prefixes are literal"),
    ("s3://images/prod/./x/", "prefixes are literal"),
    ("s3://AKIAADVERSARY:adversarysig@images/prod/", "without user, password or port"),
    ("s3://images:9000/prod/", "without user, password or port"),
    ("s3://images/prod/?endpoint=http://user:adversarysig@127.0.0.1:1", "user or password"),
], ids=["dotdot-prefix", "dot-prefix", "credentials-in-bucket", "port-on-bucket", "password-in-endpoint"])
def test_s3_urls_that_would_mislead_or_leak_are_usage_errors(url, says):
    env = dict(os.environ, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s", DOGESTRY_STALL_TIMEOUT="2")
    err = _one_line_error(_bounded("remote", url, env=env), 2)
    assert says in err and "AKIAADVERSARY" not in err


def test_a_password_in_the_s3_endpoint_from_the_environment_is_never_echoed():
    env = dict(os.environ, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s",
               AWS_ENDPOINT_URL="http://user:adversarysig@127.0.0.1:1")
    assert "user or password" in _one_line_error(_bounded("remote", "s3://images/prod/", env=env), 2)


def test_a_password_in_a_share_url_is_masked(hostile):
    _Hostile.routes["/login-for-mask"] = ("status", 403)
    netloc = hostile.split("://", 1)[1]
    err = _one_line_error(_bounded("show-ref", f"http://user:adversarysig@{netloc}/nowhere?{SECRET}",
                                   env=dict(os.environ, DOGESTRY_STALL_TIMEOUT=str(STALL))))
    assert "<user>@" in err or "HTTP" in err, err


# -- plumbing records from the wrong command ---------------------------------------------------

@pytest.mark.parametrize("data", [b"layer\n", b"\xff\xfe\n", b"config\0", b"app:1\n"],
                         ids=["object-kind", "not-utf8", "nul-terminated-kind", "a-ref-alone"])
def test_update_ref_refuses_one_field_records_that_are_not_image_ids(tmp_path, data):
    repo = tmp_path / "repo"
    repo.mkdir()
    args = ["update-ref", "--stdin", str(repo)] + (["-z"] if data.endswith(b"\0") else [])
    proc = subprocess.run([sys.executable, BIN, *args], input=data, capture_output=True, timeout=60)
    assert "bad ref record" in _one_line_error(proc, 2)
    assert not (repo / "repositories").exists()


# -- the lock file ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "dev-null", "directory"])
def test_a_lock_file_that_is_not_a_regular_file_is_refused_and_never_written(tmp_path, kind):
    repo = tmp_path / "repo"
    repo.mkdir()
    if kind == "fifo":
        lock = tmp_path / "lock"
        os.mkfifo(lock)
    elif kind == "directory":
        lock = tmp_path / "lockdir"
        lock.mkdir()
    else:
        lock = "/dev/null"  # a device: a pid written over its first bytes would be a disaster on a disk
    for command in (["gc", "--dry-run"], ["untag", "--keep-last", "1", "x"]):
        err = _one_line_error(_bounded(command[0], "--lockfile", str(lock), str(repo), *command[1:], limit=20))
        assert str(lock) in err, err
