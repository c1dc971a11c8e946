"""Hostile servers and hostile repositories, through bin/dogestry as a user meets them.

A small threaded S3 server written here (path-style, no signature check, objects in a dict)
serves a real repository (saved by the real CLI from a docker-save tar) and misbehaves on
cue: listings that never end or are not S3's, keys no writer makes, bodies longer, shorter
or slower than they should be, answers that are errors forever, redirects to other hosts,
writes answered 200 that keep nothing or other bytes. The rule for every case: one line on
stderr starting `dogestry: ` (notices of retries before it are lines of that form too),
exit 1 (2 for usage), never `internal error`, never a hang beyond the stall timeout, never
unbounded memory, and nothing half-written: a failed push publishes no ref.
RELIABILITY.md (*Hostile servers*) lists the cases.
"""

import hashlib
import http.server
import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
import uuid
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

import pytest

from conftest import BIN, send_chunked, send_whole
from test_fuzz import SEEDS

STALL = 3  # DOGESTRY_STALL_TIMEOUT: every network case must end within a few times this
ENV = dict(os.environ, AWS_ACCESS_KEY_ID="AKIAHOSTILE", AWS_SECRET_ACCESS_KEY="hostilesecret0123",
           DOGESTRY_STALL_TIMEOUT=str(STALL))
for _var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
    ENV.pop(_var, None)

# Runs bin/dogestry and writes its peak RSS (VmHWM, kB) to the file named by the environment,
# so a case can bound memory without trusting the dogestry process to say it.
PEAK = """
import os, runpy, sys
sys.argv = [{bin!r}] + sys.argv[1:]
try:
    runpy.run_path({bin!r}, run_name="__main__")
finally:
    with open("/proc/self/status") as f:
        peak = [line.split()[1] for line in f if line.startswith("VmHWM")][0]
    with open(os.environ["PEAK_FILE"], "w") as out:
        out.write(peak)
""".format(bin=BIN)


def run(*args, env=None, input=b"", limit=60, peak=None):
    """bin/dogestry with a time limit: a hang is this suite's failure, not CI's."""
    env = dict(ENV, **(env or {}))
    cmd = [sys.executable, BIN, *args]
    if peak is not None:
        env["PEAK_FILE"] = str(peak)
        cmd = [sys.executable, "-c", PEAK, *args]
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, env=env, input=input, timeout=limit)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"dogestry {' '.join(args)[:200]} still ran after {limit} s") from None
    proc.seconds = time.monotonic() - started
    return proc


def one_line_error(proc, status=1, within=None):
    """The error line of a failed run; earlier lines may only be `dogestry: ` notices."""
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == status, (proc.returncode, err[-2000:])
    assert "internal error" not in err and "Traceback" not in err, err[-2000:]
    lines = err.splitlines()
    assert lines and all(line.startswith("dogestry: ") for line in lines), err[-2000:]
    assert len(lines[-1]) < 1000, f"a {len(lines[-1])}-character error"
    assert "hostilesecret" not in err + proc.stdout.decode("utf-8", "replace")
    if within is not None:
        assert proc.seconds < within, f"took {proc.seconds:.1f} s: {err[-500:]}"
    return lines[-1]


# -- a hostile S3 server ---------------------------------------------------------------

class FakeS3:
    """Just enough S3 to hold a repository. `fault(server, handler, method, key, query, body)`
    sees every request first and answers it itself by returning True."""

    def __init__(self, objects=(), bucket="bkt"):
        self.bucket, self.objects, self.uploads = bucket, dict(objects), {}
        self.fault = None
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer._handle(self, "GET")

            do_HEAD = lambda self: outer._handle(self, "HEAD")  # noqa: E731
            do_PUT = lambda self: outer._handle(self, "PUT")  # noqa: E731
            do_POST = lambda self: outer._handle(self, "POST")  # noqa: E731
            do_DELETE = lambda self: outer._handle(self, "DELETE")  # noqa: E731

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

            def handle_error(self, request, address):
                pass  # a client that hangs up on a trickle is part of the test

        self.server = Server(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"s3://{bucket}/pre/?endpoint={self.endpoint}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def send(h, status, body=b"", headers=(), length=None, ctype="application/xml"):
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        for name, value in headers:
            h.send_header(name, value)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
        h.wfile.flush()

    def error(self, h, status, code):
        self.send(h, status, f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>no</Message></Error>".encode())

    def _handle(self, h, method):
        parts = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0)) if method in ("PUT", "POST") else b""
        self.requests.append((method, key))
        if self.fault and self.fault(self, h, method, key, query, body):
            return
        if bucket != self.bucket:
            return self.error(h, 404, "NoSuchBucket")
        if not key:
            if "uploads" in query:
                return self.send(h, 200, b"<ListMultipartUploadsResult><IsTruncated>false</IsTruncated>"
                                         b"</ListMultipartUploadsResult>")
            prefix = query.get("prefix", "")
            return self.send(h, 200, self.listing(sorted(k for k in self.objects if k.startswith(prefix))))
        if method in ("GET", "HEAD"):
            if key not in self.objects:
                return self.send(h, 404) if method == "HEAD" else self.error(h, 404, "NoSuchKey")
            data = self.objects[key]
            if method == "GET" and h.headers.get("Range"):
                first, last = (int(x) for x in h.headers["Range"].split("=")[1].split("-"))
                last = min(last, len(data) - 1)
                return self.send(h, 206, data[first:last + 1], ctype="application/octet-stream",
                                 headers=[("Content-Range", f"bytes {first}-{last}/{len(data)}")])
            return self.send(h, 200, data, ctype="application/octet-stream",
                             headers=[("ETag", f'"{hashlib.md5(data).hexdigest()}"')])
        if method == "PUT" and "uploadId" in query:
            self.uploads[query["uploadId"]][int(query["partNumber"])] = body
            return self.send(h, 200, headers=[("ETag", f'"{hashlib.md5(body).hexdigest()}"')])
        if method == "PUT":
            if h.headers.get("If-None-Match") == "*" and key in self.objects:
                return self.error(h, 412, "PreconditionFailed")
            self.objects[key] = body
            return self.send(h, 200, headers=[("ETag", f'"{hashlib.md5(body).hexdigest()}"')])
        if method == "POST" and "uploads" in query:
            upload = uuid.uuid4().hex
            self.uploads[upload] = {}
            return self.send(h, 200, f"<InitiateMultipartUploadResult><Key>{escape(key)}</Key>"
                                     f"<UploadId>{upload}</UploadId></InitiateMultipartUploadResult>".encode())
        if method == "POST" and "uploadId" in query:
            parts_ = self.uploads.pop(query["uploadId"])
            if h.headers.get("If-None-Match") == "*" and key in self.objects:
                return self.error(h, 412, "PreconditionFailed")
            self.objects[key] = b"".join(parts_[n] for n in sorted(parts_))
            return self.send(h, 200, b"<CompleteMultipartUploadResult><ETag>\"x-1\"</ETag>"
                                     b"</CompleteMultipartUploadResult>")
        if method == "DELETE":
            self.objects.pop(key, None)
            return self.send(h, 204)
        return self.error(h, 400, "InvalidRequest")

    def listing(self, keys, truncated=False, token=None, size=None):
        items = "".join(f"<Contents><Key>{escape(k)}</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified>"
                        f"<Size>{len(self.objects.get(k, b'')) if size is None else size}</Size></Contents>"
                        for k in keys)
        more = f"<NextContinuationToken>{escape(token)}</NextContinuationToken>" if token else ""
        return (f"<?xml version='1.0' encoding='UTF-8'?><ListBucketResult><Name>{self.bucket}</Name>"
                f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>{more}{items}"
                "</ListBucketResult>").encode("utf-8", "surrogateescape")


@pytest.fixture(scope="module")
def seed_objects(tmp_path_factory):
    """The keys of a real repository (one image, ref app:1) as the fake serves them."""
    root = tmp_path_factory.mktemp("seed") / "repo"
    saved = run("save-to-repo", "--input", "-", str(root), input=SEEDS["docker-v1"])
    assert saved.returncode == 0, saved.stderr
    image_id = saved.stdout.split()[0].decode()
    assert run("update-ref", str(root), "app:1", image_id).returncode == 0
    objects = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                objects["pre/" + os.path.relpath(full, root)] = f.read()
    return objects


@pytest.fixture
def s3(seed_objects):
    server = FakeS3(seed_objects)
    yield server
    server.close()


def _is_ref(key):
    return "/repositories/" in key


def _is_layer(key):
    return "/layers/" in key and not key.endswith(".json")


def test_the_fake_serves_a_repository_the_cli_reads_whole(s3):
    assert run("show-ref", s3.url).stdout.decode().endswith(" app:1\n")
    assert run("verify", s3.url).returncode == 0
    tar = run("build-load-tar", s3.url, "app:1")
    assert tar.returncode == 0 and b"manifest.json" in tar.stdout


# -- listings ---------------------------------------------------------------------------

def _listing_fault(make_page):
    """A fault answering every ListObjectsV2 with make_page(server, prefix, continuation token)."""
    def fault(server, h, method, key, query, body):
        if method == "GET" and not key and "uploads" not in query:
            server.send(h, 200, make_page(server, query.get("prefix", ""), query.get("continuation-token", "")))
            return True
    return fault


def _first_keys(server, prefix):
    return sorted(k for k in server.objects if k.startswith(prefix))[:3]


ENDLESS = {
    # IsTruncated true for ever, with the same token
    "same-token": lambda s, p, t: s.listing(_first_keys(s, p), True, "again"),
    # tokens a, b, a, b, ...
    "cycling-tokens": lambda s, p, t: s.listing(_first_keys(s, p), True, {"": "a", "a": "b", "b": "a"}[t]),
    # a new token each time, the same page each time
    "counting-tokens": lambda s, p, t: s.listing(_first_keys(s, p), True, str(int(t or 0) + 1)),
    # truncated, no token at all
    "no-token": lambda s, p, t: s.listing(_first_keys(s, p), True, None),
    # empty pages for ever
    "empty-pages": lambda s, p, t: s.listing([], True, str(int(t or 0) + 1)),
}


@pytest.mark.parametrize("case", sorted(ENDLESS))
def test_a_listing_that_never_ends_is_one_error(s3, case):
    s3.fault = _listing_fault(ENDLESS[case])
    commands = [["show-ref", s3.url], ["tag", s3.url, "app:1", "app:2"]]
    if case == "same-token":
        commands += [["gc", "--dry-run", s3.url], ["list", s3.url], ["verify", s3.url], ["remote", s3.url]]
    for args in commands:
        line = one_line_error(run(*args), within=30)
        assert s3.endpoint in line and ("does not end" in line or "continuation" in line), (args, line)
    assert not any(k.endswith("_tags/2") for k in s3.objects)


def _with_extra_keys(extra):
    def page(server, prefix, token):
        return server.listing(sorted(k for k in server.objects if k.startswith(prefix)) + [e for e in extra])
    return page


def test_listed_keys_no_writer_makes_are_ignored_and_never_deleted(s3):
    """Keys with `..`, `/` runs, a leading `/`, a dot-name, outside the prefix or 2000 bytes
    long: not repository objects, so no reader shows them and gc never touches them."""
    odd = ["pre/repositories/../../etc/_tags/x", "pre/repositories//app///_tags/2", "pre//images/sha256/x.json",
           "/abs/key", "elsewhere/repositories/app/_tags/9", "pre/repositories/app/_tags/.hidden",
           "pre/repositories/app/_tags/" + "a" * 2000, "pre/layers/sha256/a b%20.json"]
    s3.fault = _listing_fault(_with_extra_keys(odd))
    shown = run("show-ref", s3.url)
    assert shown.returncode == 0 and shown.stdout.decode().splitlines() == [shown.stdout.decode().split()[0] + " app:1"]
    assert run("list", s3.url).returncode == 0
    assert run("gc", "--dry-run", "--grace", "0", s3.url).stdout.startswith(b"would remove 0 object(s)")
    assert run("gc", "--grace", "0", s3.url).returncode == 0
    assert not any(method == "DELETE" and not key.startswith("pre/leases/") for method, key in s3.requests)


NOT_S3 = {
    "size-not-a-number": b"<ListBucketResult><IsTruncated>false</IsTruncated><Contents>"
                         b"<Key>pre/repositories/app/_tags/1</Key><Size>abc</Size></Contents></ListBucketResult>",
    "negative-size": b"<ListBucketResult><IsTruncated>false</IsTruncated><Contents>"
                     b"<Key>pre/repositories/app/_tags/1</Key><Size>-5</Size></Contents></ListBucketResult>",
    "malformed-xml": b"<ListBucketResult><Contents><Key>pre/x",
    "not-utf-8": b"<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>pre/repositories/app/_tags/\xff"
                 b"</Key><Size>1</Size></Contents></ListBucketResult>",
    "billion-laughs": b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
                      + b"".join(b'<!ENTITY %c "%s">' % (98 + i, (b"&%c;" % (97 + i)) * 10) for i in range(8))
                      + b"]><ListBucketResult><Name>&i;</Name><IsTruncated>false</IsTruncated></ListBucketResult>",
}


@pytest.mark.parametrize("case", sorted(NOT_S3))
def test_a_listing_that_is_not_s3s_is_one_error(s3, case):
    s3.fault = _listing_fault(lambda s, p, t: NOT_S3[case])
    one_line_error(run("show-ref", s3.url), within=6 * STALL)
    one_line_error(run("gc", "--dry-run", s3.url), within=6 * STALL)


# -- reads ------------------------------------------------------------------------------

def _body_fault(which, answer):
    def fault(server, h, method, key, query, body):
        if method == "GET" and key in server.objects and which(key):
            answer(server, h, server.objects[key])
            h.close_connection = True
            return True
    return fault


def _gigabyte(chunked):
    def answer(server, h, data):
        h.send_response(200)
        if chunked:
            h.send_header("Transfer-Encoding", "chunked")
        else:
            h.send_header("Content-Length", str(1 << 30))
        h.end_headers()
        chunk = b"0" * (1 << 20)
        try:
            for _ in range(1024):
                h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            if chunked:
                h.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client stopped reading: what it should do
    return answer


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_one_gigabyte_ref_is_refused_unread(s3, tmp_path, chunked):
    s3.fault = _body_fault(_is_ref, _gigabyte(chunked))
    for args in (["resolve-ref", s3.url, "app:1"], ["show-ref", s3.url]):
        peak = tmp_path / "peak"
        line = one_line_error(run(*args, peak=peak), within=20)
        assert "repositories/app/_tags/1" in line and "larger than" in line, line
        assert int(peak.read_text()) < 200 * 1024, f"peak RSS {peak.read_text()} kB"


def _wrong_length(delta):
    def answer(server, h, data):
        h.send_response(200)
        h.send_header("Content-Length", str(max(0, len(data) + delta)))
        h.end_headers()
        h.wfile.write(data if delta < 0 else data[:len(data) // 2])
    return answer


def _html(server, h, data):
    server.send(h, 200, b"<html><body>Please sign in</body></html>", ctype="text/html")


def _trickle(server, h, data):
    h.send_response(200)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    try:
        for i in range(len(data)):
            h.wfile.write(data[i:i + 1])
            h.wfile.flush()
            time.sleep(1)
    except OSError:
        pass


READS = {"longer-than-said": _wrong_length(-5), "shorter-than-said": _wrong_length(+100),
         "html-page": _html, "a-byte-a-second": _trickle}


@pytest.mark.parametrize("case", sorted(READS))
@pytest.mark.parametrize("what", ["ref", "layer"])
def test_a_body_that_is_not_the_object_is_one_error(s3, case, what):
    s3.fault = _body_fault(_is_ref if what == "ref" else _is_layer, READS[case])
    proc = run("resolve-ref", s3.url, "app:1") if what == "ref" else run("build-load-tar", s3.url, "app:1")
    line = one_line_error(proc, within=5 * STALL)
    assert ("repositories/app/_tags/1" if what == "ref" else "layers/sha256/") in line or "app:1" in line, line


def _status_fault(status, code, methods=("GET", "HEAD", "PUT", "POST", "DELETE")):
    def fault(server, h, method, key, query, body):
        if method in methods:
            server.error(h, status, code)
            return True
    return fault


@pytest.mark.parametrize("status,code", [(500, "InternalError"), (503, "SlowDown")])
def test_errors_for_ever_end_within_the_retry_budget(s3, status, code):
    s3.fault = _status_fault(status, code)
    for args in (["show-ref", s3.url], ["resolve-ref", s3.url, "app:1"], ["tag", s3.url, "app:1", "app:2"]):
        line = one_line_error(run(*args), within=4 * STALL)
        assert code in line and s3.endpoint in line, line
    assert len(s3.requests) < 60, f"{len(s3.requests)} requests for three commands"


def test_a_redirect_to_another_host_is_not_followed(s3):
    other = FakeS3({})
    try:
        def fault(server, h, method, key, query, body):
            server.send(h, 301, b"", headers=[("Location", f"{other.endpoint}/bkt/{key}")])
            return True
        s3.fault = fault
        for args in (["show-ref", s3.url], ["resolve-ref", s3.url, "app:1"]):
            one_line_error(run(*args), within=4 * STALL)
        assert other.requests == []
    finally:
        other.close()


@pytest.mark.parametrize("size", [0, 10 ** 15, -5])
def test_a_head_that_lies_about_a_layers_size(s3, size):
    def fault(server, h, method, key, query, body):
        if method == "HEAD" and _is_layer(key):
            h.send_response(200)
            h.send_header("Content-Length", str(size))
            h.end_headers()
            return True
    s3.fault = fault
    line = one_line_error(run("build-load-tar", s3.url, "app:1"), within=5 * STALL)
    assert "layers/sha256/" in line or "layer sha256:" in line, line


# -- writes -----------------------------------------------------------------------------

def _keeps(which, stored):
    """A fault answering a write of a matching key 200 while keeping `stored` (None: nothing)."""
    def fault(server, h, method, key, query, body):
        if which(key) and (method == "PUT" and "uploadId" not in query or method == "POST" and "uploadId" in query):
            server.uploads.pop(query.get("uploadId"), None)
            if stored is not None:
                server.objects[key] = stored
            server.send(h, 200, b"<CompleteMultipartUploadResult><ETag>\"x\"</ETag></CompleteMultipartUploadResult>",
                        headers=[("ETag", '"0123"')])
            return True
    return fault


LIES = {"layer": lambda k: _is_layer(k), "descriptor": lambda k: "/layers/" in k and k.endswith(".json"),
        "config": lambda k: "/configs/" in k, "record": lambda k: "/images/" in k,
        "marker": lambda k: k.endswith("/dogestry.json")}


@pytest.fixture(scope="module")
def tiny_image(request):
    from conftest import ENGINES, TestEngine

    if "d20" not in ENGINES:
        pytest.fail("engine d20 is not configured: run the tests with scripts/test")
    eng = TestEngine("d20", ENGINES["d20"])
    name = f"hostile{uuid.uuid4().hex[:8]}:1"
    eng.import_base(name, salt=name)
    yield eng, name
    eng.cleanup()


@pytest.mark.parametrize("stored", [None, b"{}"], ids=["nothing", "other"])
@pytest.mark.parametrize("what", sorted(LIES))
def test_a_store_that_loses_writes_gets_no_ref(tiny_image, what, stored):
    """PutObject answers 200 but keeps nothing, nothing at all, or other bytes: the push
    must notice before it writes the ref, and say so in one line."""
    eng, image = tiny_image
    server = FakeS3()
    try:
        server.fault = _keeps(LIES[what], stored)
        one_line_error(run("push", server.url, image, env={"DOCKER_HOST": eng.host}), within=30)
        assert not any(_is_ref(k) for k in server.objects), sorted(server.objects)
    finally:
        server.close()


# -- repositories written by other versions of dogestry -----------------------------------

@pytest.fixture
def local_repo(seed_objects, tmp_path):
    """The seed repository as a directory: (root, image id, [layer hex, base first])."""
    root = tmp_path / "repo"
    for key, data in seed_objects.items():
        path = root / key[len("pre/"):]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    image_id = (root / "repositories/app/_tags/1").read_text().strip()
    record = json.loads((root / f"images/sha256/{image_id[7:]}.json").read_text())
    return root, image_id, [layer["diff_id"][7:] for layer in record["layers"]]


def _recode(root, image_id, hexid, codec, encode=None, record_too=True):
    """Store layer hexid as another dogestry would: encoded by `encode` (None: bytes kept),
    its descriptor (and the image record's copy) naming `codec`."""
    import lz4.frame

    desc_path = root / f"layers/sha256/{hexid}.json"
    desc = json.loads(desc_path.read_text())
    if encode is not None:
        data = (root / f"layers/sha256/{hexid}").read_bytes()
        tar = lz4.frame.decompress(data) if desc["codec"] == "lz4" else data
        data = encode(tar)
        (root / f"layers/sha256/{hexid}").write_bytes(data)
        desc.update(digest="sha256:" + hashlib.sha256(data).hexdigest(), size=len(data))
    desc["codec"] = codec
    desc_path.write_text(json.dumps(desc))
    if record_too:
        record_path = root / f"images/sha256/{image_id[7:]}.json"
        record = json.loads(record_path.read_text())
        for layer in record["layers"]:
            if layer["diff_id"] == desc["diff_id"]:
                layer.update(desc)
        record_path.write_text(json.dumps(record))


def _gzip(data):
    import gzip

    return gzip.compress(data)


def _xz(data):
    import lzma

    return lzma.compress(data)


UNKNOWN_CODECS = {"zstd": ("zstd", None), "gzip": ("gzip", _gzip), "xz": ("xz", _xz), "empty": ("", None),
                  "not-a-string": (3, None)}


@pytest.mark.parametrize("case", sorted(UNKNOWN_CODECS))
@pytest.mark.parametrize("which", [0, 1], ids=["base", "top"])
def test_a_layer_in_a_codec_this_version_does_not_know(local_repo, case, which):
    """Read what can be read (list, walk-ancestry, gc), refuse the rest with one line naming
    the layer and the codec, never a traceback."""
    root, image_id, hexes = local_repo
    codec, encode = UNKNOWN_CODECS[case]
    _recode(root, image_id, hexes[which], codec, encode)
    if not isinstance(codec, str):
        line = one_line_error(run("build-load-tar", str(root), "app:1"))
        assert image_id[7:] in line or hexes[which] in line, line
        return
    assert run("list", str(root)).returncode == 0
    assert run("walk-ancestry", str(root), "app:1").returncode == 0
    assert run("gc", "--dry-run", str(root)).stdout.startswith(b"would remove 0 object(s)")
    line = one_line_error(run("build-load-tar", str(root), "app:1"))
    assert hexes[which] in line and f"codec {codec!r}" in line, line
    verify = run("verify", str(root))
    assert verify.returncode == 1 and hexes[which] in verify.stdout.decode(), verify.stdout


def test_a_pull_of_an_image_with_an_unknown_codec_leaves_the_engine_as_it_was(local_repo, tiny_image):
    eng, _ = tiny_image
    root, image_id, hexes = local_repo
    _recode(root, image_id, hexes[1], "gzip", _gzip)
    before = sorted(image["Id"] for image in eng.api.images(all=True))
    line = one_line_error(run("pull", str(root), "app:1", env={"DOCKER_HOST": eng.host}))
    assert hexes[1] in line and "'gzip'" in line, line
    assert sorted(image["Id"] for image in eng.api.images(all=True)) == before


def test_mixed_codecs_in_one_image_read_whole(local_repo):
    root, image_id, hexes = local_repo
    _recode(root, image_id, hexes[0], "none", lambda tar: tar)
    tar = run("build-load-tar", str(root), "app:1")
    assert tar.returncode == 0, tar.stderr
    assert run("verify", str(root)).returncode == 0


def test_one_layer_described_in_two_codecs(local_repo):
    """The record's copy says lz4, the descriptor (rewritten by another writer) says none and
    the bytes are raw: the descriptor that describes the bytes wins, or one line; never a
    half-read layer."""
    root, image_id, hexes = local_repo
    _recode(root, image_id, hexes[1], "none", lambda tar: tar, record_too=False)
    tar = run("build-load-tar", str(root), "app:1")
    if tar.returncode:
        line = one_line_error(tar)
        assert hexes[1] in line, line


def _lz4_frames(tar, trailer=b""):
    """tar as lz4's own tools may store it: three frames, the first followed by a skippable one."""
    import lz4.frame

    third = max(1, len(tar) // 3)
    skippable = (0x184D2A50).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"skip!"
    frames = [lz4.frame.compress(tar[i:i + third]) for i in range(0, len(tar), third)]
    return frames[0] + skippable + b"".join(frames[1:]) + trailer


def test_a_layer_stored_as_several_lz4_frames_reads_whole(local_repo, tiny_image):
    """Frames one after another are one lz4 stream (lz4 -d reads them so): before, the frames
    after the first were dropped when one read held the end of one frame and the start of the
    next, and the layer failed its diffID for no fault of its own."""
    eng, _ = tiny_image
    root, image_id, hexes = local_repo
    for hexid in dict.fromkeys(hexes):  # the seed has one layer twice
        _recode(root, image_id, hexid, "lz4", _lz4_frames)
    assert run("verify", str(root)).returncode == 0
    name = f"frames{uuid.uuid4().hex[:8]}:1"
    assert run("update-ref", str(root), name, image_id).returncode == 0
    eng.created.append(name)
    pulled = run("pull", str(root), name, env={"DOCKER_HOST": eng.host})
    assert pulled.returncode == 0, pulled.stderr
    assert eng.api.inspect_image(name)["RootFS"]["Layers"] == ["sha256:" + h for h in hexes]


def test_bytes_after_the_last_lz4_frame_are_damage(local_repo):
    root, image_id, hexes = local_repo
    _recode(root, image_id, hexes[1], "lz4", lambda tar: _lz4_frames(tar, trailer=b"not a frame"))
    line = one_line_error(run("build-load-tar", str(root), "app:1"))
    assert hexes[1] in line and "lz4" in line, line
    verify = run("verify", str(root))
    assert verify.returncode == 1 and hexes[1] in verify.stdout.decode(), verify.stdout


def test_an_image_record_with_fields_from_a_future_version(local_repo):
    root, image_id, hexes = local_repo
    record_path = root / f"images/sha256/{image_id[7:]}.json"
    record = json.loads(record_path.read_text())
    record["signatures"] = [{"keyid": "x", "sig": "y" * 100}]
    record["platform"] = {"os": "linux", "architecture": "riscv64"}
    for layer in record["layers"]:
        layer["annotations"] = {"org.example": "1"}
    record_path.write_text(json.dumps(record))
    desc_path = root / f"layers/sha256/{hexes[0]}.json"
    desc = json.loads(desc_path.read_text())
    desc["zstd_chunked_toc"] = "sha256:" + "0" * 64
    desc_path.write_text(json.dumps(desc))
    assert run("build-load-tar", str(root), "app:1").returncode == 0
    assert run("verify", str(root)).returncode == 0
    assert run("list", str(root)).returncode == 0


@pytest.mark.parametrize("ending", [b"\r\n", b"  \n", b"\n\n", b"\t", b""], ids=["crlf", "spaces", "two-newlines",
                                                                               "tab", "none"])
def test_refs_with_trailing_whitespace_another_writer_left(local_repo, ending):
    root, image_id, _ = local_repo
    (root / "repositories/app/_tags/1").write_bytes(image_id.encode() + ending)
    resolved = run("resolve-ref", str(root), "app:1")
    assert resolved.returncode == 0 and resolved.stdout.decode() == f"{image_id} app:1\n", resolved
    assert run("build-load-tar", str(root), "app:1").returncode == 0


def test_a_version_1_repository_reads_and_upgrades_on_write(local_repo):
    root, image_id, _ = local_repo
    (root / "dogestry.json").write_text(json.dumps({"format": "dogestry-repository", "version": 1}) + "\n")
    shutil.rmtree(root / "repositories")
    (root / "repositories/app").mkdir(parents=True)
    (root / "repositories/app/1").write_text(image_id + "\r\n")
    assert run("show-ref", str(root)).stdout.decode() == f"{image_id} app:1\n"
    assert run("build-load-tar", str(root), "app:1").returncode == 0
    assert run("tag", str(root), "app:1", "app:2").returncode == 0
    assert json.loads((root / "dogestry.json").read_text())["version"] == 2
    assert sorted(run("show-ref", str(root)).stdout.decode().splitlines()) == [f"{image_id} app:1", f"{image_id} app:2"]


# -- the process around dogestry ----------------------------------------------------------

def _shell(command, env=None, limit=60):
    try:
        return subprocess.run(["bash", "-c", command], capture_output=True, env=dict(ENV, **(env or {})),
                              timeout=limit)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{command[:200]} still ran after {limit} s") from None


@pytest.fixture
def many_refs(local_repo):
    root, image_id, _ = local_repo
    tags = root / "repositories/app/_tags"
    for n in range(3000):
        (tags / f"t{n}").write_text(image_id + "\n")
    return root


@pytest.mark.parametrize("command", ["show-ref {root}", "list {root}", "build-load-tar {root} app:t7",
                                     "walk-ancestry {root} app:t7"])
def test_a_reader_that_goes_away_is_not_an_error_to_report(many_refs, command):
    proc = _shell(f"{sys.executable} {BIN} {command.format(root=many_refs)} | head -c 10; "
                  "exit ${PIPESTATUS[0]}")
    assert proc.returncode in (0, 1) and proc.stderr == b"", proc.stderr
    assert len(proc.stdout) == 10


@pytest.mark.parametrize("command", ["show-ref {root}", "list {root}", "build-load-tar {root} app:t7"])
def test_a_closed_or_full_standard_output(many_refs, command):
    closed = _shell(f"{sys.executable} {BIN} {command.format(root=many_refs)} >&-")
    assert closed.returncode == 0 and closed.stderr == b"", closed.stderr
    full = _shell(f"{sys.executable} {BIN} {command.format(root=many_refs)} >/dev/full")
    line = one_line_error(full)
    assert "standard output" in line and "No space left" in line, line


def test_a_tag_written_with_standard_output_closed_is_written(local_repo):
    root, image_id, _ = local_repo
    proc = _shell(f"{sys.executable} {BIN} tag {root} app:1 app:closed >&- 2>&-")
    assert proc.returncode == 0
    assert (root / "repositories/app/_tags/closed").read_text() == image_id + "\n"


@pytest.mark.parametrize("command", ["update-ref --stdin {root}", "resolve-ref --stdin {root}",
                                     "build-load-tar --stdin {root}", "sync-objects --stdin {root} {root}-copy"])
def test_stdin_that_never_ends_or_is_closed_is_bounded(local_repo, command, tmp_path):
    root = local_repo[0]
    zero = _shell(f"{sys.executable} {BIN} {command.format(root=root)} </dev/zero", limit=30)
    line = one_line_error(zero, status=2)
    assert "longer than" in line, line
    closed = _shell(f"{sys.executable} {BIN} {command.format(root=root)} <&-", limit=30)
    assert "internal error" not in closed.stderr.decode() and "Traceback" not in closed.stderr.decode()
    if closed.returncode:
        one_line_error(closed, status=closed.returncode)


def test_a_full_spool_directory_fails_in_one_line_and_leaves_nothing(tiny_image, tmp_path):
    """TMPDIR on a 64 KiB tmpfs: an S3 push from Docker 20.10 spools each layer there."""
    eng, image = tiny_image
    spool = tmp_path / "spool"
    spool.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(spool)], check=True)
    server = FakeS3()
    try:
        proc = run("push", server.url, image, env={"DOCKER_HOST": eng.host, "TMPDIR": str(spool)})
        line = one_line_error(proc, within=30)
        assert str(spool) in line and "no space" in line, line
        assert os.listdir(spool) == []
        assert not any(_is_ref(k) for k in server.objects)
    finally:
        server.close()
        subprocess.run(["umount", str(spool)], check=True)


def test_umask_077_home_unset_and_a_posix_locale(tiny_image, tmp_path):
    """A push and pull under umask 077, without HOME, in the POSIX locale, to a path that is
    not ASCII; a tag that is not ASCII is a usage error there, in ASCII."""
    eng, image = tiny_image
    env = {k: v for k, v in ENV.items() if k not in ("HOME", "LANG", "LANGUAGE") and not k.startswith("LC_")}
    env.update(LC_ALL="POSIX", DOCKER_HOST=eng.host)
    root = tmp_path / "dépôt-日本"
    command = (f"umask 077; {sys.executable} {BIN} push {root} {image} && "
               f"{sys.executable} {BIN} tag {root} {image} 'app:ü'; echo status=$?; "
               f"{sys.executable} {BIN} show-ref {root} 'nö*'; echo status=$?; "
               f"{sys.executable} {BIN} pull {root} {image}")
    proc = subprocess.run(["bash", "-c", command], capture_output=True, env=env, timeout=120)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, err
    assert "internal error" not in err and "Traceback" not in err, err
    assert b"status=2" in proc.stdout and b"status=1" in proc.stdout, proc.stdout
    assert all(line.startswith("dogestry: ") or line.startswith(("pushed", "pulled")) for line in err.splitlines()), err
    assert next(root.rglob("_tags/*")).read_text().startswith("sha256:")


# -- a hostile Docker engine ----------------------------------------------------------------
# tests/test_engine_client.py covers an API error, a JSON answer too big to hold, an answer
# that is not JSON, a save or load broken off, idle connections; these are the rest.

FAKE_ID = "sha256:" + "ab" * 32
FAKE_LAYER = "sha256:" + "cd" * 32


class _EngineHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def address_string(self):
        return "engine"

    def json(self, value, status=200):
        send_whole(self, status, value if isinstance(value, bytes) else json.dumps(value).encode(), "application/json")

    def stream(self, pieces):
        send_chunked(self, pieces)  # a hang-up is what the client should do with an endless stream

    def do_GET(self):
        path = self.path.split("?")[0]
        self.server.requests.append(("GET", path))
        answer = self.server.routes.get(path)
        if answer is None and path.startswith("/images/") and path.endswith("/json"):
            answer = self.server.routes.get("inspect")
        if answer is None:
            return self.json({"message": f"no such thing: {path}"}, 404)
        answer(self)

    def do_POST(self):
        path = self.path.split("?")[0]
        self.server.requests.append(("POST", path))
        answer = self.server.routes.get("POST " + path)
        if answer is None:
            return self.json({"message": "refused"}, 500)
        answer(self)


class FakeEngine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path, routes):
        self.routes, self.requests = routes, []
        super().__init__(path, _EngineHandler)
        self.host = f"unix://{path}"

    def handle_error(self, request, address):
        pass


@pytest.fixture
def fake_engine(tmp_path):
    engines = []

    def start(routes):
        base = {"/_ping": lambda h: h.json(b"OK"), "/info": lambda h: h.json({"DriverStatus": []}),
                "/version": lambda h: h.json({"ApiVersion": "1.41"}),
                "/images/json": lambda h: h.json([{"Id": FAKE_ID, "RepoTags": ["app:1"]}]),
                "inspect": lambda h: h.json({"Id": FAKE_ID, "RepoTags": ["app:1"], "RootFS": {"Layers": [FAKE_LAYER]}})}
        base.update(routes)
        path = f"/tmp/dogestry-hostile-{uuid.uuid4().hex[:10]}.sock"  # short: sun_path holds 108 bytes
        server = FakeEngine(path, base)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        engines.append((server, path))
        return server

    yield start
    for server, path in engines:
        server.shutdown()
        server.server_close()
        os.unlink(path)


def _zeros(h):
    h.stream(iter(lambda: bytes(1 << 20), None))


def _tar_header(name, size, kind=b"0"):
    header = bytearray(512)
    header[0:len(name)] = name.encode()
    header[100:108] = b"0000644\0"
    header[108:124] = b"0000000\x000000000\0"
    if size < 8 ** 11:
        header[124:136] = b"%011o\0" % size
    else:  # base-256, as GNU tar writes sizes of 8 GiB and more
        header[124:136] = b"\x80" + size.to_bytes(11, "big")
    header[136:148] = b"00000000000\0"
    header[156:157] = kind
    header[257:265] = b"ustar\x0000"
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def _huge_member(h):
    """A member announcing 2 GiB (of zeros, not the layer it is named after), then zeros
    until the client stops reading: read through in bounded memory, then refused."""
    def pieces():
        yield _tar_header(f"blobs/sha256/{FAKE_LAYER[7:]}", 2 << 30)
        while True:
            yield bytes(1 << 20)
    h.stream(pieces())


def _sparse_member(h):
    """A GNU sparse member whose real size is 10 GiB, stored in one block."""
    header = bytearray(_tar_header(f"blobs/sha256/{FAKE_LAYER[7:]}", 512, b"S"))
    header[483:495] = b"\x80" + (10 << 30).to_bytes(11, "big")  # realsize
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header)
    h.stream([bytes(header), bytes(512), bytes(1024)])


SAVES = {"endless-zeros": _zeros, "two-gigabyte-member": _huge_member, "sparse-bomb": _sparse_member}


@pytest.mark.parametrize("case", sorted(SAVES))
def test_a_hostile_save_stream_is_one_line_in_bounded_time_and_memory(fake_engine, tmp_path, case):
    engine = fake_engine({"/images/get": SAVES[case]})
    peak = tmp_path / "peak"
    proc = run("push", str(tmp_path / "repo"), "app:1", env={"DOCKER_HOST": engine.host}, peak=peak, limit=90)
    line = one_line_error(proc, within=60)
    assert int(peak.read_text()) < 200 * 1024, f"peak RSS {peak.read_text()} kB: {line}"
    assert not list((tmp_path / "repo").rglob("_tags/*"))


INSPECTS = {"rootfs-null": {"Id": FAKE_ID, "RootFS": None},
            "layers-a-string": {"Id": FAKE_ID, "RootFS": {"Layers": "abc"}},
            "id-not-a-digest": {"Id": "not-a-digest", "RootFS": {"Layers": [FAKE_LAYER]}},
            "id-a-number": {"Id": 5, "RootFS": {"Layers": [FAKE_LAYER]}}, "a-list": [1, 2],
            "layers-of-numbers": {"Id": FAKE_ID, "RootFS": {"Layers": [1, None]}}}


@pytest.mark.parametrize("case", sorted(INSPECTS))
def test_an_inspect_of_the_wrong_types(fake_engine, tmp_path, local_repo, case):
    engine = fake_engine({"inspect": lambda h: h.json(INSPECTS[case]), "/images/get": _zeros,
                          "/images/json": lambda h: h.json([{"Id": FAKE_ID if case != "id-a-number" else 5}])})
    env = {"DOCKER_HOST": engine.host}
    one_line_error(run("push", str(tmp_path / "pushed"), "app:1", env=env, limit=60), within=30)
    proc = run("pull", str(local_repo[0]), "app:1", env=env, limit=60)
    if proc.returncode:
        one_line_error(proc, within=30)


def _load_answer(lines):
    def answer(h):
        while h.rfile.readline().strip() not in (b"0", b""):
            pass  # the chunked body, read to its end
        h.stream(lines)
    return answer


def _load_never_answers(h):
    while h.rfile.readline().strip() not in (b"0", b""):
        pass  # the whole body, then not a word
    time.sleep(600)


LOADS = {"error-mid-stream": [b'{"stream":"Loaded image ID: x"}\n', b'{"errorDetail":{"message":"disk full\\nreally"},'
                                                                   b'"error":"disk full"}\n', b'{"stream":"ok"}\n'],
         "error-unpacking": [b'{"stream":"Error unpacking image: bad tar"}\n'],
         "endless-progress": iter(lambda: b'{"status":"still loading' + b"." * 65000 + b'"}\n', None),
         "no-answer-at-all": None,
         "a-message-of-a-megabyte": [b'{"stream":"' + b"x" * (2 << 20) + b'"}\n']}


@pytest.mark.parametrize("case", sorted(LOADS))
def test_a_load_the_engine_answers_with_trouble(fake_engine, local_repo, case):
    engine = fake_engine({"/images/json": lambda h: h.json([]), "inspect": lambda h: h.json({"message": "no"}, 404),
                          "POST /images/load": _load_answer(LOADS[case]) if LOADS[case] else _load_never_answers})
    proc = run("pull", str(local_repo[0]), "app:1", env={"DOCKER_HOST": engine.host}, limit=60)
    line = one_line_error(proc, within=45)
    assert engine.host[len("unix://"):] in line or "docker load" in line, line


# -- serve in front of a misbehaving backend ---------------------------------------------------

def test_serve_answers_an_error_in_bounded_time_while_the_backend_misbehaves_and_recovers(s3):
    import signal
    import urllib.error
    import urllib.request

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # serve binds it next; a race with another process is a failed bind, said
    proc = subprocess.Popen([sys.executable, BIN, "serve", s3.url, "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)

    def get(path):
        started = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as answer:
                status = answer.status
        except urllib.error.HTTPError as err:
            status = err.code
        return status, time.monotonic() - started

    try:
        for _ in range(100):
            try:
                if get("/v2/app/manifests/1")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("serve never answered")
        faults = {"errors": _status_fault(503, "SlowDown"),
                  "endless-listing": _listing_fault(ENDLESS["cycling-tokens"]),
                  "gigabyte-ref": _body_fault(_is_ref, _gigabyte(True)),
                  "trickle": _body_fault(lambda key: True, _trickle)}
        for name, fault in faults.items():
            s3.fault = fault
            for path in ("/v2/app/manifests/1", "/v2/_catalog", "/v2/app/tags/list"):
                status, seconds = get(path)
                assert status >= 500 and seconds < 4 * STALL, (name, path, status, seconds)
        s3.fault = None
        assert get("/v2/app/manifests/1")[0] == 200
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    text = err.decode("utf-8", "replace")
    assert "Traceback" not in text and "internal error" not in text, text[-2000:]


@pytest.fixture(scope="module")
def big_image(tiny_image):
    """An image whose one layer (12 MB of random bytes) goes up as a multipart upload."""
    import io
    import tarfile

    eng, _ = tiny_image
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = os.urandom(12 << 20)
        info = tarfile.TarInfo("random")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    name = f"hostilebig{uuid.uuid4().hex[:8]}"
    eng.api.import_image_from_data(buf.getvalue(), repository=name, tag="1")
    eng.created.append(f"{name}:1")
    return eng, f"{name}:1"


def _multipart_fault(answer):
    def fault(server, h, method, key, query, body):
        return answer(server, h, method, query)
    return fault


MULTIPART = {
    "no-upload-id": lambda s, h, m, q: m == "POST" and "uploads" in q and (s.send(
        h, 200, b"<InitiateMultipartUploadResult><Key>x</Key></InitiateMultipartUploadResult>") or True),
    "part-without-etag": lambda s, h, m, q: m == "PUT" and "uploadId" in q and (s.send(h, 200) or True),
    # S3 may answer CompleteMultipartUpload 200 with an <Error> body
    "complete-200-error": lambda s, h, m, q: m == "POST" and "uploadId" in q and (s.send(
        h, 200, b"<?xml version='1.0'?><Error><Code>InternalError</Code><Message>x</Message></Error>") or True),
}


@pytest.mark.parametrize("case", sorted(MULTIPART))
def test_a_multipart_upload_the_server_garbles(big_image, case):
    eng, image = big_image
    server = FakeS3()
    try:
        server.fault = _multipart_fault(MULTIPART[case])
        line = one_line_error(run("push", server.url, image, env={"DOCKER_HOST": eng.host}), within=30)
        assert "layers/sha256/" in line, line
        assert not any(_is_ref(k) for k in server.objects)
    finally:
        server.close()


@pytest.mark.parametrize("length", [None, "abc"], ids=["no-length", "not-a-number"])
def test_a_head_without_a_usable_size(s3, length):
    def fault(server, h, method, key, query, body):
        if method == "HEAD" and _is_layer(key):
            h.send_response(200)
            if length is None:
                h.send_header("Transfer-Encoding", "chunked")
                h.end_headers()
                h.wfile.write(b"0\r\n\r\n")
            else:
                h.send_header("Content-Length", length)
                h.end_headers()
                h.close_connection = True
            return True
    s3.fault = fault
    line = one_line_error(run("build-load-tar", s3.url, "app:1"), within=5 * STALL)
    assert "layers/sha256/" in line, line


def _huge_answer(status):
    """A 300 MB answer of `status` to any listing (or to everything, for an error)."""
    def fault(server, h, method, key, query, body):
        if status == 200 and not (method == "GET" and not key and "uploads" not in query):
            return None
        h.send_response(status)
        h.send_header("Content-Type", "application/xml")
        h.send_header("Content-Length", str(300 << 20))
        h.end_headers()
        try:
            h.wfile.write(b"<?xml version='1.0'?><ListBucketResult><Name>" if status == 200 else
                          b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>")
            for _ in range(300):
                h.wfile.write(b"a" * (1 << 20))
        except OSError:
            pass
        h.close_connection = True
        return True
    return fault


@pytest.mark.parametrize("status", [200, 503], ids=["listing", "error"])
def test_a_300_megabyte_listing_or_error_is_refused_in_bounded_memory(s3, tmp_path, status):
    """botocore reads such answers whole before parsing them: it took 2.9 GB for a listing."""
    s3.fault = _huge_answer(status)
    peak = tmp_path / "peak"
    line = one_line_error(run("show-ref", s3.url, peak=peak), within=6 * STALL)
    assert "larger than 16 MiB" in line, line
    assert int(peak.read_text()) < 200 * 1024, f"peak RSS {peak.read_text()} kB"


def test_a_multipart_upload_listing_that_never_ends(s3):
    """remote lists unfinished uploads, and every first write cleans old ones: an endless
    listing of them hung both."""
    def fault(server, h, method, key, query, body):
        if method == "GET" and not key and "uploads" in query:
            mark = b"b" if query.get("key-marker") == "pre/a" else b"a"  # markers a, b, a, b...
            server.send(h, 200, b"<ListMultipartUploadsResult><IsTruncated>true</IsTruncated>"
                                b"<NextKeyMarker>pre/%s</NextKeyMarker><NextUploadIdMarker>u1</NextUploadIdMarker>"
                                b"<Upload><Key>pre/%s</Key><UploadId>u1</UploadId><Initiated>2020-01-01T00:00:00.000Z"
                                b"</Initiated></Upload></ListMultipartUploadsResult>" % (mark, mark))
            return True
    s3.fault = fault
    line = one_line_error(run("remote", s3.url), within=4 * STALL)
    assert "multipart uploads" in line and "does not end" in line, line
    tagged = run("tag", s3.url, "app:1", "app:5", limit=30)
    assert tagged.returncode == 0, tagged.stderr


def test_a_store_that_never_lists_a_lease_gets_no_ref_and_no_hang(tiny_image):
    """A store that keeps a lease but never lists it (a filer that folds the key, a listing
    index that lags): the push once rewrote its lease for ever, at full speed. Now a few
    tries, then one line naming the lease, and no ref."""
    eng, image = tiny_image
    server = FakeS3()
    try:
        def fault(server, h, method, key, query, body):
            if method == "GET" and not key and "uploads" not in query:
                server.send(h, 200, server.listing([k for k in sorted(server.objects)
                                                    if k.startswith(query.get("prefix", "")) and "/leases/" not in k]))
                return True
        server.fault = fault
        err = one_line_error(run("push", server.url, image, env={"DOCKER_HOST": eng.host}), within=30)
        assert "lease" in err and "listing never shows it" in err, err
        assert not any(_is_ref(k) for k in server.objects), sorted(server.objects)
        assert sum(1 for m, k in server.requests if m == "PUT" and "/leases/" in k) <= 10
    finally:
        server.close()
