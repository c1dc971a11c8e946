"""dogestry's own Docker Engine API client (dogestry/engine.py).

What it asks of an engine is proven against the real engines (every one in
DOGESTRY_TEST_ENGINES). How it fails is proven against engines that are not there and
against a fake engine: a small threaded HTTP server on a unix socket that answers the way a
broken or hostile engine would. That part is pure protocol, so a fake is the right tool;
every failure must be one line naming the host, and exit 1 from the CLI.
"""

import io
import json
import os
import socket
import socketserver
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler

import pytest

from conftest import BIN, dogestry, send_chunked, send_whole
from dogestry.engine import MAX_JSON, Engine
from dogestry.errors import EngineError, NotFound
from dogestry.refs import Ref

LAYER = "sha256:" + "1" * 64
IMAGE_ID = "sha256:" + "2" * 64
NAME = "tfake/app:1"


# -- the real engines ---------------------------------------------------------------------
def read_in_uneven_pieces(stream):
    """Everything a save stream hands out, asked for in the sizes a tar reader uses."""
    data, sizes, i = [], (512, 3 << 20, 1, 70000, 1 << 20), 0
    while piece := stream.read(sizes[i % len(sizes)]):
        assert len(piece) <= sizes[i % len(sizes)]
        data.append(piece)
        i += 1
    return b"".join(data)


def test_save_load_round_trip(engine, unique):
    name = f"t{unique}/base:1"
    engine.import_base(name)
    client = Engine(engine.host)
    before = client.require(name)
    stream = client.save([name])
    try:
        data = read_in_uneven_pieces(stream)
    finally:
        stream.close()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert "manifest.json" in tar.getnames()
    engine.rmi(name)
    assert client.inspect(name) is None
    # Sent in small pieces: the batching of chunks into one sendmsg is what is exercised.
    loaded = client.load(data[i:i + 10000] for i in range(0, len(data), 10000))
    assert any(name in line for line in loaded), loaded
    after = client.require(name)
    assert after.diff_ids == before.diff_ids and name in after.repo_tags


def test_the_store_is_known_from_the_api_version_or_asked(engine, unique):
    """An engine older than the containerd store (Docker 20.10 says API 1.41 on every answer)
    is not asked /info once it has answered anything; a newer one is, and says its store."""
    client = Engine(engine.host)
    client.inspect(f"t{unique}/none:1")
    uses = client.uses_containerd_store()
    assert uses == (engine.name in ("d26c", "d28c"))
    assert (client._info is None) == (engine.name == "d20"), (engine.name, client._api_version)


@pytest.mark.parametrize("header,version", [("1.41", (1, 41)), ("1.43", (1, 43)), (" 1.51 ", (1, 51)),
                                            ("", None), (None, None), ("1", None), ("1.x", None), ("a.b", None),
                                            ("1.4.1", None), ("9" * 30 + ".1", None), ("-1.41", None)])
def test_api_version_headers(header, version):
    from dogestry.engine import _api_version
    assert _api_version(header) == version


def test_inspect_of_a_missing_image_is_none(engine, unique):
    client = Engine(engine.host)
    assert client.inspect(f"t{unique}/none:1") is None
    assert client.inspect_details(f"t{unique}/none:1") is None
    assert client.inspect("sha256:" + "0" * 64) is None
    with pytest.raises(NotFound, match=f"t{unique}/none:1 not found in the Docker engine at {engine.host}"):
        client.require(f"t{unique}/none:1")


def test_tag_lists_and_remove_tag(engine, unique):
    base = f"t{unique}/base:1"
    image_id = engine.import_base(base)
    client = Engine(engine.host)
    client.tag(image_id, Ref(f"t{unique}/other", "2"))
    assert {base, f"t{unique}/other:2"} <= engine.tags()
    assert f"t{unique}/other:2" in client.tagged_names()
    assert client.names_matching(f"t{unique}/other:2") == [f"t{unique}/other:2"]
    assert client.names_matching(f"t{unique}/none:1") == []
    assert f"t{unique}/other:2" in client.names_matching(f"t{unique}/oth*")
    assert image_id in client.image_ids()
    client.remove_tag(f"t{unique}/other:2")
    assert f"t{unique}/other:2" not in engine.tags()
    assert engine.inspect(base)["Id"] == image_id  # the image stays under its other name
    client.remove_tag(f"t{unique}/other:2")  # gone already: nothing to do, no error


def test_many_inspects_in_parallel(engine, unique):
    names = [f"t{unique}/n{i}:1" for i in range(3)]
    ids = [engine.import_base(name) for name in names]
    client = Engine(engine.host)
    found = client._inspect_many(ids * 4 + ["sha256:" + "0" * 64])
    assert [f.id for f in found[:-1]] == ids * 4 and found[-1] is None


# -- engines that are not there -------------------------------------------------------------
def one_line_exit_1(host, *args, env=None, names=None):
    """Run a command against host; return its one stderr line after checking it names host
    (or `names`, the file at fault)."""
    proc = dogestry(*args, env=dict(env or os.environ, DOCKER_HOST=host), check=False)
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and (names or host) in lines[0], (proc.returncode, lines)
    return lines[0]


def test_a_socket_that_does_not_exist(tmp_path):
    host = f"unix://{tmp_path}/none.sock"
    with pytest.raises(EngineError, match=f"^cannot reach the Docker engine at {host}: is it running"):
        Engine(host).info()
    assert "cannot reach" in one_line_exit_1(host, "push", str(tmp_path / "repo"), NAME)


def test_a_tcp_port_nobody_listens_on(tmp_path):
    with socket.socket() as sock:  # a port the kernel just handed out, and nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    host = f"tcp://127.0.0.1:{port}"
    with pytest.raises(EngineError, match=f"^cannot reach the Docker engine at {host}"):
        Engine(host).image_ids()
    assert "cannot reach" in one_line_exit_1(host, "push", str(tmp_path / "repo"), NAME)


@pytest.mark.parametrize("host", ["ssh://user@build-host", "npipe:////./pipe/docker_engine", "fd://"])
def test_schemes_we_do_not_speak(host, tmp_path):
    with pytest.raises(EngineError, match="speaks unix://, tcp://, http:// and https:// only"):
        Engine(host).info()
    assert "speaks unix://" in one_line_exit_1(host, "push", str(tmp_path / "repo"), NAME)


@pytest.mark.parametrize("command", ["push", "pull"])
def test_an_engine_that_accepts_and_never_answers_is_given_up_on(tmp_path, command):
    """Connections are accepted and never answered: every wait on the engine is bounded by
    DOGESTRY_STALL_TIMEOUT, as every wait on a remote is."""
    path = str(tmp_path / "silent.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(16)  # the kernel completes connections; nobody ever reads them
    repo = tmp_path / "repo"
    repo.mkdir()
    if command == "pull":  # a repository that holds the image, so the engine is asked
        from test_adversary import _layer, _load_tar

        tar = tmp_path / "image.tar"
        tar.write_bytes(_load_tar([_layer([("f", "file", b"silent")])], NAME, []))
        records = dogestry("save-to-repo", "--input", str(tar), str(repo)).stdout
        dogestry("update-ref", "--stdin", str(repo), input=records)
    try:
        started = time.monotonic()
        line = one_line_exit_1(f"unix://{path}", command, str(repo), NAME,
                               env=dict(os.environ, DOGESTRY_STALL_TIMEOUT="2"))
        assert "no answer in 2 s" in line and time.monotonic() - started < 20
    finally:
        listener.close()


@pytest.mark.parametrize("host,says", [
    ("http://[::1", "is not a URL"), ("tcp://[::1", "is not a URL"), ("tcp://a b:2375", "names no host"),
    ("tcp://[::1]:99999", "names no host"), ("tcp://:2375", "names no host"), ("unix://", "names no socket"),
], ids=["unclosed-ipv6-http", "unclosed-ipv6-tcp", "space-in-host", "port-too-big", "no-host", "no-socket"])
def test_engine_urls_that_do_not_parse(host, says, tmp_path):
    with pytest.raises(EngineError, match=says):
        Engine(host).info()
    assert says in one_line_exit_1(host, "push", str(tmp_path / "repo"), NAME)
    if says == "is not a URL":
        assert not Engine(host).is_local()


def test_an_engine_url_too_long_to_be_one_is_not_quoted_whole(tmp_path):
    host = "unix:///" + "a" * 3000
    line = one_line_exit_1(host, "push", str(tmp_path / "repo"), NAME, names="3008 characters long")
    assert len(line) < 300, line


# -- a fake engine --------------------------------------------------------------------------
class FakeEngine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """An engine on a unix socket whose answers `mode` spoils; it counts connections."""

    daemon_threads = True

    def __init__(self, path, mode):
        self.mode, self.connections, self.requests = mode, 0, []
        self.hung_up = threading.Event()  # the client stopped reading a chunked answer
        super().__init__(path, FakeHandler)
        self.host = f"unix://{path}"


class FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as dockerd

    def setup(self):
        super().setup()
        self.server.connections += 1

    def log_message(self, *args):
        pass

    def answer(self, status, body, content_type="application/json"):
        send_whole(self, status, body if isinstance(body, bytes) else json.dumps(body).encode(), content_type)

    def chunked(self, pieces, finish=True):
        if not send_chunked(self, pieces, finish):
            self.server.hung_up.set()  # the client stopped reading: what a capped read does

    def do_GET(self):
        mode, path = self.server.mode, self.path.split("?")[0]
        self.server.requests.append(f"GET {path}")
        if mode == "error500":
            return self.answer(500, {"message": "the fake engine's disk is on fire\nsecond line"})
        if mode == "garbage":
            return self.answer(200, b"<html>not an engine</html>", "text/html")
        if mode == "silent":
            self.close_connection = True  # hang up without a word, every time
            return None
        if mode == "huge" and path.startswith("/images/"):
            entry = b'{"Id":"' + IMAGE_ID.encode() + b'","RepoTags":["x:1"]},'
            piece = b"[" + entry * ((1 << 20) // len(entry))
            return self.chunked([piece] + [piece[1:]] * 99)  # 100 MiB, never closed by "]"
        if mode == "huge-length" and path.startswith("/images/"):
            self.send_response(200)
            self.send_header("Content-Length", str(100 << 20))
            self.end_headers()
            self.close_connection = True
            return None
        if path == "/info":
            self.answer(200, {"DriverStatus": [["Backing Filesystem", "extfs"]]})
        elif path == "/images/json":
            self.answer(200, [{"Id": IMAGE_ID, "RepoTags": [NAME]}])
        elif path == f"/images/{NAME}/json" or path == f"/images/{IMAGE_ID}/json":
            self.answer(200, {"Id": IMAGE_ID, "RepoTags": [NAME], "RootFS": {"Layers": [LAYER]}, "Size": 10})
        elif path == "/images/get" and mode == "break-save":
            # A tar that promises a 4 MiB layer and stops a quarter of the way in.
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                info = tarfile.TarInfo("abc/layer.tar")
                info.size = 4 << 20
                tar.addfile(info, io.BytesIO(bytes(4 << 20)))
            self.chunked([buf.getvalue()[:1 << 20]], finish=False)
        else:
            self.answer(404, {"message": f"No such image: {path}"})
        if mode == "close-idle":
            # Answered as if the connection stays open (no "Connection: close"), then closed.
            self.close_connection = True
        return None

    def do_POST(self):
        self.server.requests.append(f"POST {self.path.split('?')[0]}")
        if self.path.startswith("/images/load"):
            self.rfile.read(64 << 10)  # a quarter of the first batch, then hang up mid-body
            self.close_connection = True
            return None
        return self.answer(500, {"message": "the fake engine refuses"})


@pytest.fixture
def fake(tmp_path):
    servers = []

    def start(mode):
        server = FakeEngine(str(tmp_path / f"{mode}.sock"), mode)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_an_api_error_gives_the_engines_message_on_one_line(fake, tmp_path):
    server = fake("error500")
    with pytest.raises(EngineError) as err:
        Engine(server.host).image_ids()
    assert str(err.value) == f"Docker engine at {server.host}: the fake engine's disk is on fire second line"
    line = one_line_exit_1(server.host, "push", str(tmp_path / "repo"), NAME)
    assert "the fake engine's disk is on fire" in line


@pytest.mark.parametrize("mode", ["huge", "huge-length"])
def test_a_json_answer_too_big_to_hold(fake, tmp_path, mode):
    server = fake(mode)
    with pytest.raises(EngineError, match=f"^Docker engine at {server.host}: its answer to GET /images/json"
                       f".* is larger than {MAX_JSON >> 20} MiB$"):
        Engine(server.host).image_ids()
    if mode == "huge":  # read no further than the cap: the rest of the 100 MiB was never taken
        assert server.hung_up.wait(10)
    assert "larger than" in one_line_exit_1(server.host, "push", str(tmp_path / "repo"), NAME)


def test_an_answer_that_is_not_json(fake, tmp_path):
    server = fake("garbage")
    with pytest.raises(EngineError, match=f"^Docker engine at {server.host}: its answer to GET /info is not JSON$"):
        Engine(server.host).info()
    assert "is not JSON" in one_line_exit_1(server.host, "push", str(tmp_path / "repo"), NAME)


def test_an_engine_that_breaks_off_a_save(fake, tmp_path):
    server = fake("break-save")
    stream = Engine(server.host).save([NAME])
    with pytest.raises(EngineError, match=f"^Docker engine at {server.host}: the save stream broke off"):
        while stream.read(1 << 20):
            pass
    stream.close()
    assert "the save stream broke off" in one_line_exit_1(server.host, "push", str(tmp_path / "repo"), NAME)
    assert "GET /images/get" in server.requests


def test_an_engine_that_breaks_off_a_load(fake):
    server = fake("plain")
    with pytest.raises(EngineError, match=f"^Docker engine at {server.host} (broke off the load stream|"
                                          "gave no answer to the load)"):
        Engine(server.host).load(bytes(256 << 10) for _ in range(32))  # 8 MiB, more than a socket buffers


def test_an_idle_connection_the_engine_closed_is_asked_again_once(fake):
    server = fake("close-idle")
    client = Engine(server.host)
    assert client.image_ids() == [IMAGE_ID]
    time.sleep(0.2)  # the engine has hung up on the idle connection by now
    assert client.require(NAME).id == IMAGE_ID
    assert client.image_ids() == [IMAGE_ID]
    assert server.connections == 3 and len(server.requests) == 3


def test_an_engine_that_hangs_up_on_a_new_connection_is_not_asked_again(fake, tmp_path):
    server = fake("silent")
    with pytest.raises(EngineError, match=f"^Docker engine at {server.host}: Remote end closed connection"):
        Engine(server.host).info()
    assert server.connections == 1
    one_line_exit_1(server.host, "push", str(tmp_path / "repo"), NAME)


def test_a_kept_alive_connection_carries_the_small_calls(fake):
    server = fake("plain")
    client = Engine(server.host)
    client.info()
    client.image_ids()
    client.inspect(NAME)
    assert client.inspect("tfake/none:1") is None
    assert server.connections == 1 and len(server.requests) == 4


# -- TLS, as the docker CLI sets it up ------------------------------------------------------
def make_certs(where, ca_name):
    """A CA and, signed by it, a server certificate for 127.0.0.1 and a client certificate,
    laid out as DOCKER_CERT_PATH: ca.pem, cert.pem, key.pem (+ server-*.pem for the fake)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)

    def name(text):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def builder(subject, issuer, key, serial):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                .serial_number(serial).not_valid_before(now - day).not_valid_after(now + day))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (builder(name(ca_name), name(ca_name), ca_key, 1)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    os.makedirs(where, exist_ok=True)

    def write(file, data):
        with open(os.path.join(where, file), "wb") as f:
            f.write(data)

    write("ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    for prefix, serial, san in (("", 2, None), ("server-", 3, "127.0.0.1")):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = builder(name(f"{prefix}leaf"), ca.subject, key, serial).add_extension(aki, critical=False)
        if san:
            cert = cert.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san))]),
                                      critical=False)
        cert = cert.sign(ca_key, hashes.SHA256())
        write(f"{prefix}cert.pem", cert.public_bytes(serialization.Encoding.PEM))
        write(f"{prefix}key.pem", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return str(where)


class FakeTLSEngine(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """The fake engine on 127.0.0.1 over TLS that, like dockerd --tlsverify, wants a client
    certificate signed by its CA."""

    daemon_threads = True

    def __init__(self, certs):
        import ssl

        self.mode, self.connections, self.requests = "plain", 0, []
        self.hung_up = threading.Event()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(os.path.join(certs, "server-cert.pem"), os.path.join(certs, "server-key.pem"))
        self.context.load_verify_locations(os.path.join(certs, "ca.pem"))
        self.context.verify_mode = ssl.CERT_REQUIRED
        super().__init__(("127.0.0.1", 0), FakeHandler)
        self.host = f"tcp://127.0.0.1:{self.server_address[1]}"

    def get_request(self):
        sock, addr = self.socket.accept()
        # The handshake happens in the handler's thread, on its first read.
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        pass  # a client the test sends with the wrong certificate: the client's error is what is checked


@pytest.fixture
def tls_engine(tmp_path):
    server = FakeTLSEngine(make_certs(tmp_path / "engine-certs", "the engine's CA"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_tls_with_the_docker_clis_settings(tls_engine, tmp_path):
    certs = str(tmp_path / "engine-certs")
    env = dict(os.environ, DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=certs)
    client = Engine(tls_engine.host, environ=env)
    assert client.image_ids() == [IMAGE_ID] and client.require(NAME).id == IMAGE_ID
    assert tls_engine.connections == 1  # kept alive over TLS too
    # DOCKER_CERT_PATH without DOCKER_TLS_VERIFY: encrypted, the engine's certificate unchecked.
    unverified = dict(os.environ, DOCKER_CERT_PATH=certs)
    unverified.pop("DOCKER_TLS_VERIFY", None)
    assert Engine(tls_engine.host, environ=unverified).image_ids() == [IMAGE_ID]


def test_tls_failures_are_one_line(tls_engine, tmp_path):
    repo = str(tmp_path / "repo")
    # Another CA: the engine's certificate does not verify.
    other = make_certs(tmp_path / "other-certs", "another CA")
    env = dict(os.environ, DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=other)
    with pytest.raises(EngineError, match=f"^Docker engine at {tls_engine.host}: .*CERTIFICATE_VERIFY_FAILED"):
        Engine(tls_engine.host, environ=env).info()
    assert "CERTIFICATE_VERIFY_FAILED" in one_line_exit_1(tls_engine.host, "push", repo, NAME, env=env)
    # No TLS settings at all: plain HTTP to a TLS port.
    plain = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    with pytest.raises(EngineError, match=f"^Docker engine at {tls_engine.host}: "):
        Engine(tls_engine.host, environ=plain).info()
    one_line_exit_1(tls_engine.host, "push", repo, NAME, env=plain)
    # A cert path without the files: the settings are at fault, named by their directory.
    empty = tmp_path / "no-certs"
    empty.mkdir()
    env = dict(os.environ, DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(empty))
    with pytest.raises(EngineError, match=f"^Docker TLS settings in {empty}: "):
        Engine(tls_engine.host, environ=env).info()
    one_line_exit_1(tls_engine.host, "push", repo, NAME, env=env, names=str(empty))


@pytest.mark.parametrize("which", ["ca.pem", "cert.pem", "key.pem"])
@pytest.mark.parametrize("what", ["fifo", "huge"])
def test_tls_files_that_are_fifos_or_huge_are_refused_unread(tls_engine, tmp_path, which, what):
    """OpenSSL opens the file it is named and reads it whole: a FIFO as ca.pem hung every
    command for ever, and a sparse 2 GiB one cost its size. Refused by type and size."""
    certs = tmp_path / "engine-certs"
    os.unlink(certs / which)
    if what == "fifo":
        os.mkfifo(certs / which)
    else:
        with open(certs / which, "wb") as f:
            f.truncate(2 << 30)  # sparse: no disk
    env = dict(os.environ, DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(certs))
    proc = subprocess.run([sys.executable, BIN, "push", str(tmp_path / "repo"), NAME], capture_output=True,
                          env=dict(env, DOCKER_HOST=tls_engine.host), timeout=30)
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and str(certs / which) in lines[0], (proc.returncode, lines)
    assert ("not a regular file" if what == "fifo" else "2147483648 bytes") in lines[0], lines


@pytest.mark.parametrize("what", ["fifo", "huge"])
def test_a_chain_cache_that_is_a_fifo_or_huge_is_no_cache(engine_named, tmp_path, what):
    """The layer-chain cache ($XDG_CACHE_HOME/dogestry/engine-chains.json) is only a cache:
    a FIFO there blocked every pull for ever, and a file of gigabytes cost its size several
    times over. Either is taken as no cache, and the pull replaces it with a real one."""
    d20 = engine_named("d20")
    name = f"chains{uuid.uuid4().hex[:8]}"
    d20.import_base(f"{name}/base:1", salt=name)
    d20.build(f"{name}/app:1", f"{name}/base:1", {"a.txt": name.encode()})
    repo = str(tmp_path / "repo")
    dogestry("push", repo, f"{name}/app:1", env=d20.env())
    d20.rmi(f"{name}/app:1")
    cache = tmp_path / "cache" / "dogestry" / "engine-chains.json"
    cache.parent.mkdir(parents=True)
    if what == "fifo":
        os.mkfifo(cache)
    else:
        with open(cache, "wb") as f:
            f.truncate(1 << 30)  # sparse: a gigabyte of NULs, no disk

    def at_most_768_mib():  # the gigabyte must not be read: the old code needed it whole
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (768 << 20, 768 << 20))

    proc = subprocess.run([sys.executable, BIN, "pull", repo, f"{name}/app:1"], capture_output=True,
                          env=dict(d20.env(), XDG_CACHE_HOME=str(tmp_path / "cache")), timeout=60,
                          preexec_fn=at_most_768_mib)
    assert proc.returncode == 0, proc.stderr.decode()
    assert os.path.isfile(cache) and json.loads(cache.read_text())  # a real cache now
