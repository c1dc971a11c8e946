"""A third adversarial pass: `dogestry serve` against hostile HTTP clients over raw
sockets, plumbing records, hostile configuration and environment, signals, odd names.

Rule for every case (RELIABILITY.md, "Third adversarial pass"): no internal error or
traceback, no hang, bounded memory; a failure is one line `dogestry: ...` naming the object,
file or host, exit 1 (2 for usage); nothing half-written. Everything runs the real CLI
(bin/dogestry) against real files, real servers and real engines.
"""

import hashlib
import http.client
import json
import os
import re
import socket
import time

import pytest

from conftest import dogestry, one_line_error
from test_serve import make_repo, start_serving

STALL = 3  # DOGESTRY_STALL_TIMEOUT of the servers here: seconds a client may stall


# -- dogestry serve against hostile clients ------------------------------------------------
@pytest.fixture(scope="module")
def hostile_served(tmp_path_factory):
    """A server (stall timeout 3 s) over a repository with a 24 MiB layer: larger than the
    socket buffers, so a client that stops reading really blocks the server's send."""
    tmp = tmp_path_factory.mktemp("served")
    repo = make_repo(tmp, {"team/app:1": [{"etc/base.txt": b"base\n"}, {"app.bin": 24 << 20}],
                           "other:1": [{"etc/base.txt": b"base\n"}]})
    served = start_serving(repo, tmp, env=dict(os.environ, DOGESTRY_STALL_TIMEOUT=str(STALL)))
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    conn.request("GET", "/v2/team/app/manifests/1")
    manifest = json.loads(conn.getresponse().read())
    conn.close()
    served.big = max(manifest["layers"], key=lambda layer: layer["size"])
    served.small = min(manifest["layers"], key=lambda layer: layer["size"])
    served.repo = repo
    yield served
    assert served.stop() == 0, served.log()
    log = served.log()
    assert "Traceback" not in log and "failed:" not in log, log


def raw(port, data, timeout=10):
    """Send bytes as they are, read until the server closes (or `timeout` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(1 << 16):
                out += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return out


def statuses(answer):
    return [int(m) for m in re.findall(rb"(?:^|\n)HTTP/1\.[01] (\d{3}) ", answer)]


def get_whole(port, digest):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", f"/v2/team/app/blobs/{digest}")
        response = conn.getresponse()
        body = response.read()
        return response.status, "sha256:" + hashlib.sha256(body).hexdigest()
    finally:
        conn.close()


def test_malformed_requests_get_an_answer_and_the_connection_closed(hostile_served):
    port = hostile_served.port
    cases = {
        b"GET /v2/\r\n": 505,                                     # HTTP/0.9: waited for headers for 10 min
        b"\x00\x01\x02 garbage\r\n\r\n": 505,
        b"GET /v2/ HTTP/9.9\r\n\r\n": 505,
        b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\n\r\n": 414,
        b"GET /v2/ HTTP/1.1\r\nX: " + b"a" * (1 << 20) + b"\r\n\r\n": 431,
        b"GET /v2/ HTTP/1.1\r\n" + b"X: a\r\n" * 10000 + b"\r\n": 431,
        b"BREW /v2/ HTTP/1.1\r\n\r\n": 501,
        b"GET /v2/ HTTP/1.1\r\nHost: \x00\xff\r\nConnection: close\r\n\r\n": 200,
        b"GET http://evil.example/v2/ HTTP/1.1\r\nConnection: close\r\n\r\n": 404,
    }
    for request, status in cases.items():
        started = time.monotonic()
        answer = raw(port, request)
        assert statuses(answer)[:1] == [status], (request[:60], answer[:300])
        assert time.monotonic() - started < 5, request[:60]


def test_pagination_numbers_that_int_refuses_are_answered(hostile_served):
    port = hostile_served.port
    for query, status in [("n=%C2%B2", 400), ("n=%D9%A3", 400), ("n=" + "9" * 5000, 200), ("n=-1", 400),
                          ("n=0", 200), ("n=" + "1" + "0" * 30, 200), ("last=" + "z" * 60000, 200),
                          ("n=1&n=x", 400), ("last=%00&n=1", 200)]:
        for path in ("/v2/_catalog", "/v2/team/app/tags/list"):
            answer = raw(port, f"GET {path}?{query} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
            assert statuses(answer) == [status], (path, query[:40], answer[:300])
            assert len(answer) < 4096, (path, query[:40])  # a 5000-digit n is not echoed back
    for path in ("/v2/" + "a" * 10000 + "/tags/list", "/v2/" + "a/" * 5000 + "x/manifests/1",
                 "/v2/team%00app/tags/list", "/v2/team/app/manifests/1%0d%0aX-Injected:%201"):
        answer = raw(port, f"GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
        assert statuses(answer) == [400] and len(answer) < 4096, (path[:40], answer[:300])
        assert b"\r\nX-Injected" not in answer
    answer = raw(port, b"GET /v2/_catalog?n=1 HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert b'Link: </v2/_catalog?n=1&last=other>; rel="next"' in answer, answer


def test_odd_ranges_are_served_whole_partial_or_refused_never_dropped(hostile_served):
    port, small = hostile_served.port, hostile_served.small
    size, digest = small["size"], small["digest"]
    cases = [("bytes=5-2", 200, size), ("bytes=-0", 416, None), ("bytes=0-0,5-9", 200, size),
             ("bytes=99999999999999999999-", 416, None), (f"bytes=-{size * 10}", 206, size),
             ("pages=0-5", 200, size), ("bytes=0-" + "9" * 5000, 206, size), ("bytes=" + "9" * 5000 + "-", 416, None),
             ("bytes=-" + "9" * 5000, 206, size), ("bytes=1-1", 206, 1), ("bytes=0--5", 200, size),
             ("bytes=\xb2-3", 200, size)]
    for header, status, length in cases:
        answer = raw(port, f"GET /v2/team/app/blobs/{digest} HTTP/1.1\r\nRange: {header}\r\n"
                           f"Connection: close\r\n\r\n".encode("latin-1"))
        assert statuses(answer) == [status], (header[:40], answer[:300])
        head, _, body = answer.partition(b"\r\n\r\n")
        if length is not None:
            assert len(body) == length, header[:40]
        else:
            assert f"Content-Range: bytes */{size}".encode() in head and len(body) < 1024, header[:40]


def test_writes_are_refused_without_reading_or_inviting_the_body(hostile_served):
    port = hostile_served.port
    for request in (b"POST /v2/team/app/blobs/uploads/ HTTP/1.1\r\nContent-Length: 10000000000\r\n\r\nabc",
                    b"PATCH /v2/team/app/blobs/uploads/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\nab",
                    b"PUT /v2/team/app/manifests/1 HTTP/1.1\r\nContent-Length: 10000000000\r\n"
                    b"Expect: 100-continue\r\n\r\n"):
        started = time.monotonic()
        answer = raw(port, request)
        # No "100 Continue" first: that would invite the 10 GB body.
        assert statuses(answer) == [405], answer[:300]
        assert time.monotonic() - started < 5


def test_pipelined_requests_and_a_get_with_a_body_cannot_smuggle_a_request(hostile_served):
    port = hostile_served.port
    answer = raw(port, b"GET /v2/ HTTP/1.1\r\n\r\nGET /v2/_catalog HTTP/1.1\r\n\r\n"
                       b"HEAD /v2/team/app/manifests/1 HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert statuses(answer) == [200, 200, 200], answer
    # The body of a GET is not read: the bytes after it must not be taken as a second request.
    answer = raw(port, b"GET /v2/ HTTP/1.1\r\nContent-Length: 5\r\n\r\nGET /v2/_catalog HTTP/1.1\r\n\r\n")
    assert statuses(answer) == [200] and b"repositories" not in answer, answer
    answer = raw(port, b"GET /v2/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                       b"GET /v2/_catalog HTTP/1.1\r\n\r\n")
    assert statuses(answer) == [200] and b"repositories" not in answer, answer


def test_a_slowloris_client_is_dropped_within_the_stall_timeout(hostile_served):
    port = hostile_served.port
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.settimeout(0.25)
        started = time.monotonic()
        dropped = None
        for byte in b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
            try:
                sock.send(bytes([byte]))
                if sock.recv(100) == b"":
                    dropped = time.monotonic() - started
                    break
            except socket.timeout:
                continue
            except OSError:
                dropped = time.monotonic() - started
                break
    # Before: every byte restarted a 600 s socket timeout, so the slot was held for ever.
    assert dropped is not None and STALL - 0.5 < dropped < STALL + 3, dropped
    assert get_whole(port, hostile_served.small["digest"])[0] == 200


def test_a_client_that_stops_reading_mid_layer_is_dropped_and_the_layer_still_serves(hostile_served):
    port, big = hostile_served.port, hostile_served.big
    path = f"/v2/team/app/blobs/{big['digest']}"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert stalled.recv(12) == b"HTTP/1.1 200"
        # Others are served while it stalls, and after the stall timeout its request ends.
        assert get_whole(port, big["digest"]) == (200, big["digest"])
        deadline = time.monotonic() + STALL + 10
        while time.monotonic() < deadline:
            ended = [float(seconds) for sent, seconds in
                     re.findall(rf'"GET {path} HTTP/1\.1" 200 (\d+) ([\d.]+)s', hostile_served.log())
                     if int(sent) < big["size"]]
            if ended:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the stalled response never ended: {hostile_served.log()[-2000:]}")
        assert ended[0] < STALL + 5
    # Clients that vanish while the layer is being sent leave nothing stuck either.
    for _ in range(4):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert get_whole(port, big["digest"]) == (200, big["digest"])


def test_a_repository_damaged_while_served_gives_errors_not_a_dead_server(tmp_path):
    repo = make_repo(tmp_path, {"team/app:1": [{"etc/base.txt": b"base\n"}, {"app.bin": 1 << 20}],
                                "other:1": [{"etc/base.txt": b"base\n"}]})
    served = start_serving(repo, tmp_path)
    try:
        manifest = json.loads(served.request("GET", "/v2/team/app/manifests/1")[2])
        base, top = manifest["layers"][0]["digest"], manifest["layers"][1]["digest"]
        layers = os.path.join(repo, "layers", "sha256")
        # A layer's bytes replaced by another layer's: cut off or refused, never served whole.
        with open(os.path.join(layers, base[7:]), "rb") as f:
            other = f.read()
        with open(os.path.join(layers, top[7:]), "wb") as f:
            f.write(other)
        status, _, body = served.request("GET", f"/v2/team/app/blobs/{top}")
        assert status == 500 and json.loads(body)["errors"][0]["code"] == "UNKNOWN", (status, body[:200])
        assert str(tmp_path).encode() not in body, body  # where the repository lives is the server's to know
        os.unlink(os.path.join(layers, top[7:]))
        assert served.error_code("GET", f"/v2/team/app/blobs/{top}", 404) == "BLOB_UNKNOWN"
        assert str(tmp_path).encode() not in served.request("GET", f"/v2/team/app/blobs/{top}")[2]
        os.unlink(os.path.join(repo, "repositories", "team", "app", "_tags", "1"))
        assert served.error_code("GET", "/v2/team/app/manifests/1", 404) == "NAME_UNKNOWN"
        assert served.json("/v2/_catalog")[0] == {"repositories": ["other"]}
        os.rename(repo, repo + ".gone")
        assert served.json("/v2/_catalog")[0] == {"repositories": []}
        assert served.error_code("GET", "/v2/other/manifests/1", 404) == "NAME_UNKNOWN"
        os.rename(repo + ".gone", repo)
        assert served.request("GET", "/v2/other/manifests/1")[0] == 200
    finally:
        assert served.stop() == 0, served.log()
    assert "Traceback" not in served.log() and "internal error" not in served.log()


# -- plumbing records ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def plumbing_repo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plumbing")
    repo = make_repo(tmp, {"team/app:1": [{"etc/base.txt": b"base\n"}, {"app.txt": b"app\n"}],
                           "other:1": [{"etc/base.txt": b"base\n"}]})
    image_id = dogestry("resolve-ref", repo, "team/app:1").stdout.split()[0].decode()
    return repo, image_id


def refs_of(repo):
    return dogestry("show-ref", repo).stdout.decode()


def test_records_of_the_other_mode_or_with_junk_are_refused_not_half_taken(plumbing_repo):
    repo, image_id = plumbing_repo
    walk = dogestry("walk-ancestry", repo, "team/app:1").stdout
    before = refs_of(repo)
    cases = [  # (command, input): each was taken in part, the rest silently dropped, exit 0
        (["update-ref", "-z", "--stdin"], f"{image_id} a:1\n{image_id} b:2\0".encode()),
        (["update-ref", "--stdin"], f"{image_id} c:1 junk more\n".encode()),
        (["update-ref", "--stdin"], f"{image_id} d:1\r{image_id} e:1\r".encode()),  # CR-only line ends
        (["update-ref", "--stdin"], f"{image_id}\0 f:1\n".encode()),
        (["update-ref", "--stdin"], walk),                                 # object records: wrong kind
        (["build-load-tar", "--stdin"], walk),
        (["resolve-ref", "--stdin"], b"team/app:1 other:1 junk\n"),
        (["sync-objects", "-z", "--stdin"], walk.replace(b"\n", b"\0", 1)),  # a -z record holding a newline
        (["update-ref", "--stdin"], b"\xef\xbb\xbf" + f"{image_id} g:1\n".encode()),  # a BOM
        (["update-ref", "--stdin"], f"{image_id} {'a' * 60000}:1\n".encode()),
    ]
    for args, data in cases:
        target = [repo, str(plumbing_repo[0]) + "-dst"] if args[0] == "sync-objects" else [repo]
        proc = dogestry(*args, *target, input=data, check=False)
        err = one_line_error(proc, 2)
        assert len(err) < 1000 and proc.stdout == b"", (args, err)
    assert refs_of(repo) == before
    assert not os.path.exists(str(plumbing_repo[0]) + "-dst/layers")


def test_a_hundred_thousand_records_stream_in_bounded_time(plumbing_repo, tmp_path):
    repo, image_id = plumbing_repo
    started = time.monotonic()
    out = dogestry("resolve-ref", "--stdin", repo, input=f"{image_id}\n".encode() * 100000).stdout
    assert out == f"{image_id}\n".encode() * 100000
    walk = dogestry("walk-ancestry", repo, "team/app:1").stdout
    out = dogestry("sync-objects", "--stdin", "-z", repo, str(tmp_path / "dst"),
                   input=walk.replace(b"\n", b"\0") * 25000).stdout
    assert sorted(out.split(b"\0")[:-1]) == sorted(b" ".join(line.split()[:2]) for line in walk.splitlines())
    dogestry("update-ref", "--stdin", repo, input=f"{image_id} many:1\n".encode() * 100000)
    assert f"{image_id} many:1\n" in refs_of(repo)
    assert time.monotonic() - started < 60


# -- signals ------------------------------------------------------------------------------
def _wait_for(predicate, proc, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def _open_files(pid):
    try:
        return [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return []


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_or_sighup_mid_push_and_mid_pull_is_one_line_and_leaves_nothing(engine_named, tmp_path, unique,
                                                                                signame):
    """Before: the default action killed the process on the spot: no message, and the spool
    of the layer in flight (`.spool/.layer-*`) left in the repository for the next push."""
    import signal as signals
    import subprocess
    import sys

    from conftest import BIN

    signum = getattr(signals, signame)
    d20 = engine_named("d20")
    d20.import_base(f"sig-{unique}:base")
    image = f"sig-{unique}:1"
    d20.build(image, f"sig-{unique}:base", {"hello": "hello\n"}, big=48 << 20)
    repo = tmp_path / "repo"
    env = d20.env()
    push = subprocess.Popen([sys.executable, BIN, "push", str(repo), image], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    spool = repo / ".spool"

    def spooling():
        try:
            return any(p.name.startswith(".layer-") and p.stat().st_size > (1 << 20) for p in spool.iterdir())
        except FileNotFoundError:  # not made yet, or that spool just published
            return False

    assert _wait_for(spooling, push), push.communicate()
    push.send_signal(signum)
    out, err = push.communicate(timeout=60)
    assert push.returncode == 128 + signum, (push.returncode, err)
    assert err.decode() == f"dogestry: terminated by {signame}\n" and out == b""
    assert list(spool.iterdir()) == [] and not (repo / "repositories").exists()
    leftovers = [p for p in repo.rglob(".*") if p != spool]
    assert leftovers == [], leftovers

    dogestry("push", str(repo), image, env=env)
    image_id = d20.inspect(image)["Id"]
    d20.rmi(image, f"sig-{unique}:base")
    big_layer = max((repo / "layers" / "sha256").glob("*[0-9a-f]"), key=lambda p: p.stat().st_size)
    pull = subprocess.Popen([sys.executable, BIN, "pull", str(repo), image], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert _wait_for(lambda: str(big_layer) in _open_files(pull.pid), pull), pull.communicate()
    pull.send_signal(signum)
    out, err = pull.communicate(timeout=60)
    assert pull.returncode == 128 + signum, (pull.returncode, err)
    assert err.decode() == f"dogestry: terminated by {signame}\n"
    assert d20.inspect(image) is None and d20.inspect(image_id) is None  # the engine as it was
    dogestry("pull", str(repo), image, env=env)
    assert d20.run(image, "cat", "/hello") == "hello\n"


def test_sighup_inherited_as_ignored_stays_ignored(tmp_path, plumbing_repo):
    """`nohup dogestry serve ...` must outlive the terminal: an ignored SIGHUP stays ignored."""
    import signal as signals
    import subprocess
    import sys

    from conftest import BIN

    repo, _ = plumbing_repo
    script = ("import signal, sys, os; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
              f"os.execv(sys.executable, [sys.executable, {BIN!r}, 'serve', {repo!r}, '--listen', '127.0.0.1:0'])")
    served = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert _wait_for(lambda: _listening(served.pid), served, 30)
        served.send_signal(signals.SIGHUP)
        time.sleep(0.5)
        assert served.poll() is None
    finally:
        served.send_signal(signals.SIGTERM)
        assert served.wait(20) == 0, served.stderr.read()


def _listening(pid):
    return any(target.startswith("socket:") for target in _open_files(pid))


# -- odd names across engines ----------------------------------------------------------------
@pytest.mark.parametrize("source,target", [("d20", "d26c"), ("d26c", "d20")])
def test_odd_names_push_and_pull_as_a_docker_user_expects(engine_named, tmp_path, unique, source, target):
    src, dst = engine_named(source), engine_named(target)
    u = unique[:6]
    src.import_base(f"names{u}:base")
    # (what the user types, what `docker images` shows for it)
    # Not `library/app`: dogestry keeps it as typed while docker shows `app` (reported; the
    # fix belongs with repo.ref_of_key, which must keep reading refs older versions wrote).
    names = [(f"docker.io/library/app{u}:1", f"app{u}:1"), (f"app{u}:2", f"app{u}:2"),
             (f"app{u}", f"app{u}:latest"), (f"localhost/app{u}", f"localhost/app{u}:latest"),
             (f"LOCALHOST:5000/app{u}:1", f"LOCALHOST:5000/app{u}:1"),
             (f"127.0.0.1:5000/a{u}/b:1", f"127.0.0.1:5000/a{u}/b:1"),
             (f"a__b{u}:1", f"a__b{u}:1"), (f"a---b{u}:1", f"a---b{u}:1"), (f"app{u}:" + "t" * 128, f"app{u}:" + "t" * 128)]
    for typed, shown in names:
        colon, slash = typed.rfind(":"), typed.rfind("/")
        src.api.tag(f"names{u}:base", *((typed[:colon], typed[colon + 1:]) if colon > slash else (typed, "latest")))
        src.created.append(shown)
        dst.created.append(shown)
    assert {shown for _, shown in names} <= src.tags()
    repo = str(tmp_path / "repo")
    pushed = dogestry("push", repo, *[typed for typed, _ in names], env=src.env()).stdout.decode()
    listed = {line.split()[1] for line in dogestry("show-ref", repo).stdout.decode().splitlines()}
    assert listed == {shown for _, shown in names}, (listed, pushed)
    for typed, shown in names:  # pulled by what was typed or by what docker shows: the same ref
        proc = dogestry("pull", repo, typed, env=dst.env())
        assert proc.stdout.decode().split()[1] == shown
    assert {shown for _, shown in names} <= dst.tags()
    assert dst.run(f"app{u}:2", "cat", "/salt")
    # by id: short, full, sha256:-prefixed, and the source engine's own id (an alias on d26c)
    image_id = pushed.split()[0]
    for ref in (image_id[7:19], image_id, image_id[7:], src.inspect(f"names{u}:base")["Id"]):
        proc = dogestry("pull", repo, ref, env=dst.env())
        assert proc.stdout.decode().split()[0] == image_id, ref
    for bad in ("sha256:", "", f"a..b{u}:1", "a" * 256 + ":1", f"app{u}:" + "t" * 129, f"App{u}:1"):
        one_line_error(dogestry("pull", repo, bad, env=dst.env(), check=False), 2)


# -- configuration and environment ------------------------------------------------------------
def _rule(proc, started, what):
    """rc 0, or a failure told in `dogestry: ` lines (retry notices, then the error), fast."""
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode in (0, 1, 2), (what, proc.returncode, err)
    assert "Traceback" not in err and "internal error" not in err, (what, err)
    if proc.returncode:
        assert err and all(line.startswith("dogestry: ") for line in err.splitlines()), (what, err)
        assert len(err.splitlines()[-1]) < 1000, (what, err[:300])
    assert time.monotonic() - started < 30, what


def test_hostile_config_files_and_values(plumbing_repo, tmp_path):
    import subprocess
    import sys

    from conftest import BIN

    repo, _ = plumbing_repo
    cfg = tmp_path / "dogestry.cfg"
    texts = {
        "percent": '[dogestry]\n  temp-dir = /tmp/%(foo)s\n[remote "a%b"]\n  url = /tmp/%%x\n',
        "dollar": "[dogestry]\n  temp-dir = ${HOME}/x\n",
        "10 MB line": "[dogestry]\n  temp-dir = " + "a" * (10 << 20) + "\n",
        "binary": "[dogestry]\n\x00\xff\xfe\n",
        "duplicates": "[compressor]\n lz4 = false\n[compressor]\n lz4 = true\n lz4 = true\n",
        "odd sections": '[remote "]"]\n url = /tmp\n[ remote "a\\"b" ]\n url=/x\n[...]\n',
        "NUL in a value": "[dogestry]\n stall-timeout = 5\x00\n",
        "BOM": "\ufeff[dogestry]\n stall-timeout = 5\n",
        "CR line ends": "[dogestry]\r stall-timeout = 5\r",
        "unterminated section": '[remote "x\n url = /tmp\n',
    }
    for value in ("nan", "-1", "1e999", "", "x" * 3000, "inf", "0", '"unterminated'):
        texts[f"stall-timeout {value[:10]}"] = f"[dogestry]\n  stall-timeout = {value}\n"
        texts[f"lz4 {value[:10]}"] = f"[compressor]\n  lz4 = {value}\n"
    for name, text in texts.items():
        cfg.write_bytes(text.encode("utf-8", "surrogateescape"))
        started = time.monotonic()
        proc = subprocess.run([sys.executable, BIN, "--config", str(cfg), "show-ref", repo], capture_output=True,
                              timeout=60)
        _rule(proc, started, name)
        if proc.returncode == 0:
            assert b"team/app:1" in proc.stdout, name
    env = dict(os.environ)
    for name, value in [("DOGESTRY_STALL_TIMEOUT", "nan"), ("DOGESTRY_STALL_TIMEOUT", "1e999"),
                        ("DOGESTRY_STALL_TIMEOUT", "x" * 3000), ("DOGESTRY_CONFIG", "/dev/zero"),
                        ("DOGESTRY_CONFIG", str(tmp_path)), ("DOGESTRY_CONFIG", "/nonexistent-dir/x.cfg"),
                        ("DOGESTRY_TEMP_DIR", str(cfg)), ("TMPDIR", str(cfg)), ("HOME", "/nonexistent-dir")]:
        started = time.monotonic()
        proc = subprocess.run([sys.executable, BIN, "show-ref", repo], capture_output=True, timeout=60,
                              env=dict(env, **{name: value}))
        _rule(proc, started, (name, value[:20]))


def test_hostile_aws_environment(seaweed, plumbing_repo, tmp_path):
    import subprocess
    import sys

    from conftest import BIN

    repo, image_id = plumbing_repo
    remote = seaweed.url(f"hostile-env-{uuid_hex()}")
    dogestry("sync-objects", "--image", image_id, repo, remote, env=seaweed.env())
    dogestry("update-ref", remote, "team/app:1", image_id, env=seaweed.env())
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(os.urandom(3000))
    with socket.socket() as probe:  # a port nobody listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
        cases = [(var, value) for var in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")
                 for value in ("/dev/zero", str(fifo), str(tmp_path), str(garbage))]
        # Not a 1 GB file: botocore reads it whole (9.7 GB peak RSS, 15 s) before failing with
        # one line; reported, the guard belongs in backends/s3.py.
        cases += [("AWS_PROFILE", "no-such-profile"), ("AWS_DEFAULT_REGION", "x" * 3000),
                  ("AWS_DEFAULT_REGION", "../../etc"), ("AWS_REGION", "%(x)s"), ("HTTP_PROXY", dead),
                  ("HTTPS_PROXY", dead), ("AWS_MAX_ATTEMPTS", "nan"), ("AWS_RETRY_MODE", "x"),
                  ("AWS_CA_BUNDLE", "/dev/zero"), ("DOGESTRY_STALL_TIMEOUT", "x" * 3000)]
        for var, value in cases:
            env = dict(seaweed.env(), DOGESTRY_STALL_TIMEOUT="2")
            env[var] = value
            started = time.monotonic()
            proc = subprocess.run([sys.executable, BIN, "show-ref", remote], capture_output=True, env=env,
                                  timeout=60)
            _rule(proc, started, (var, value[:30]))
            if proc.returncode == 0:
                assert proc.stdout.decode() == f"{image_id} team/app:1\n", (var, value[:30])
            for secret in (seaweed.secret, seaweed.key_id):
                assert secret.encode() not in proc.stderr + proc.stdout


def uuid_hex():
    import uuid

    return uuid.uuid4().hex[:10]


def test_a_sigterm_landing_while_a_connection_is_handed_to_its_thread_still_stops_serve(plumbing_repo, monkeypatch):
    """Seen under load in test_serve: the SIGTERM's KeyboardInterrupt arrived in the main
    thread just after a fast request's thread had started, finished and released its slot;
    the slot was released again, "Semaphore released too many times" replaced the interrupt,
    and `serve` never stopped. Made deterministic here: Thread.start runs the connection to
    its end, then the interrupt lands."""
    import threading

    from dogestry import serve
    from dogestry.backends import open_backend
    from dogestry.repo import Repository

    server = serve.Server(Repository(open_backend(plumbing_repo[0])))
    server.bind()
    httpd = server._httpd
    real_start = threading.Thread.start

    def start_then_interrupt(thread):
        if thread.name != "dogestry-serve-client":
            return real_start(thread)
        thread.run()
        raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", start_then_interrupt)
    try:
        client = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        client.sendall(b"GET /v2/ HTTP/1.1\r\nConnection: close\r\n\r\n")
        with pytest.raises(KeyboardInterrupt):
            httpd._handle_request_noblock()
        assert statuses(client.recv(4096)) == [200]
        client.close()
        # Every slot is free again, and no more than every slot.
        for _ in range(serve.MAX_CONNECTIONS):
            assert httpd._connections.acquire(blocking=False)
        assert not httpd._connections.acquire(blocking=False)
    finally:
        monkeypatch.undo()
        server.stop()


def test_a_storage_that_cannot_be_reached_is_a_500_that_hides_the_endpoint(tmp_path):
    """serve over S3 whose endpoint fails for ever once it started: each request answers 500
    within the retry budget, and the body names neither the bucket nor the endpoint (only the
    server's log does), as for a local directory's path."""
    from test_hostile_servers import FakeS3

    store = FakeS3({"pre/dogestry.json": b'{"format": "dogestry-repository", "version": 2}\n'},
                   bucket="hidden-bucket")
    env = dict(os.environ, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y", AWS_DEFAULT_REGION="us-east-1")
    served = start_serving(store.url, tmp_path, env=env)
    try:
        assert served.json("/v2/_catalog")[0] == {"repositories": []}
        store.fault = lambda server, h, *request: server.error(h, 503, "ServiceUnavailable") or True
        started = time.monotonic()
        status, _, body = served.request("GET", "/v2/_catalog")
        assert status == 500 and json.loads(body)["errors"][0]["code"] == "UNKNOWN", (status, body[:300])
        assert time.monotonic() - started < 60
        assert store.endpoint[len("http://"):].encode() not in body and b"hidden-bucket" not in body, body
        assert store.endpoint in served.log()  # the operator's log keeps the whole story
    finally:
        served.stop()
        store.close()


def test_an_error_body_names_no_path_a_link_out_leads_to(tmp_path):
    """A local repository whose repositories/ links out of it: serve answers 500, and the
    body says what failed without the link's target (only the server's log has it)."""
    repo = make_repo(tmp_path, {"other:1": [{"etc/base.txt": b"base\n"}]})
    secret = tmp_path / "elsewhere-secret"
    os.rename(os.path.join(repo, "repositories"), secret)
    os.symlink(secret, os.path.join(repo, "repositories"))
    served = start_serving(repo, tmp_path)
    try:
        status, _, body = served.request("GET", "/v2/_catalog")
        assert status == 500 and b"link out of the repository" in body, (status, body[:300])
        assert b"elsewhere-secret" not in body and str(tmp_path).encode() not in body, body
        assert "elsewhere-secret" in served.log()
    finally:
        served.stop()
