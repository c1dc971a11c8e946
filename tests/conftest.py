"""Shared test fixtures: the real Docker engines (from scripts/engines) and image builders.

Engines come from DOGESTRY_TEST_ENGINES ("d20=unix:///...,d26=...,d26c=..."), which
scripts/test sets after starting them. Without it an engine test fails, never skips:
a test skipped in CI would prove nothing.
"""

import contextlib
import io
import os
import subprocess
import sys
import tarfile
import time
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "bin", "dogestry")
BUSYBOX = "/bin/busybox"


def _engines():
    spec = os.environ.get("DOGESTRY_TEST_ENGINES", "")
    return dict(item.split("=", 1) for item in spec.split(",") if "=" in item)


ENGINES = _engines()


def pytest_generate_tests(metafunc):
    if "engine" in metafunc.fixturenames:
        names = sorted(ENGINES) or ["none"]
        metafunc.parametrize("engine", names, indirect=True)


class TestEngine:
    """One real engine, with helpers to build small images from local files."""

    __test__ = False

    def __init__(self, name, host):
        import docker

        self.name, self.host = name, host
        self.api = docker.APIClient(base_url=host, version="auto", timeout=600)
        self.containerd = any(k == "driver-type" and "snapshotter" in v
                              for k, v in (self.api.info().get("DriverStatus") or []))
        self.created = []

    def env(self):
        return dict(os.environ, DOCKER_HOST=self.host)

    def import_base(self, name, salt=None):
        """A busybox rootfs image; salt makes its layer unique to one test."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            with open(BUSYBOX, "rb") as f:
                data = f.read()
            info = tarfile.TarInfo("bin/busybox")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
            for tool in ("sh", "cat", "echo", "ls"):
                link = tarfile.TarInfo(f"bin/{tool}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
            salt_data = (salt or uuid.uuid4().hex).encode()
            info = tarfile.TarInfo("salt")
            info.size = len(salt_data)
            tar.addfile(info, io.BytesIO(salt_data))
        repo, tag = name.rsplit(":", 1)
        self.api.import_image_from_data(buf.getvalue(), repository=repo, tag=tag)
        self.created.append(name)
        return self.inspect(name)["Id"]

    def build(self, name, base, files, run="echo built > /built.txt", big=0):
        """FROM base, COPY files, RUN a command; big adds a file of that many random bytes."""
        buf = io.BytesIO()
        copies = []
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for path, content in files.items():
                data = content.encode() if isinstance(content, str) else content
                info = tarfile.TarInfo(path.lstrip("/"))
                # vfs diffs by size and mtime: give each file a fresh mtime so a changed
                # file of the same size still makes a new layer.
                info.size, info.mtime = len(data), time.time()
                tar.addfile(info, io.BytesIO(data))
                copies.append(f"COPY {path.lstrip('/')} /{path.lstrip('/')}")
            if big:
                data = os.urandom(big)
                info = tarfile.TarInfo("big.bin")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                copies.append("COPY big.bin /big.bin")
            first = next(iter(files), "hello")
            dockerfile = "\n".join([f"FROM {base}", *copies, f"RUN {run}", f'CMD ["cat", "/{first.lstrip("/")}"]', ""])
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(dockerfile)
            tar.addfile(info, io.BytesIO(dockerfile.encode()))
        buf.seek(0)
        out = list(self.api.build(fileobj=buf, custom_context=True, tag=name, rm=True, forcerm=True,
                                  network_mode="none", decode=True))
        errors = [o for o in out if "error" in o]
        assert not errors, errors
        self.created.append(name)
        return self.inspect(name)["Id"]

    def inspect(self, image):
        import docker.errors

        try:
            return self.api.inspect_image(image)
        except docker.errors.NotFound:
            return None

    def layers(self, image):
        return self.inspect(image)["RootFS"]["Layers"]

    def run(self, image, *cmd):
        container = self.api.create_container(image, command=list(cmd) or None, network_disabled=True,
                                              host_config=self.api.create_host_config(network_mode="none"))
        try:
            self.api.start(container)
            status = self.api.wait(container, timeout=120)["StatusCode"]
            logs = self.api.logs(container).decode()
            assert status == 0, logs
            return logs
        finally:
            self.api.remove_container(container, force=True)

    def rmi(self, *images):
        import docker.errors

        for image in images:
            try:
                self.api.remove_image(image, force=True)
            except docker.errors.NotFound:
                pass

    def tags(self):
        return {t for img in self.api.images() for t in (img.get("RepoTags") or []) if t != "<none>:<none>"}

    def save_events(self, since):
        time.sleep(0.3)  # events are published asynchronously
        # The API reads "<seconds>.<nanoseconds>": nine digits, or ".5" would mean 5 ns.
        events = self.api.events(since=f"{since:.9f}", until=f"{time.time() + 0.1:.9f}", decode=True,
                                 filters={"type": "image"})
        return [e for e in events if e.get("Action") == "save"]

    def cleanup(self):
        self.rmi(*reversed(self.created))
        self.api.prune_images(filters={"dangling": True})


@pytest.fixture
def engine(request):
    name = request.param
    if name not in ENGINES:
        pytest.fail("no Docker engine configured: run the tests with scripts/test (it starts the engines and "
                    "sets DOGESTRY_TEST_ENGINES)")
    eng = TestEngine(name, ENGINES[name])
    yield eng
    eng.cleanup()


@pytest.fixture
def engine_named():
    """Engines by name, for tests that cross engines."""
    made = []

    def get(name):
        if name not in ENGINES:
            pytest.fail(f"engine {name} is not configured: run the tests with scripts/test")
        eng = TestEngine(name, ENGINES[name])
        made.append(eng)
        return eng

    yield get
    for eng in made:
        eng.cleanup()


@pytest.fixture
def unique():
    return uuid.uuid4().hex[:10]


def dogestry(*args, env=None, input=None, check=True, cwd=None):
    """Run bin/dogestry as a user would; returns the CompletedProcess."""
    proc = subprocess.run([sys.executable, BIN, *args], capture_output=True, env=env, input=input, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"dogestry {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()}")
    return proc


@contextlib.contextmanager
def http_peer(handler):
    """A threaded HTTP server answering with `handler` (a BaseHTTPRequestHandler class) on a
    free loopback port of its own, for the length of the block; yields its base URL."""
    import http.server
    import socketserver
    import threading

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        block_on_close = False

    server = Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def one_line_error(proc, status=1):
    """The rule for a failure: that exit status, one `dogestry: ` line on stderr (the CLI
    cuts a longer message at 1,000 characters), no traceback or internal error. Returns it."""
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == status, (proc.returncode, err)
    assert "internal error" not in err and "Traceback" not in err, err
    assert err.startswith("dogestry: ") and err.count("\n") == 1, err
    assert len(err) < 1100, f"a {len(err)}-character error"
    return err


def add_bytes(tar, name, data):
    """Add a regular file named name holding data to an open tarfile."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def send_whole(handler, status, data, content_type):
    """Answer a BaseHTTPRequestHandler's request with data, its type and its length."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def send_chunked(handler, pieces, finish=True):
    """Answer with pieces as a chunked body, then close. True when the client read it all,
    False when it hung up first (what a capped read does)."""
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    handler.close_connection = True
    try:
        for piece in pieces:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        if finish:
            handler.wfile.write(b"0\r\n\r\n")
    except OSError:
        return False
    return True


def tree(path):
    """Every file under path (relative) -> bytes, ignoring spool/temp entries."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                full = os.path.join(dirpath, name)
                with open(full, "rb") as f:
                    out[os.path.relpath(full, path)] = f.read()
    return out


def _s3_servers():
    spec = os.environ.get("DOGESTRY_TEST_S3", "")
    return dict(item.split("=", 1) for item in spec.split(",") if "=" in item)


S3_SERVERS = _s3_servers()
S3_CREDENTIALS = {"seaweed": ("admin", "adminsecret"), "moto": ("testing", "testing")}
S3_BUCKET = "dogestry-test"


class S3Server:
    """A real S3 server on loopback (scripts/s3servers), with its credentials."""

    __test__ = False

    def __init__(self, name):
        if name not in S3_SERVERS:
            pytest.fail(f"S3 server {name} is not configured: run the tests with scripts/test "
                        "(it starts them and sets DOGESTRY_TEST_S3)")
        self.name, self.endpoint = name, S3_SERVERS[name]
        self.key_id, self.secret = S3_CREDENTIALS[name]
        self.ensure_bucket(S3_BUCKET)

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret,
                            config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"))

    def ensure_bucket(self, bucket):
        client = self.client()
        for _ in range(60):
            try:
                client.head_bucket(Bucket=bucket)
                return
            except Exception:
                try:
                    client.create_bucket(Bucket=bucket)
                    return
                except Exception:
                    time.sleep(0.5)
        raise AssertionError(f"cannot create bucket {bucket} on {self.endpoint}")

    def url(self, prefix):
        return f"s3://{S3_BUCKET}/{prefix}/?endpoint={self.endpoint}"

    def env(self, base=None):
        env = dict(base or os.environ)
        for var in list(env):
            if var.startswith("AWS_"):
                del env[var]
        env.update(AWS_ACCESS_KEY_ID=self.key_id, AWS_SECRET_ACCESS_KEY=self.secret)
        return env

    def keys(self, prefix):
        client = self.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET, Prefix=prefix + "/")
        return sorted(item["Key"][len(prefix) + 1:] for page in pages for item in page.get("Contents") or [])


@pytest.fixture(params=sorted(S3_CREDENTIALS))
def s3(request):
    return S3Server(request.param)


@pytest.fixture
def seaweed():
    return S3Server("seaweed")
