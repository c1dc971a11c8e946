"""S3 remotes against real S3 servers (SeaweedFS, strict like AWS; moto, lenient) and a real engine."""

import os
import time
import uuid

import pytest

from conftest import dogestry
from faultproxy import Fault, FaultProxy


@pytest.fixture
def d20(engine_named):
    return engine_named("d20")


def _prefix():
    return f"it-{uuid.uuid4().hex[:12]}"


def _image_with_big_layer(engine, unique, size=20 << 20):
    engine.import_base(f"t{unique}/base:1")
    engine.build(f"t{unique}/app:1", f"t{unique}/base:1", {"hello.txt": f"hello {unique}\n"}, big=size)
    engine.build(f"t{unique}/app:2", f"t{unique}/app:1", {"two.txt": "two\n"}, run="echo 2 > /r2.txt")


def test_round_trip_with_multipart_layers(s3, d20, unique):
    prefix = _prefix()
    url = s3.url(prefix)
    _image_with_big_layer(d20, unique)
    env = s3.env(d20.env())
    image_id = dogestry("push", url, f"t{unique}/app:1", env=env).stdout.split()[0].decode()
    layers = d20.layers(f"t{unique}/app:1")
    stored = s3.client().head_object(Bucket="dogestry-test", Key=f"{prefix}/layers/sha256/{layers[2][7:]}")  # COPY big.bin
    assert stored["ContentLength"] > 16 << 20 and "-" in stored["ETag"]  # a real multipart object
    d20.rmi(f"t{unique}/app:2", f"t{unique}/app:1", f"t{unique}/base:1")
    dogestry("pull", url, f"t{unique}/app:1", env=env)
    assert d20.inspect(f"t{unique}/app:1")["Id"] == image_id
    assert d20.layers(f"t{unique}/app:1") == layers
    assert d20.run(f"t{unique}/app:1") == f"hello {unique}\n"


def test_second_push_uploads_nothing_and_pull_fetches_only_the_missing_layer(seaweed, d20, unique):
    prefix = _prefix()
    _image_with_big_layer(d20, unique, size=1 << 20)
    env = seaweed.env(d20.env())
    with FaultProxy(seaweed.endpoint) as proxy:
        url = f"s3://dogestry-test/{prefix}/?endpoint={proxy.url}"
        dogestry("push", url, f"t{unique}/app:1", f"t{unique}/app:2", env=env)
        assert proxy.requests("PUT")
        before = len(proxy.log)
        started = time.time()
        dogestry("push", url, f"t{unique}/app:1", f"t{unique}/app:2", env=env)
        again = proxy.log[before:]
        assert [r for r in again if r[0] in ("PUT", "POST", "DELETE")] == []
        assert d20.save_events(started) == []

        layers1, layers2 = d20.layers(f"t{unique}/app:1"), d20.layers(f"t{unique}/app:2")
        d20.rmi(f"t{unique}/app:2")
        before = len(proxy.log)
        dogestry("pull", url, f"t{unique}/app:2", env=env)
        fetched = {path.split("?")[0].rsplit("/", 1)[1] for method, path, _ in proxy.log[before:]
                   if method == "GET" and "/layers/sha256/" in path and not path.split("?")[0].endswith(".json")}
        assert fetched == {d[7:] for d in layers2 if d not in layers1}
    assert d20.run(f"t{unique}/app:2", "cat", "/two.txt") == "two\n"


def test_injected_5xx_and_dropped_connections_are_retried(seaweed, d20, unique):
    prefix = _prefix()
    _image_with_big_layer(d20, unique, size=20 << 20)
    env = seaweed.env(d20.env())
    big = d20.layers(f"t{unique}/app:1")[2][7:]  # COPY big.bin
    with FaultProxy(seaweed.endpoint) as proxy:
        url = f"s3://dogestry-test/{prefix}/?endpoint={proxy.url}"
        proxy.faults = [Fault("PUT", "partNumber=2", "503"), Fault("PUT", "partNumber=3", "drop-request")]
        dogestry("push", url, f"t{unique}/app:1", env=env)
        assert [s for _, _, s in proxy.requests("PUT", "partNumber=2")][:2] == [503, 200]
        assert [s for _, _, s in proxy.requests("PUT", "partNumber=3")][:2] == ["dropped", 200]
        assert all(f.times == 0 for f in proxy.faults)

        d20.rmi(f"t{unique}/app:2", f"t{unique}/app:1", f"t{unique}/base:1")
        proxy.faults = [Fault("GET", f"layers/sha256/{big}", "503"), Fault("GET", f"layers/sha256/{big}", "drop-response")]
        dogestry("pull", url, f"t{unique}/app:1", env=env)
        statuses = [s for _, path, s in proxy.requests("GET", f"layers/sha256/{big}") if ".json" not in path]
        assert 503 in statuses and "dropped" in statuses
        assert all(f.times == 0 for f in proxy.faults)
    assert d20.run(f"t{unique}/app:1", "cat", "/hello.txt") == f"hello {unique}\n"


def test_legacy_credential_variables(seaweed, d20, unique):
    d20.import_base(f"t{unique}/base:1")
    env = seaweed.env(d20.env())
    env["AWS_ACCESS_KEY"], env["AWS_SECRET_KEY"] = env.pop("AWS_ACCESS_KEY_ID"), env.pop("AWS_SECRET_ACCESS_KEY")
    dogestry("push", seaweed.url(_prefix()), f"t{unique}/base:1", env=env)


def test_config_file_credentials_and_alias(seaweed, d20, unique, tmp_path):
    d20.import_base(f"t{unique}/base:1")
    cfg = tmp_path / "dogestry.cfg"
    cfg.write_text(f'[remote "central"]\n  url = {seaweed.url(_prefix())}\n'
                   f"[s3]\n  access-key-id = {seaweed.key_id}\n  secret-key = {seaweed.secret}\n")
    env = {k: v for k, v in d20.env().items() if not k.startswith("AWS_")}
    cfg.chmod(0o644)
    out = dogestry("--config", str(cfg), "push", "central", f"t{unique}/base:1", env=env)
    assert "readable by other users" in out.stderr.decode()
    assert seaweed.secret not in out.stderr.decode()
    cfg.chmod(0o600)
    out = dogestry("--config", str(cfg), "push", "central", f"t{unique}/base:1", env=env)
    assert "readable" not in out.stderr.decode()


def test_wrong_secret_missing_bucket_unreachable_endpoint(seaweed, d20, unique):
    d20.import_base(f"t{unique}/base:1")
    prefix = _prefix()
    env = seaweed.env(d20.env())
    env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    cases = [
        (seaweed.url(prefix), env, "denied"),
        (f"s3://no-such-bucket-{unique}/{prefix}/?endpoint={seaweed.endpoint}", seaweed.env(d20.env()), "does not exist"),
        (f"s3://dogestry-test/{prefix}/?endpoint=http://127.0.0.1:9", seaweed.env(d20.env()), "cannot reach"),
        (seaweed.url(prefix), dict(seaweed.env(d20.env()), AWS_PROFILE=f"nope{unique}", AWS_CONFIG_FILE="/dev/null"),
         f"the AWS profile 'nope{unique}' is not in the AWS config files"),
    ]
    for url, case_env, message in cases:
        out = dogestry("push", url, f"t{unique}/base:1", env=case_env, check=False)
        err = out.stderr.decode().strip()
        assert out.returncode == 1 and len(err.splitlines()) == 1 and message in err, err
        assert "not-the-secret" not in err and seaweed.secret not in err
    assert seaweed.keys(prefix) == []


def test_share_pulls_with_no_credentials_and_refuses_expired_or_altered_urls(seaweed, d20, unique):
    prefix = _prefix()
    d20.import_base(f"t{unique}/base:1")
    d20.build(f"t{unique}/app:1", f"t{unique}/base:1", {"hello.txt": "shared\n"})
    env = seaweed.env(d20.env())
    url = seaweed.url(prefix)
    dogestry("push", url, f"t{unique}/app:1", env=env)
    shared = dogestry("share", url, f"t{unique}/app:1", "--expires", "1h", env=env).stdout.decode().strip()
    assert shared.startswith(seaweed.endpoint) and "X-Amz-Signature=" in shared
    bare = {k: v for k, v in d20.env().items() if not k.startswith("AWS_")}
    bare["HOME"] = str(os.path.join("/nonexistent", unique))  # no ~/.aws either
    d20.rmi(f"t{unique}/app:1", f"t{unique}/base:1")
    out = dogestry("pull", shared, f"t{unique}/app:1", env=bare)
    assert seaweed.key_id not in out.stderr.decode() and "Signature" not in out.stderr.decode()
    assert d20.run(f"t{unique}/app:1") == "shared\n"
    assert dogestry("show-ref", shared, env=bare).stdout.decode().split()[1] == f"t{unique}/app:1"

    tampered = shared.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    out = dogestry("pull", tampered, f"t{unique}/app:1", env=bare, check=False)
    assert out.returncode == 1 and "refused" in out.stderr.decode() and "X-Amz" not in out.stderr.decode()

    short = dogestry("share", url, f"t{unique}/app:1", "--expires", "1s", env=env).stdout.decode().strip()
    time.sleep(2.5)
    out = dogestry("pull", short, f"t{unique}/app:1", env=bare, check=False)
    assert out.returncode == 1 and "expired" in out.stderr.decode()

    out = dogestry("share", url, f"t{unique}/app:1", "--expires", "8d", env=env, check=False)
    assert out.returncode == 2 and "7d" in out.stderr.decode()
    d20.api.tag(f"t{unique}/app:1", f"t{unique}/app", "new")
    d20.created.append(f"t{unique}/app:new")
    out = dogestry("push", shared, f"t{unique}/app:new", env=bare, check=False)
    assert out.returncode == 1 and "read-only" in out.stderr.decode()


def test_s3_url_options_are_checked():
    out = dogestry("remote", "s3://bucket/p/?regoin=us-west-2", check=False)
    assert out.returncode == 2 and "regoin" in out.stderr.decode()
    out = dogestry("remote", "s3:///p/", check=False)
    assert out.returncode == 2 and "no bucket" in out.stderr.decode()
    for bucket in ("a b", "b" * 256, "bucket%2f", "b\u00e9"):
        out = dogestry("remote", f"s3://{bucket}/p/?endpoint=http://127.0.0.1:9", check=False)
        err = out.stderr.decode()
        assert out.returncode == 2 and "not a bucket name" in err and len(err.splitlines()) == 1, err
    out = dogestry("remote", "s3://bucket/p/#x?endpoint=http://127.0.0.1:9", check=False)
    assert out.returncode == 2 and "fragment" in out.stderr.decode()
    # SeaweedFS stores a//b as a/b and never lists it under a//: refused before any request
    for url in ("s3://bucket/a//b/", "s3://bucket/a//", "s3://bucket/a/b//c"):
        out = dogestry("remote", url + "?endpoint=http://127.0.0.1:9", check=False)
        err = out.stderr.decode()
        assert out.returncode == 2 and "('//')" in err and len(err.splitlines()) == 1, err
    for url in ("s3://bucket/a/./b/", "s3://bucket/../b/"):
        out = dogestry("remote", url + "?endpoint=http://127.0.0.1:9", check=False)
        assert out.returncode == 2 and ". or .." in out.stderr.decode()


def test_an_aws_file_too_large_to_be_one_is_refused_unread(seaweed, tmp_path):
    """botocore reads the AWS config and credentials files whole: a 1 GB one cost 9.7 GB of
    memory before its parse error. Refused by its size, in one line, at once."""
    big = tmp_path / "aws"
    with open(big, "wb") as f:
        f.truncate(1 << 30)  # sparse: no disk
    for variable in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        started = time.monotonic()
        out = dogestry("show-ref", seaweed.url(_prefix()), env=dict(seaweed.env(), **{variable: str(big)}),
                       check=False)
        err = out.stderr.decode()
        assert out.returncode == 1 and len(err.splitlines()) == 1 and f"({variable}) is 1073741824 bytes" in err, err
        assert time.monotonic() - started < 10


@pytest.mark.parametrize("setting", ["AWS_CA_BUNDLE", "SSL_CERT_FILE share", "SSL_CERT_FILE engine"])
def test_a_ca_bundle_that_is_a_fifo_is_refused_not_read_for_ever(tmp_path, setting):
    """OpenSSL reads a CA file whole, blocking: a FIFO named by AWS_CA_BUNDLE (botocore) or
    SSL_CERT_FILE (the default paths: share URLs, an https:// engine) hung the command for
    ever. Each is refused by its type, in one line naming the setting."""
    import subprocess
    import sys

    from conftest import BIN

    fifo = tmp_path / "ca.pem"
    os.mkfifo(fifo)
    variable, _, where = setting.partition(" ")
    env = dict(os.environ, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y", AWS_DEFAULT_REGION="us-east-1",
               **{variable: str(fifo)})
    args = {"": ["list", "s3://bucket/p/?endpoint=https://127.0.0.1:9"],
            "share": ["pull", "https://127.0.0.1:9/bucket/p/shares/abc?X-Amz-Signature=1", "app:1"],
            "engine": ["push", str(tmp_path / "repo"), "app:1"]}[where]
    if where == "engine":
        env["DOCKER_HOST"] = "https://127.0.0.1:9"
    proc = subprocess.run([sys.executable, BIN, *args], capture_output=True, env=env, timeout=30)
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, (proc.returncode, lines)
    assert f"{fifo} ({variable}) is not a regular file" in lines[0], lines


def test_a_stalled_server_is_said_and_given_up_on_within_the_stall_timeout():
    """A server that accepts and never answers: stderr says what dogestry waits for, and it
    gives up after about DOGESTRY_STALL_TIMEOUT seconds, not minutes later."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])  # never answered
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        env = dict(os.environ, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s", DOGESTRY_STALL_TIMEOUT="8")
        url = f"s3://bucket/p/?endpoint=http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        out = dogestry("show-ref", url, env=env, check=False)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()
    err = out.stderr.decode()
    assert out.returncode == 1 and elapsed < 20, (elapsed, err)
    assert "retrying (waited" in err and "without progress" in err.splitlines()[-1], err
    assert "internal error" not in err and "dogestry.json" in err.splitlines()[-1]


def test_an_endpoint_that_is_not_a_url_is_a_usage_error():
    for url in ("s3://b/p/?endpoint=notaurl", "s3://b/p/?endpoint=http://", "s3://b/p/?endpoint=http://h:port"):
        out = dogestry("remote", url, check=False)
        assert out.returncode == 2 and "endpoint" in out.stderr.decode() and len(out.stderr.splitlines()) == 1
    out = dogestry("remote", "s3://b/p/", env=dict(os.environ, AWS_ENDPOINT_URL="ftp://x"), check=False)
    assert out.returncode == 2 and "ftp://x" in out.stderr.decode()


def test_leftovers_of_killed_pushes_are_reported_and_cleaned(seaweed, tmp_path):
    """A spool file in the temp dir no process holds and an unfinished multipart upload: both
    shown by `remote`; the next write removes them once they are stale (here: aged by hand)."""
    import subprocess

    from dogestry.backends import open_backend

    prefix = _prefix()
    env = dict(seaweed.env(), TMPDIR=str(tmp_path))
    url = seaweed.url(prefix)
    dead = tmp_path / "dogestry-spool-dead"
    dead.write_bytes(b"x" * 1000)
    os.utime(dead, (time.time() - 7200, time.time() - 7200))
    live = tmp_path / "dogestry-spool-live"
    live.write_bytes(b"y")
    holder = subprocess.Popen(["flock", str(live), "sleep", "60"])
    try:
        time.sleep(0.5)
        client = seaweed.client()
        upload = client.create_multipart_upload(Bucket="dogestry-test", Key=f"{prefix}/layers/sha256/abandoned")
        out = dogestry("remote", url, env=env).stdout.decode()
        assert "leftovers: 2" in out and str(dead) in out and str(live) not in out and "multipart" in out, out
        for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            os.environ[variable] = env[variable]
        backend = open_backend(url)
        backend.temp_dir = str(tmp_path)
        count, size = backend.clean_leftovers(min_age=0)  # as a write does for those over an hour old
        assert count == 2 and size == 1000
        assert not dead.exists() and live.exists()
        uploads = client.list_multipart_uploads(Bucket="dogestry-test", Prefix=f"{prefix}/").get("Uploads") or []
        assert upload["UploadId"] not in [u["UploadId"] for u in uploads]
    finally:
        holder.kill()
        for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            os.environ.pop(variable, None)
