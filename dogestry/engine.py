"""The narrow interface dogestry needs from a Docker engine.

dogestry speaks the Docker Engine API itself, with the standard library's http.client: over
the engine's unix socket, or TCP with the docker CLI's TLS settings (DOCKER_TLS_VERIFY,
DOCKER_CERT_PATH). The docker SDK and requests cost ~0.13 s of imports on every run, more
than a whole pull of an image the engine already has may take; their chunked readers also
copy every byte of a save stream several times in Python. Small calls share one kept-alive
connection per thread; each save, load and pull stream gets a connection of its own. Paths
are unversioned: the engine serves its newest API, as the SDK's version="auto" did.

Images come back as image.EngineImage. The unit tests of push and pull planning
(tests/test_transfer_plan.py) use a fake of the methods those paths call:
uses_containerd_store, inspect, require, layer_chains, save, load, tag.
The containerd store's pull (pull, remove_tag, names_matching, inspect_details, is_local) is tested
against real engines only; the protocol's failures against a fake engine
(tests/test_engine_client.py).
"""

import json
import os
import re
import socket
import stat
import threading
from urllib.parse import quote, urlencode, urlsplit

from .digests import chain_ids, is_digest
from .errors import EngineError, NotFound
from .image import EngineImage
from .jsontext import too_many_values
from .tlsfiles import check_default_ca_file, check_tls_file

DEFAULT_HOST = "unix:///var/run/docker.sock"
SCHEMES = "unix://, tcp://, http:// and https://"
# A save stream is read into buffers of this size (one system call fills most of one).
READ_SIZE = 1 << 20
# The load tar goes out in batches of chunks, one sendmsg each: a store that hands out
# small pieces (S3 reads, small files' tar headers) must not cost three calls per piece.
SEND_BATCH = 1 << 20
SEND_PARTS = 3 * 64  # sendmsg takes at most IOV_MAX (1024) buffers
# Bounds on what a hostile or broken engine can make us hold: a JSON answer (a listing of
# tens of thousands of images is a few MiB), one line of a progress stream, an error body.
MAX_JSON = 64 << 20
MAX_LINE = 1 << 20
MAX_ERROR = 64 << 10
PARALLEL_INSPECTS = 8


def _unreachable(host):
    return EngineError(f"cannot reach the Docker engine at {host}: is it running? (set --docker-host, "
                       "[docker] connection or DOCKER_HOST)")


def _one_line(text, limit=2000):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _http():
    # http.client (and the email parser under it) is imported only by commands that talk
    # to an engine: `dogestry help` builds a Context, and so imports this module, too.
    import http.client

    return http.client


# The API version of Docker 24, the first with the containerd image store.
CONTAINERD_STORE_API = (1, 43)


def _api_version(header):
    """(major, minor) from an Api-Version header such as "1.41"; None when it is not one."""
    text = (header or "").strip()
    major, dot, minor = text.partition(".")
    # isascii: "²".isdigit() is True and int() refuses it
    if not (dot and text.isascii() and major.isdigit() and minor.isdigit() and len(text) < 20):
        return None
    return int(major), int(minor)


def _connection_errors():
    return (OSError, _http().HTTPException)


# Bytes a second the slowest engine we wait for exports layers (before a save sends its
# first byte) or registers them (after a load's body, the containerd store says nothing).
ENGINE_RATE = 10 << 20


def _unix_connection(path, timeout):
    http_client = _http()

    class UnixConnection(http_client.HTTPConnection):
        def connect(self):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(path)
            except OSError:
                sock.close()
                raise
            self.sock = sock

    return UnixConnection("localhost", timeout=timeout)


def _tls_context(environ):
    """The docker CLI's TLS settings, None without TLS: DOCKER_TLS_VERIFY set and not empty
    checks the engine's certificate against DOCKER_CERT_PATH/ca.pem; DOCKER_CERT_PATH alone
    encrypts without checking; cert.pem and key.pem there are our client certificate."""
    import ssl

    cert_path = environ.get("DOCKER_CERT_PATH") or None
    verify = environ.get("DOCKER_TLS_VERIFY") not in (None, "")
    if not (cert_path or verify):
        return None
    cert_path = cert_path or os.path.join(os.path.expanduser("~"), ".docker")
    try:
        for name in ("ca.pem", "cert.pem", "key.pem"):
            check_tls_file(os.path.join(cert_path, name))
        if verify:
            context = ssl.create_default_context(cafile=os.path.join(cert_path, "ca.pem"))
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        cert = os.path.join(cert_path, "cert.pem")
        if verify or os.path.exists(cert):
            context.load_cert_chain(cert, os.path.join(cert_path, "key.pem"))
    except (OSError, ssl.SSLError) as err:
        raise EngineError(f"Docker TLS settings in {cert_path}: {_one_line(err)}") from None
    return context


class _ApiError(Exception):
    """The engine answered a status >= 400; str() is its message."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class _Slot:
    """Where one thread keeps its kept-alive connection (http.client's are not thread-safe)."""

    conn = None

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class _SaveStream:
    """A `docker save` body: read(n) hands out pieces of a 1 MiB buffer that readinto fills
    (http.client decodes the chunking straight into it), so the tar reader's many small
    reads cost no system calls and big ones no extra copies."""

    def __init__(self, conn, response, host):
        self._conn, self._response, self._host = conn, response, host
        self._buf = bytearray(READ_SIZE)
        self._view = memoryview(self._buf)
        self._start = self._end = 0

    def read(self, n=-1):
        if self._start == self._end:
            try:
                got = self._response.readinto(self._buf)
            except _connection_errors() as err:
                self.close()
                raise EngineError(f"Docker engine at {self._host}: the save stream broke off "
                                  f"({_one_line(repr(err))})") from None
            self._start, self._end = 0, got
            if not got:
                return b""
        if n is None or n < 0:
            n = self._end - self._start
        piece = bytes(self._view[self._start:min(self._end, self._start + n)])
        self._start += len(piece)
        return piece

    def close(self):
        self._response.close()
        self._conn.close()


class Engine:
    def __init__(self, host, environ=None, stall=None):
        self.host = host or DEFAULT_HOST
        self._environ = os.environ if environ is None else environ
        self._info = None
        self._api_version = None  # (major, minor) from the first answer's Api-Version
        self._stall = stall  # seconds; None: DOGESTRY_STALL_TIMEOUT or its default
        self._local = threading.local()  # .slot: this thread's kept-alive connection

    # -- HTTP ---------------------------------------------------------------------------
    def stall_timeout(self):
        """Seconds an engine may leave a request without an answer (the stall timeout, as
        for remotes): an engine that accepts and never answers must not hang us."""
        if self._stall is None:
            from .backends.retry import stall_timeout

            self._stall = stall_timeout(None, self._environ)
        return self._stall

    def _connect(self, timeout=None):
        """A new (not yet connected) connection to the engine; http.client connects on the
        first request. Every wait on it (connect, send, each read) gives up after timeout
        seconds (default the stall timeout) with an error naming the engine."""
        http_client = _http()
        timeout = timeout or self.stall_timeout()
        url = _split(self.host)
        if url.scheme in ("unix", "http+unix"):
            path = self.host.split("://", 1)[1]
            if not path:
                raise EngineError(f"Docker engine URL {self.host} names no socket")
            return _unix_connection(path, timeout)
        if url.scheme in ("tcp", "http", "https"):
            try:
                hostname, port = url.hostname, url.port
            except ValueError:
                hostname = port = None
            if not hostname or not _HOSTNAME_RE.fullmatch(hostname):
                raise EngineError(f"Docker engine URL {self.host} names no host or a bad port")
            context = _tls_context(self._environ)
            if url.scheme == "https" and context is None:
                import ssl

                try:
                    check_default_ca_file(self._environ)
                except OSError as err:
                    raise EngineError(f"Docker engine at {self.host}: {err}") from None
                context = ssl.create_default_context()
            if context is not None:
                return http_client.HTTPSConnection(hostname, port or 2376, context=context, timeout=timeout)
            return http_client.HTTPConnection(hostname, port or 2375, timeout=timeout)
        raise EngineError(f"Docker engine URL {self.host}: dogestry speaks {SCHEMES} only")

    def _slot(self):
        slot = getattr(self._local, "slot", None)
        if slot is None:
            slot = self._local.slot = _Slot()
        return slot

    def _failed(self, err):
        if isinstance(err, (FileNotFoundError, ConnectionRefusedError, socket.gaierror)):
            return _unreachable(self.host)
        if isinstance(err, TimeoutError):
            return EngineError(f"Docker engine at {self.host}: no answer in {self.stall_timeout():.0f} s "
                               "(DOGESTRY_STALL_TIMEOUT, [dogestry] stall-timeout)")
        return EngineError(f"Docker engine at {self.host}: {_one_line(repr(err) if not str(err) else err)}")

    def _request(self, method, path, params=None, slot=None, timeout=None):
        """Send one request with no body; return (connection, response). With a slot, on
        its kept-alive connection (the caller reads the answer whole); without, on a
        connection of its own (a stream; the caller closes it), whose waits give up after
        timeout seconds (default the stall timeout)."""
        if params:
            path += "?" + urlencode(params, doseq=True)
        reused = slot is not None and slot.conn is not None
        conn = slot.conn if reused else self._connect(timeout)
        if slot is not None:
            slot.conn = conn
        try:
            conn.request(method, path)
            response = conn.getresponse()
            if self._api_version is None:
                self._api_version = _api_version(response.getheader("Api-Version"))
            return conn, response
        except _connection_errors() as err:
            conn.close()
            if slot is not None:
                slot.conn = None
            if reused and isinstance(err, (_http().RemoteDisconnected, BrokenPipeError, ConnectionResetError)):
                # The engine closed the idle kept-alive connection before reading this
                # request (nothing was sent but headers): ask once more on a new one.
                return self._request(method, path, None, slot)
            raise self._failed(err) from None

    def _check(self, response):
        """Raise _ApiError for a status >= 400, with the engine's message."""
        if response.status < 400:
            return
        try:
            data = response.read(MAX_ERROR)
        except _connection_errors():
            data = b""
        try:
            message = json.loads(data).get("message")
        except (ValueError, AttributeError, RecursionError):
            message = None
        message = _one_line(message or data.decode("utf-8", "replace")) or f"{response.status} {response.reason}"
        raise _ApiError(response.status, message)

    def _json(self, method, path, params=None, missing_ok=False, slot=None):
        """The engine's JSON answer (None for 404 when missing_ok), read with a size cap."""
        slot = slot or self._slot()
        conn, response = self._request(method, path, params, slot)
        try:
            try:
                self._check(response)
            except _ApiError as err:
                if err.status == 404 and missing_ok:
                    return None
                raise EngineError(f"Docker engine at {self.host}: {err}") from None
            if response.length is not None and response.length > MAX_JSON:
                raise EngineError(f"Docker engine at {self.host}: its answer to {method} {path} is larger "
                                  f"than {MAX_JSON >> 20} MiB")
            data, size = [], 0
            try:
                # In pieces: read(MAX_JSON) of an answer without a length would allocate it all.
                while size <= MAX_JSON and (piece := response.read(READ_SIZE)):
                    data.append(piece)
                    size += len(piece)
            except _connection_errors() as err:
                raise self._failed(err) from None
            data = b"".join(data)
            if size > MAX_JSON:
                raise EngineError(f"Docker engine at {self.host}: its answer to {method} {path} is larger "
                                  f"than {MAX_JSON >> 20} MiB")
            if too_many_values(data):
                raise EngineError(f"Docker engine at {self.host}: its answer to {method} {path} has implausibly "
                                  "many JSON values")
            try:
                return json.loads(data) if data.strip() else None
            except (ValueError, RecursionError):
                raise EngineError(f"Docker engine at {self.host}: its answer to {method} {path} "
                                  "is not JSON") from None
        finally:
            if not response.isclosed():
                # Not read to its end (an error, a cap): the connection cannot carry another request.
                conn.close()
                slot.conn = None

    # -- the interface ------------------------------------------------------------------
    def info(self):
        if self._info is None:
            found = self._json("GET", "/info")
            if not isinstance(found, dict):
                raise EngineError(f"Docker engine at {self.host}: its /info answer is not an object")
            self._info = found
        return self._info

    def uses_containerd_store(self):
        """True when images live in containerd's content store (docker 24+ snapshotter).

        An engine older than that store, as the Api-Version header of any answer so far says,
        is not asked: /info takes 40 ms on Docker 20.10, a quarter of a pull it already has."""
        if self._info is None and self._api_version is not None and self._api_version < CONTAINERD_STORE_API:
            return False
        status = self.info().get("DriverStatus") or []
        if not isinstance(status, list):
            raise EngineError(f"Docker engine at {self.host}: its /info answer has a DriverStatus that is not a list")
        return any(isinstance(pair, list) and len(pair) == 2 and pair[0] == "driver-type"
                   and isinstance(pair[1], str) and "snapshotter" in pair[1] for pair in status)

    def inspect_details(self, image, slot=None):
        """The engine's whole inspect of image (a dict), or None: for telling apart images
        that share every layer by their config."""
        found = self._json("GET", f"/images/{_quote(image)}/json", missing_ok=True, slot=slot)
        if found is not None and not isinstance(found, dict):
            raise EngineError(f"Docker engine at {self.host}: its inspect of {image} is not an object")
        return found

    def inspect(self, image, slot=None):
        """The EngineImage `image` names (name:tag or id), or None when the engine has none."""
        found = self.inspect_details(image, slot)
        if found is None:
            return None
        layers = (found.get("RootFS") or {}).get("Layers") if isinstance(found.get("RootFS"), dict) else None
        # Everything after trusts these to be digests (chain ids, keys): an engine is input too.
        if not _is_digest(found.get("Id")) or not isinstance(layers or [], list) or \
                not all(_is_digest(layer) for layer in layers or []):
            raise EngineError(f"Docker engine at {self.host}: its inspect of {image} lacks an id or layers")
        return EngineImage.from_inspect(found)

    def require(self, image):
        found = self.inspect(image)
        if found is None:
            raise NotFound(f"image {image} not found in the Docker engine at {self.host}")
        return found

    def _images(self, params=None):
        found = self._json("GET", "/images/json", params) or []
        if not isinstance(found, list) or not all(isinstance(img, dict) for img in found):
            raise EngineError(f"Docker engine at {self.host}: its image listing is not a list of images")
        return found

    def _ids(self, images):
        ids = [img.get("Id") for img in images]
        if not all(_is_digest(i) for i in ids):  # ids name paths and cache entries
            raise EngineError(f"Docker engine at {self.host}: its image listing has an image without an id")
        return ids

    def image_ids(self, intermediate=True):
        """Ids of the images the engine lists; intermediate=False leaves out the untagged
        parents a legacy build leaves, which Docker 28's containerd store lists slowly (with
        a 105-step build: 9.6 s for 107 images, 0.3 s without them, worse on a busy host)."""
        return self._ids(self._images({"all": "1"} if intermediate else None))

    def lists(self, image_id):
        """True when the engine lists image_id (Docker 26's containerd store hides an image
        whose content is incomplete). The short listing first: the long one is asked only
        for an image that is not in it, such as a build's intermediate."""
        return image_id in self.image_ids(intermediate=False) or image_id in self.image_ids()

    def tagged_names(self):
        """name:tag of every tagged image (for completion)."""
        return [t for img in self._images() for t in _tags(img) if t != "<none>:<none>"]

    def _inspect_many(self, ids):
        """inspect of each id (None where gone), PARALLEL_INSPECTS at a time to overlap the
        round trips; each worker on a kept-alive connection of its own, closed at the end."""
        if len(ids) <= 1:
            return [self.inspect(i) for i in ids]
        from concurrent.futures import ThreadPoolExecutor

        local, slots = threading.local(), []

        def one(image_id):
            slot = getattr(local, "slot", None)
            if slot is None:
                slot = local.slot = _Slot()
                slots.append(slot)
            return self.inspect(image_id, slot)

        try:
            with ThreadPoolExecutor(min(PARALLEL_INSPECTS, len(ids))) as pool:
                return list(pool.map(one, ids))
        finally:
            for slot in slots:
                slot.close()

    def layer_chains(self):
        """Chain ids of every layer the engine holds with everything below it.

        One listing of the top-level images (an intermediate image's chains are all its
        child's too); each id's chains come from a cache kept across runs, since an image id
        is a content hash and its layers never change: only images this host has never shown
        us are inspected, so a pull costs the same on a host with 10 images or 1,000.
        """
        ids = self._ids(self._images())
        cache = _ChainCache.load(self._environ)
        unknown = [i for i in ids if i not in cache.entries]
        for image_id, found in zip(unknown, self._inspect_many(unknown)):
            if found is not None:  # removed since the listing: nothing to learn
                cache.entries[image_id] = chain_ids(found.diff_ids)
        if unknown:
            cache.save(keep=ids)
        return {c for i in ids for c in cache.entries.get(i, ())}

    def save(self, names, size=0, platform=None):
        """A binary stream (read(n), close()) of `docker save names...`, images of about
        `size` bytes in all. A graphdriver engine exports every layer to a directory of its
        own before it sends a byte, so its silence may last as long as that export: the
        stall timeout plus a second per ENGINE_RATE bytes. platform (an OCI platform dict)
        asks Docker 28+ (API 1.48) for that platform's manifest only; older engines ignore
        the parameter and export every platform they hold."""
        params = {"names": list(names)}
        if platform:
            params["platform"] = json.dumps(platform, separators=(",", ":"))
        # At most a PiB's worth: the engine's sizes are input, and socket.settimeout refuses
        # (OverflowError) what several images claiming exabytes add up to.
        timeout = self.stall_timeout() + min(size, 1 << 50) / ENGINE_RATE
        conn, response = self._request("GET", "/images/get", params, timeout=timeout)
        try:
            self._check(response)
        except _ApiError as err:
            conn.close()
            raise EngineError(f"Docker engine at {self.host}: {err}") from None
        return _SaveStream(conn, response, self.host)

    def load(self, chunks):
        """Stream a tar into `docker load`; fail on any in-stream error the engine reports.
        A chunks iterator that raises leaves the body unfinished: the engine loads nothing."""
        conn = self._connect()
        try:
            response = self._send_chunked(conn, "/images/load?quiet=1", chunks)
            try:
                self._check(response)
            except _ApiError as err:
                raise EngineError(f"docker load into {self.host} failed: {err}") from None
            loaded = []
            for msg in self._messages(response, "docker load"):
                if msg.get("errorDetail") or msg.get("error"):
                    raise EngineError(f"docker load into {self.host} failed: {_error_detail(msg)}")
                text = msg.get("stream")
                text = text.strip() if isinstance(text, str) else ""
                if "Error unpacking image" in text:
                    raise EngineError(f"docker load into {self.host} failed: {_one_line(text)}")
                loaded.append(text)
            return loaded
        finally:
            conn.close()

    def _send_chunked(self, conn, path, chunks):
        """POST chunks as a chunked body, gathered in batches (no copy into a bigger
        buffer); return the response. An engine that answers early (an error) is heard."""
        try:
            conn.putrequest("POST", path, skip_accept_encoding=True)
            conn.putheader("Content-Type", "application/x-tar")
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
        except _connection_errors() as err:
            raise self._failed(err) from None
        sock = conn.sock
        sent = 0
        try:
            batch, size = [], 0
            for chunk in chunks:
                if chunk:
                    batch += (b"%x\r\n" % len(chunk), chunk, b"\r\n")
                    size += len(chunk)
                    if size >= SEND_BATCH or len(batch) >= SEND_PARTS:
                        _send_parts(sock, batch)
                        sent += size
                        batch, size = [], 0
            _send_parts(sock, batch + [b"0\r\n\r\n"])
            sent += size
            # The engine has the whole body and now registers it: a graphdriver engine
            # reports progress as it goes, the containerd store nothing until it is done,
            # so the wait for its answer grows with what it was given.
            sock.settimeout(self.stall_timeout() + sent / ENGINE_RATE)
        except OSError as err:
            # The engine stopped reading: its answer says why, if it gave one.
            try:
                response = conn.getresponse()
                self._check(response)
            except _ApiError as api_err:
                raise EngineError(f"docker load into {self.host} failed: {api_err}") from None
            except _connection_errors():
                pass
            raise EngineError(f"Docker engine at {self.host} broke off the load stream "
                              f"({_one_line(repr(err))})") from None
        try:
            return conn.getresponse()
        except _connection_errors() as err:
            # Seen when the engine's handler crashes on what it was given (Docker 20.10 on
            # an image for plan9): its own log says why, not the closed connection.
            raise EngineError(f"Docker engine at {self.host} gave no answer to the load: it closed the connection "
                              f"({type(err).__name__}); the engine's log says why") from None

    def _messages(self, response, what):
        """The JSON messages of a progress stream, one per line, each line and the whole capped
        (an engine that sends progress for ever must not make us wait or remember for ever)."""
        total = 0
        while True:
            try:
                line = response.readline(MAX_LINE + 1)
            except _connection_errors() as err:
                raise EngineError(f"Docker engine at {self.host}: the {what} stream broke off "
                                  f"({_one_line(repr(err))})") from None
            if not line:
                return
            total += len(line)
            if total > MAX_JSON:
                raise EngineError(f"Docker engine at {self.host}: the {what} answer goes on past "
                                  f"{MAX_JSON >> 20} MiB of messages")
            if len(line) > MAX_LINE:
                raise EngineError(f"Docker engine at {self.host}: a {what} message is longer than "
                                  f"{MAX_LINE >> 20} MiB")
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except (ValueError, RecursionError):
                msg = {"stream": line.decode("utf-8", "replace")}
            yield msg if isinstance(msg, dict) else {}

    def tag(self, image_id, ref):
        self._json("POST", f"/images/{_quote(image_id)}/tag", {"repo": ref.name, "tag": ref.tag, "force": "1"})

    # -- pulling from a registry (the containerd image store's pull-through path) ----------
    def is_local(self):
        """True when the engine shares this host's loopback: a unix socket, or tcp to
        127.0.0.0/8, ::1 or localhost. Only such an engine can reach a server dogestry
        starts on 127.0.0.1."""
        import ipaddress

        if self.host.startswith("unix://"):
            return True
        try:
            parts = urlsplit(self.host)
        except ValueError:
            return False
        if parts.scheme not in ("tcp", "http", "https"):
            return False  # npipe:// and ssh:// reach another machine or VM
        try:
            host = parts.hostname or ""
        except ValueError:
            return False
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def pull(self, repository, tag):
        """`docker pull repository:tag`; fail on any error line of the progress stream."""
        conn, response = self._request("POST", "/images/create", {"fromImage": repository, "tag": tag})
        try:
            try:
                self._check(response)
            except _ApiError as err:
                raise EngineError(f"docker pull {repository}:{tag} into {self.host} failed: {err}") from None
            for msg in self._messages(response, "docker pull"):
                if msg.get("errorDetail") or msg.get("error"):
                    raise EngineError(f"docker pull {repository}:{tag} into {self.host} failed: "
                                      f"{_error_detail(msg)}")
        finally:
            conn.close()

    def remove_tag(self, name):
        """Remove the name `name` (name:tag); the image stays while another name holds it."""
        self._json("DELETE", f"/images/{_quote(name)}", {"noprune": "1"}, missing_ok=True)

    def names_matching(self, pattern):
        """The names (name:tag) `docker images PATTERN` shows. The containerd store hides an
        image whose content is incomplete (it runs, but cannot be saved) from it."""
        found = self._images({"filters": json.dumps({"reference": [pattern]})})
        return [tag for img in found for tag in _tags(img)]


# A host name or an IP address literal (IPv6 with an optional zone): nothing that
# http.client would refuse later with its own exception.
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9._-]+|[0-9A-Fa-f:.]+(%[A-Za-z0-9._-]+)?")


# Longer than any socket path (108 bytes) or host name (253) with its scheme and port: not
# an engine URL, and not to be quoted whole in every error that names the engine.
MAX_URL = 1024


def _split(host):
    if len(host) > MAX_URL:
        raise EngineError(f"Docker engine URL {host[:100]}... is {len(host)} characters long; "
                          "it names no socket or host")
    try:
        return urlsplit(host)
    except ValueError as err:  # "Invalid IPv6 URL", a bad port...
        raise EngineError(f"Docker engine URL {host} is not a URL ({err})") from None


def _quote(name):
    # An image reference in a path: docker routes /images/{name:.*}/..., so '/' ':' '@' stay.
    return quote(name, safe="/:@")


def _error_detail(msg):
    detail = msg.get("errorDetail")
    detail = detail.get("message") if isinstance(detail, dict) else None
    return _one_line(detail or msg.get("error") or "an error with no message")


def _send_parts(sock, parts):
    """Send parts in order: gathered into one sendmsg call each time (no copy into a
    joined buffer), or joined where the socket cannot gather (TLS)."""
    if type(sock) is not socket.socket:
        sock.sendall(b"".join(parts))
        return
    views = [memoryview(p).cast("B") for p in parts]
    while views:
        sent = sock.sendmsg(views)
        while sent:
            if sent >= len(views[0]):
                sent -= len(views.pop(0))
            else:
                views[0], sent = views[0][sent:], 0


CACHE_NAME = "engine-chains.json"
CACHE_LIMIT = 20000  # entries kept before those of images no longer listed are dropped
MAX_CACHE_FILE = 64 << 20  # 20,000 chains of a dozen layers are about 20 MiB


class _ChainCache:
    """{image id: [chain id, ...]} in $XDG_CACHE_HOME/dogestry (default ~/.cache/dogestry).

    Only a cache: unreadable, damaged or unwritable means asking the engine again, never a
    failure. Entries that are not well-formed digests are dropped on load.
    """

    def __init__(self, path, entries):
        self.path, self.entries = path, entries

    @classmethod
    def load(cls, environ=os.environ):
        base = os.path.join(environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                            "dogestry")
        path = os.path.join(base, CACHE_NAME)
        entries, raw = {}, None
        try:
            # Not a plain open(): a FIFO put there blocked every pull for ever, and a file of
            # gigabytes cost its size several times over. Either is taken as no cache.
            with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
                info = os.fstat(f.fileno())
                if stat.S_ISREG(info.st_mode) and info.st_size <= MAX_CACHE_FILE:
                    raw = json.loads(f.read(MAX_CACHE_FILE + 1))
            if isinstance(raw, dict):
                entries = {k: v for k, v in raw.items() if _is_digest(k) and isinstance(v, list)
                           and all(_is_digest(c) for c in v)}
        except (OSError, ValueError, RecursionError):
            pass
        return cls(path, entries)

    def save(self, keep):
        entries = self.entries
        if len(entries) > CACHE_LIMIT:
            entries = {k: entries[k] for k in keep if k in entries}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(entries, f, separators=(",", ":"))
            os.replace(tmp, self.path)  # readers see the old file or the new, whole
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _tags(img):
    """The names an image listing gives an image: strings in a list, anything else none."""
    tags = img.get("RepoTags")
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def _is_digest(text):
    return isinstance(text, str) and is_digest(text)
