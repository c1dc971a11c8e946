"""Any repository as a read-only OCI registry: the pull side of the distribution spec v1.1.

    GET  /v2/                                      API check
    GET  /v2/_catalog[?n=&last=]                   names that have tags
    GET  /v2/<name>/tags/list[?n=&last=]           tags of a name, in lexical order
    HEAD/GET /v2/<name>/manifests/<tag|digest>     the OCI manifest dogestry builds (or Docker schema 2)
    HEAD/GET /v2/<name>/blobs/<digest>             configs by image id, layers by diffID; Range
    anything that writes                           405 UNSUPPORTED

Manifests are image.Image.manifest(), byte for byte, so an image pulled into the
containerd store gets the id `dogestry pull` would give it; the one exception is an image
with a zero-byte layer, which containerd would not fetch: that layer is described, and
served, as a 20-byte gzip of nothing (EMPTY_GZIP). A client that accepts only
Docker schema 2 gets the same image described in that schema (another digest). Layers go
out uncompressed (media type ...layer.v1.tar, digest = diffID), decompressed from the stored
codec as they stream and verified by Repository.layer_chunks, which fails before the last
chunk when the bytes do not hash to the diffID: the response is then cut short of its
Content-Length, so the client's pull fails instead of completing with damaged content.

`dogestry serve` keeps a disk cache of decompressed layers (a private directory under the
temp dir, bounded, removed on exit): each layer is decoded and verified once, by a fill
thread of its own, into a file there, and every client of that layer (the first, the ones
that ask while it fills, and every later one) is sent that file's bytes with sendfile as
they are written, never past what the fill has written. The fill holds the layer's last
chunk back until the bytes hash to the diffID (layerstore's rule), so a client never gets
a whole layer that failed; one that did fail is dropped from the cache and its clients
are cut off. Without it, eight clients of one image decompressed and hashed every layer
eight times over two cores, and that, not the network, was the server's ceiling. The
cache trusts its own files: only this process writes the directory (mode 0700), and a
file counts as verified only in this process's memory, for this process's life. The
ephemeral server of a pull into the containerd store has no cache (each layer is read
once there): it streams through Repository.layer_chunks, as does any layer too large for
the cache's bound.

Threads, not asyncio: every repository call blocks (files, boto3, urllib), and a layer
already streams through Repository.layer_chunks's own reader thread and bounded queue, so a
thread per connection (http.server's ThreadingHTTPServer) is the plainest fit; asyncio would
wrap each of those calls in an executor and gain nothing on a loopback server with a
handful of clients. Memory per streaming client is a few decompressed chunks (about 1 MiB
each), whatever the layer size.

Names, tags and digests are checked against the spec's grammars on the raw request path,
never percent-decoded first, before they become keys: `..`, `%2e` and encoded slashes cannot
match, so nothing outside the repository's keys is ever asked for.
"""

import ctypes
import io
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import TCPServer, ThreadingMixIn
from urllib.parse import parse_qs, quote

from .backends.retry import stall_timeout
from .digests import is_digest, sha256_digest
from .errors import CorruptObject, DogestryError, NotFound, StorageError, UsageError
from .refs import Ref

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_GZIP_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
BLOB = "application/octet-stream"

# distribution-spec v1.1 grammars. Neither admits `%`, an empty component or one that
# starts with `.`, so a path that matches cannot traverse.
_NAME_RE = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
_TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
_MAX_NAME = 255
_ROUTE_RE = re.compile(r"/v2/(?P<name>.+)/(?:(?P<kind>manifests|blobs)/(?P<ref>[^/]+)|(?P<tags>tags/list))")
_RANGE_RE = re.compile(r"\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*")  # ASCII digits: \d takes "٣"
# Offsets beyond any blob are cut to this many digits before int(): Python refuses to
# convert more than 4300, and a range or page size that large means "all of it" anyway.
_MAX_DIGITS = 18
IDLE_TIMEOUT = 600  # seconds a keep-alive connection may sit idle between requests before it is dropped
# Seconds a client has to send a whole request head, and may leave a response unread,
# unless the server is given the stall timeout (`dogestry serve` passes it): a client that
# trickles its headers a byte a second, or stops reading mid-layer, holds a thread and a
# connection slot only that long.
STALL_TIMEOUT = 120
# Connections served at once (a thread each). Beyond it a client gets 429 at once: idle or
# trickling connections cannot grow the threads and memory without bound. A docker pull
# opens a few; containerd at most a few per layer.
MAX_CONNECTIONS = 256
_TOO_MANY = json.dumps({"errors": [{"code": "TOOMANYREQUESTS", "message": "too many connections; retry",
                                    "detail": None}]}).encode()
# The layer cache's bound (and never more than half the free space where it lives): a few
# large images' layers, uncompressed.
CACHE_LIMIT = 8 << 30


class _Refusal(Exception):
    """A request answered with a spec error body: status, code, message."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# containerd will not fetch a descriptor of size zero ("reports content size of zero"), yet
# a zero-byte layer is a valid empty diff (graphdriver engines export one as is). Such a
# layer goes out as this gzip stream of nothing: 20 bytes whose content is the zero bytes,
# so the diffID every client computes while unpacking is still the layer's.
EMPTY_GZIP = bytes.fromhex("1f8b08000000000000ff03000000000000000000")
EMPTY_GZIP_DIGEST = sha256_digest(EMPTY_GZIP)
_EMPTY_LAYER = {"digest": EMPTY_GZIP_DIGEST, "size": len(EMPTY_GZIP)}


def oci_manifest(record):
    """The image as the OCI manifest dogestry loads it with (record.manifest(), whose digest
    the containerd store names it by), a zero-byte layer described as EMPTY_GZIP."""
    data = record.manifest()
    if all(layer.uncompressed_size for layer in record.layers):
        return data
    manifest = json.loads(data)
    manifest["layers"] = [dict(_EMPTY_LAYER, mediaType=OCI_GZIP_LAYER) if layer["size"] == 0 else layer
                          for layer in manifest["layers"]]
    return json.dumps(manifest, separators=(",", ":")).encode()


def docker_manifest(record):
    """The image as a Docker schema 2 manifest, for clients that accept nothing newer."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": record.config_size, "digest": record.id},
        "layers": [{"mediaType": DOCKER_LAYER, "size": layer.uncompressed_size, "digest": layer.diff_id}
                   if layer.uncompressed_size else dict(mediaType=DOCKER_GZIP_LAYER, **_EMPTY_LAYER)
                   for layer in record.layers],
    }
    return json.dumps(manifest, separators=(",", ":")).encode()


class _Catalog:
    """What the server can serve, found through image records.

    Image records, configs and layers are content-addressed, so what is learned about an
    image id never goes stale and is cached for the server's life; refs are mutable and
    read on every request. A digest not yet known makes one pass over the image records
    (newly pushed images appear without a restart).
    """

    def __init__(self, repo, warn):
        self.repo = repo
        self.warn = warn
        self._lock = threading.Lock()
        self._records = {}    # image id -> ImageRecord
        self._manifests = {}  # image id -> {media type: bytes}
        self._by_digest = {}  # manifest digest -> (image id, media type)
        self._layers = {}     # diffID -> LayerDescriptor of some image record
        self._damaged = set()

    def image(self, image_id):
        with self._lock:
            record = self._records.get(image_id)
        if record is None:
            record = self.repo.get_image(image_id)
            self._add(record)
        return record

    def _add(self, record):
        manifests = {OCI_MANIFEST: oci_manifest(record),
                     DOCKER_MANIFEST: docker_manifest(record)}
        with self._lock:
            self._records[record.id] = record
            self._manifests[record.id] = manifests
            for media_type, data in manifests.items():
                self._by_digest[sha256_digest(data)] = (record.id, media_type)
            for layer in record.layers:
                self._layers.setdefault(layer.diff_id, layer)

    def manifest(self, image_id, media_type):
        self.image(image_id)
        with self._lock:
            return self._manifests[image_id][media_type]

    def _rescan(self):
        for image_id in self.repo.image_ids():
            with self._lock:
                known = image_id in self._records or image_id in self._damaged
            if known:
                continue
            try:
                self.image(image_id)
            except (CorruptObject, NotFound) as err:
                # One damaged record must not hide every other image; say so once.
                with self._lock:
                    self._damaged.add(image_id)
                self.warn(f"not serving image {image_id}: {err}")

    def by_manifest_digest(self, digest):
        with self._lock:
            found = self._by_digest.get(digest)
        if found is None:
            self._rescan()
            with self._lock:
                found = self._by_digest.get(digest)
        return found

    def layer(self, diff_id):
        with self._lock:
            found = self._layers.get(diff_id)
        if found is None:
            self._rescan()
            with self._lock:
                found = self._layers.get(diff_id)
        return found

    def is_image(self, image_id):
        with self._lock:
            if image_id in self._records:
                return True
        return self.repo.has_image(image_id)


class _Fill:
    """One layer being (or having been) decoded into the cache: how far it got, how it ended."""

    def __init__(self, path, size):
        self.path, self.size = path, size
        self.written = 0
        self.done = False      # every byte written and verified
        self.error = None      # the DogestryError that ended the fill
        self.users = 0         # responses reading the file now: never evicted under them
        self.changed = threading.Condition()


class LayerCache:
    """Verified, decompressed layers in files, at most `limit` bytes of them.

    claim() returns the layer's _Fill, starting a fill thread for a layer not present;
    the caller reads the file as the fill writes it (follow()). Complete files are evicted
    least recently used first; a layer that does not fit beside the files in use is not
    cached (None: the caller streams it as before). An eviction unlinks a file only when
    no response reads it.
    """

    def __init__(self, repo, directory, limit, warn):
        self.repo, self.dir, self.limit, self.warn = repo, directory, limit, warn
        self._lock = threading.Lock()
        self._fills = OrderedDict()  # diffID -> _Fill, least recently used first
        self._used = 0
        self._broken = False

    @classmethod
    def create(cls, repo, temp_dir, warn, limit=None):
        """A cache in a new private directory under temp_dir (None: the system's)."""
        try:
            directory = tempfile.mkdtemp(prefix="dogestry-serve-", dir=temp_dir)
            free = shutil.disk_usage(directory).free
        except OSError as err:
            raise DogestryError(f"cannot create the layer cache in {temp_dir or tempfile.gettempdir()}: "
                                f"{err.strerror or err}") from None
        # Half the free space at most: the cache must not be what fills the disk.
        return cls(repo, directory, min(CACHE_LIMIT if limit is None else limit, free // 2), warn)

    def claim(self, layer):
        size = layer.uncompressed_size
        with self._lock:
            fill = self._fills.get(layer.diff_id)
            if fill is not None:
                # Opened under the lock: only a fill that failed or an eviction, both under
                # it, unlink the file; once open, an unlinked file stays readable.
                try:
                    reader = open(fill.path, "rb")
                except OSError as err:
                    self._break(f"cannot read the layer cache in {self.dir}: {err.strerror or err}")
                    return None
                self._fills.move_to_end(layer.diff_id)
                fill.users += 1
                return fill, reader
            if self._broken or not self._make_room(size):
                return None
            path = os.path.join(self.dir, layer.diff_id[7:])
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                writer, reader = open(fd, "wb", buffering=0), open(path, "rb")
            except OSError as err:
                self._break(f"cannot write the layer cache in {self.dir}: {err.strerror or err}")
                return None
            fill = self._fills[layer.diff_id] = _Fill(path, size)
            fill.users = 1
            self._used += size
        threading.Thread(target=self._fill, args=(layer, fill, writer), name="dogestry-cache-fill",
                         daemon=True).start()
        return fill, reader

    def release(self, fill):
        with self._lock:
            fill.users -= 1

    def _make_room(self, size):
        if size > self.limit:
            return False
        for diff_id, fill in list(self._fills.items()):
            if self._used + size <= self.limit:
                break
            if fill.done and fill.users == 0:
                self._drop(diff_id, fill)
        return self._used + size <= self.limit

    def _drop(self, diff_id, fill):
        if self._fills.get(diff_id) is fill:
            del self._fills[diff_id]
            self._used -= fill.size
        try:
            os.unlink(fill.path)  # a response still reading it keeps its open file
        except OSError:
            pass

    def _break(self, reason):
        if not self._broken:
            self._broken = True
            self.warn(f"{reason}; layers are streamed from the repository from now on")

    def _fill(self, layer, fill, out):
        try:
            with out:
                for chunk in self.repo.layer_chunks(layer):
                    try:
                        view = memoryview(chunk)
                        while view:  # an unbuffered write may take less than it is given
                            view = view[out.write(view):]
                    except OSError as err:
                        with self._lock:
                            self._break(f"cannot write the layer cache in {self.dir}: {err.strerror or err}")
                        raise StorageError(f"layer {layer.diff_id}: the layer cache in {self.dir} failed: "
                                           f"{err.strerror or err}") from None
                    with fill.changed:
                        fill.written += len(chunk)
                        fill.changed.notify_all()
            if fill.written != fill.size:  # layer_chunks checks sizes; this guards the file
                raise CorruptObject(f"layer {layer.diff_id} gave {fill.written} of {fill.size} bytes")
            with fill.changed:
                fill.done = True
                fill.changed.notify_all()
        except Exception as err:
            if not isinstance(err, DogestryError):
                err = DogestryError(f"layer {layer.diff_id}: the layer cache failed: {type(err).__name__}: {err}")
            with self._lock:
                self._drop(layer.diff_id, fill)  # the next request reads the repository again
            with fill.changed:
                fill.error = err
                fill.changed.notify_all()

    def close(self):
        with self._lock:
            self._fills.clear()
            self._used = 0
        shutil.rmtree(self.dir, ignore_errors=True)


def follow(fill, start, stop):
    """Yield (offset, count) of the cached file's bytes in [start, stop) as the fill
    writes them. Raises the fill's error when it ends before reaching stop."""
    position = start
    while position < stop:
        with fill.changed:
            while fill.written <= position and fill.error is None and not fill.done:
                fill.changed.wait(IDLE_TIMEOUT)
            written, error = fill.written, fill.error
        if written <= position:
            if error is not None:
                raise type(error)(str(error))
            raise CorruptObject(f"cached layer gave {written} of {stop} bytes")  # done short: cannot happen
        count = min(written, stop) - position
        yield position, count
        position += count


def _check_name(name):
    if len(name) > _MAX_NAME or not _NAME_RE.fullmatch(name):
        raise _Refusal(400, "NAME_INVALID", f"invalid repository name {name[:300]!r}")
    return name


def _check_digest(text):
    if not is_digest(text):
        raise _Refusal(400, "DIGEST_INVALID", f"invalid digest {text!r}: this registry serves sha256:<64 hex digits>")
    return text


def _page(items, query, what):
    """distribution-spec pagination: at most n items after `last`, and the query of the next page."""
    last = query.get("last", [None])[-1]
    if last is not None:
        items = [item for item in items if item > last]
    n = query.get("n", [None])[-1]
    if n is None:
        return items, None
    if not (n.isascii() and n.isdigit()):  # "²".isdigit() is true, and int() refuses it
        raise _Refusal(400, "PAGINATION_NUMBER_INVALID", f"invalid n={n!r} for {what}: give a number")
    n = int(n) if len(n) <= _MAX_DIGITS else 10 ** _MAX_DIGITS
    if len(items) > n and n > 0:
        return items[:n], f"n={n}&last={quote(items[n - 1], safe='')}"
    return items[:n], None


def parse_range(header, size):
    """A Range header -> (start, end) inclusive; None to send the whole blob; ValueError
    when no byte of it exists. Unsupported forms (several ranges, other units) are ignored,
    as RFC 9110 allows: the client gets the whole blob."""
    m = _RANGE_RE.fullmatch(header or "")
    if not m or not (m.group(1) or m.group(2)):
        return None
    first, last = (_capped(group) for group in m.groups())
    if first is None:
        suffix = last
        if suffix == 0 or size == 0:
            raise ValueError
        return max(0, size - suffix), size - 1
    start = first
    if last is not None and last < start:
        return None  # not a valid range: ignored
    if start >= size:
        raise ValueError
    return start, min(size - 1 if last is None else last, size - 1)


def _capped(digits):
    """An offset from a Range header (None when absent), numbers past any size cut to one."""
    if not digits:
        return None
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_DIGITS else 10 ** _MAX_DIGITS


def _pick_manifest_type(accept):
    """OCI unless the client accepts Docker schema 2 and not OCI (nor */*)."""
    if not accept:
        return OCI_MANIFEST
    types = {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}
    if DOCKER_MANIFEST in types and OCI_MANIFEST not in types and "*/*" not in types:
        return DOCKER_MANIFEST
    return OCI_MANIFEST


class _DeadlineSocketReader(io.RawIOBase):
    """The socket's read side, under a deadline while a request head is being read.

    A socket timeout bounds each recv, not a request: a client sending one byte every
    second would never be dropped. While `deadline` is set, each recv waits only for what
    is left of it, and past it raises TimeoutError (which http.server answers by closing)."""

    def __init__(self, sock):
        self.sock = sock
        self.deadline = None

    def readable(self):
        return True

    def readinto(self, buffer):
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("request head not received in time")
            self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/[^\s'\",;:()]+")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: docker and containerd reuse connections
    server_version = "dogestry-serve"
    # What an error answer assumes before the request line is parsed. http.server's
    # HTTP/0.9 default sends a bare HTML page, no status line, which no client can read.
    default_request_version = "HTTP/1.0"
    timeout = IDLE_TIMEOUT  # set again per request (handle_one_request)
    # TCP_NODELAY: a response is its head, then its body, in two writes; with Nagle the body
    # waited for the client's delayed ACK of the head (40 ms on Linux), once per blob: a
    # containerd pull of one small image spent 50 ms of its 170 there.
    disable_nagle_algorithm = True

    # -- plumbing of one response ----------------------------------------------------
    def setup(self):
        super().setup()
        self.rfile.close()  # replaced by a reader with a deadline; the socket stays open
        self._reader = _DeadlineSocketReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)
        self.server.app._track(self.connection, True)

    def handle_one_request(self):
        # Idle between requests for up to IDLE_TIMEOUT; from the request's first byte, the
        # stall timeout for the whole head. Cleared in parse_request once the head is in.
        self.connection.settimeout(IDLE_TIMEOUT)
        self._reader.deadline = None
        try:
            if not self.rfile.peek(1):
                self.close_connection = True
                return
        except (TimeoutError, ConnectionError):
            self.close_connection = True
            return
        self._reader.deadline = time.monotonic() + self.server.app.stall
        super().handle_one_request()

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.app._track(self.connection, False)

    def parse_request(self):
        if self.raw_requestline[:1] == b"\x16":
            # A TLS ClientHello: the client tries https first (containerd, and so Docker's
            # containerd store, for 127.0.0.1). It falls back to plain http only when the
            # answer starts with "HTTP/", which http.server's reply to a garbled request does not.
            self.close_connection = True
            self.wfile.write(b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                             b"this is a plain-http registry: use http://\n")
            self.server.app.log(f"{self.address_string()} TLS handshake refused: this server speaks plain http")
            return False
        if len(self.raw_requestline.split()) == 2:
            # HTTP/0.9: no status line and no headers in the answer, which no registry client
            # reads, and http.server would wait for headers such a request never sends.
            self.close_connection = True
            self.wfile.write(b"HTTP/1.0 505 HTTP Version Not Supported\r\nContent-Type: text/plain\r\n"
                             b"Connection: close\r\n\r\nHTTP/0.9 is not supported: use HTTP/1.1\n")
            self.server.app.log(f"{self.address_string()} HTTP/0.9 request refused")
            return False
        if not super().parse_request():
            return False
        # The head is in: from here the socket waits as long as a stalled client may make it.
        self._reader.deadline = None
        self.connection.settimeout(self.server.app.stall)
        if self.command in ("GET", "HEAD") and (self.headers.get("Content-Length", "0").strip() not in ("", "0")
                                                 or "Transfer-Encoding" in self.headers):
            # A body nobody reads would be parsed as the next request (request smuggling
            # behind a proxy): answer this one, then close.
            self.close_connection = True
        return True

    def handle_expect_100(self):
        # "100 Continue" invites the body; a write is refused unread, so it gets no invitation.
        if self.command in ("GET", "HEAD"):
            return super().handle_expect_100()
        return True

    def log_request(self, code="-", size="-"):
        pass  # one line per request is written when the response is complete (_handle)

    def log_message(self, format, *args):
        self.server.app.log(f"{self.address_string()} {(format % args)[:300]}")

    def _start(self, status, headers, length):
        self._status = status
        self.send_response(status)
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send(self, status, body=b"", headers=None, content_type="application/json"):
        headers = dict(headers or {})
        headers.setdefault("Content-Type", content_type)
        self._start(status, headers, len(body))
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            self._sent += len(body)

    def _json(self, status, obj, headers=None):
        self._send(status, (json.dumps(obj, sort_keys=True) + "\n").encode(), headers)

    def _refuse(self, refusal, headers=None):
        self._json(refusal.status, {"errors": [{"code": refusal.code, "message": refusal.message, "detail": None}]},
                   headers)

    def _handle(self):
        self._status, self._sent = None, 0
        began = time.monotonic()
        try:
            self._dispatch()
        except _Refusal as refusal:
            self._refuse(refusal)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except DogestryError as err:
            # The whole story goes to the server's stderr; a client learns what failed, not
            # where the repository lives (its path, bucket or endpoint).
            self.server.app.warn(f"{self.command} {self.path}: {err}")
            told = str(err)
            for where in (self._repo.location, getattr(self._repo.backend, "endpoint", None)):
                if where:
                    told = told.replace(where, "this registry's storage")
            # Any other absolute path (where a link out of a local repository leads) too.
            told = _ABSOLUTE_PATH.sub("<path>", told)
            if self._status is None and isinstance(err, NotFound):
                # An object the records name is missing: to the client it is unknown.
                code = "MANIFEST_UNKNOWN" if "/manifests/" in self.path else "BLOB_UNKNOWN"
                self._refuse(_Refusal(404, code, told))
            elif self._status is None:
                self._refuse(_Refusal(500, "UNKNOWN", told))
            else:
                self.close_connection = True
        finally:
            self.server.app.log(f"{self.address_string()} \"{self.requestline[:300]}\" {self._status or '-'} "
                                f"{self._sent} {time.monotonic() - began:.3f}s")

    def do_GET(self):
        self._handle()

    def do_HEAD(self):
        self._handle()

    def _read_only(self):
        # The body (if any) stays unread: close rather than parse it as the next request.
        self.close_connection = True
        self._status, self._sent = None, 0
        self._refuse(_Refusal(405, "UNSUPPORTED", f"{self.command} is not supported: this registry is read-only"),
                     {"Allow": "GET, HEAD"})
        self.server.app.log(f"{self.address_string()} \"{self.requestline[:300]}\" 405 {self._sent}")

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _read_only

    # -- the API -------------------------------------------------------------------------
    def _dispatch(self):
        path, _, query_text = self.path.partition("?")
        query = parse_qs(query_text, keep_blank_values=True)
        if path in ("/v2", "/v2/"):
            return self._json(200, {})
        if path == "/v2/_catalog":
            return self._catalog(query)
        route = _ROUTE_RE.fullmatch(path)
        if route is None:
            raise _Refusal(404, "UNSUPPORTED", f"no such endpoint: {path[:200]!r}")
        name = _check_name(route.group("name"))
        if route.group("tags"):
            return self._tags(name, query)
        reference = route.group("ref")
        if route.group("kind") == "manifests":
            return self._manifest(name, reference)
        return self._blob(name, _check_digest(reference))

    @property
    def _repo(self):
        return self.server.app.repo

    def _tags_of(self, name):
        tags = sorted(ref.tag for _, ref in self._repo.list_refs(name) if ref.name == name)
        if not tags:
            raise _Refusal(404, "NAME_UNKNOWN", f"repository name {name!r} is not known to this registry")
        return tags

    def _catalog(self, query):
        names = sorted({ref.name for _, ref in self._repo.list_refs() if _NAME_RE.fullmatch(ref.name)})
        names, next_query = _page(names, query, "_catalog")
        headers = {"Link": f'</v2/_catalog?{next_query}>; rel="next"'} if next_query else None
        self._json(200, {"repositories": names}, headers)

    def _tags(self, name, query):
        tags, next_query = _page(self._tags_of(name), query, f"{name} tags")
        headers = {"Link": f'</v2/{name}/tags/list?{next_query}>; rel="next"'} if next_query else None
        self._json(200, {"name": name, "tags": tags}, headers)

    def _manifest(self, name, reference):
        catalog = self.server.app.catalog
        tags = self._tags_of(name)
        if ":" in reference:
            digest = _check_digest(reference)
            found = catalog.by_manifest_digest(digest)
            if found is None:
                raise _Refusal(404, "MANIFEST_UNKNOWN", f"manifest {digest} is not known to this registry")
            image_id, media_type = found  # a digest names exact bytes, whatever Accept says
        else:
            if not _TAG_RE.fullmatch(reference):
                raise _Refusal(400, "TAG_INVALID", f"invalid tag {reference!r}")
            if reference not in tags:
                raise _Refusal(404, "MANIFEST_UNKNOWN", f"{name}:{reference} is not known to this registry")
            try:
                image_id = self._repo.get_ref(Ref(name, reference))
            except NotFound:  # removed since the listing
                raise _Refusal(404, "MANIFEST_UNKNOWN", f"{name}:{reference} is not known to this registry") from None
            media_type = _pick_manifest_type(",".join(self.headers.get_all("Accept") or []))
        body = catalog.manifest(image_id, media_type)
        self._send(200, body, {"Docker-Content-Digest": sha256_digest(body)}, content_type=media_type)

    def _blob(self, name, digest):
        self._tags_of(name)
        catalog = self.server.app.catalog
        if digest == EMPTY_GZIP_DIGEST:  # what a zero-byte layer is served as
            return self._send_bytes(digest, EMPTY_GZIP)
        if catalog.is_image(digest):
            config = self._repo.get_config(digest)
            return self._send_bytes(digest, config)
        layer = catalog.layer(digest)
        if layer is None:
            raise _Refusal(404, "BLOB_UNKNOWN", f"blob {digest} is not known to this registry")
        return self._send_layer(layer)

    def _range(self, size):
        """(status, start, end, extra headers) for this request against a blob of size bytes."""
        try:
            wanted = parse_range(self.headers.get("Range"), size)
        except ValueError:
            raise _Refusal(416, "RANGE_INVALID", f"range {self.headers.get('Range')[:100]!r} lies beyond the blob's "
                                                 f"{size} bytes") from None
        if wanted is None:
            return 200, 0, size - 1, {}
        start, end = wanted
        return 206, start, end, {"Content-Range": f"bytes {start}-{end}/{size}"}

    def _send_bytes(self, digest, data):
        try:
            status, start, end, headers = self._range(len(data))
        except _Refusal as refusal:
            return self._refuse(refusal, {"Content-Range": f"bytes */{len(data)}"})
        headers.update({"Docker-Content-Digest": digest, "Accept-Ranges": "bytes"})
        self._send(status, data[start:end + 1], headers, content_type=BLOB)

    def _send_layer(self, layer):
        size = layer.uncompressed_size
        try:
            status, start, end, headers = self._range(size)
        except _Refusal as refusal:
            return self._refuse(refusal, {"Content-Range": f"bytes */{size}"})
        headers.update({"Docker-Content-Digest": layer.diff_id, "Accept-Ranges": "bytes", "Content-Type": BLOB})
        if self.command == "HEAD":
            return self._start(status, headers, end + 1 - start)
        cache = self.server.app.cache
        claimed = cache.claim(layer) if cache is not None and size else None
        if claimed is not None:
            fill, reader = claimed
            try:
                return self._send_cached(layer, fill, reader, status, headers, start, end)
            finally:
                reader.close()
                cache.release(fill)
        chunks = self._repo.layer_chunks(layer)
        try:
            # The first chunk before the headers: a layer that is missing, or damaged and
            # small enough to be one chunk, still gets an error status.
            first = next(chunks, None)
            self._start(status, headers, end + 1 - start)
            position = 0  # offset of `chunk` in the layer
            chunk = first
            while chunk is not None and position <= end:
                piece = chunk[max(0, start - position):end + 1 - position]
                if piece:
                    self.wfile.write(piece)
                    self._sent += len(piece)
                position += len(chunk)
                if position > end:
                    break  # a range short of the end is served without the final verdict
                chunk = next(chunks, None)
        finally:
            chunks.close()
        if self._sent != end + 1 - start:
            raise CorruptObject(f"layer {layer.diff_id} gave {self._sent} of {end + 1 - start} bytes")

    def _send_cached(self, layer, fill, cached, status, headers, start, end):
        pieces = follow(fill, start, end + 1)
        # The first bytes before the headers: a layer that is missing, or damaged and
        # small enough to be one chunk, still gets an error status.
        piece = next(pieces)
        self._start(status, headers, end + 1 - start)
        while piece is not None:
            offset, count = piece
            # sendfile: the page cache to the socket, no copy through Python.
            self._sent += self.connection.sendfile(cached, offset, count)
            piece = next(pieces, None)
        if self._sent != end + 1 - start:
            raise CorruptObject(f"layer {layer.diff_id} gave {self._sent} of {end + 1 - start} bytes")


class _HTTPServer(ThreadingMixIn, HTTPServer):
    daemon_threads = True  # a stalled client never keeps the process from exiting

    def __init__(self, *args, **kwargs):
        self._connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        if not self._connections.acquire(blocking=False):
            try:
                request.settimeout(1)
                request.sendall(b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 1\r\nConnection: close\r\n"
                                b"Content-Length: %d\r\n\r\n%s" % (len(_TOO_MANY), _TOO_MANY))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        slot = _Slot(self._connections)
        try:
            threading.Thread(target=self._serve_connection, args=(request, client_address, slot),
                             name="dogestry-serve-client", daemon=True).start()
        except BaseException:
            # A SIGTERM's KeyboardInterrupt can land here after the thread has started (and
            # even finished): the slot is released once whoever gets there first, so the
            # interrupt is not replaced by "Semaphore released too many times" and lost.
            slot.release()
            raise

    def _serve_connection(self, request, client_address, slot):
        # Not ThreadingMixIn's bookkeeping: server_close would join every client thread,
        # and an idle keep-alive client would hold a stop for IDLE_TIMEOUT.
        try:
            self.process_request_thread(request, client_address)
        finally:
            slot.release()

    def server_bind(self):
        # HTTPServer.server_bind resolves our own name (getfqdn), which can stall on DNS.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        err = sys.exc_info()[1]
        self.app.warn(f"request from {client_address[0]} failed: {type(err).__name__}: {err}")


class _Slot:
    """One connection's place under MAX_CONNECTIONS, released exactly once."""

    def __init__(self, semaphore):
        self._semaphore = semaphore
        self._held = True
        self._lock = threading.Lock()

    def release(self):
        with self._lock:
            held, self._held = self._held, False
        if held:
            self._semaphore.release()


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


def _family(host):
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return infos[0][0]


def is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def parse_listen(text):
    """`HOST:PORT` or `[IPv6]:PORT` -> (host, port); port 0 picks a free one."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    if not m:
        raise UsageError(f"invalid --listen {text!r}: use HOST:PORT (e.g. 127.0.0.1:5000, [::1]:5000, 127.0.0.1:0)")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    # ASCII and short before int(): int() reads '５' (full-width) as 5, which no one means,
    # and refuses more than 4,300 digits with a ValueError.
    if not port.isascii() or len(port) > 5 or int(port) > 65535:
        raise UsageError(f"invalid port {port[:80]!r} in --listen {text[:200]!r}")
    return host, int(port)


def url_of(host, port):
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Server:
    """A read-only registry over repo. start() serves from a background thread (for a
    caller that pulls from it, such as a test or `dogestry pull`); serve_forever() serves
    from the calling thread until stop() or an exception such as KeyboardInterrupt."""

    def __init__(self, repo, listen=("127.0.0.1", 0), log=None, warn=None, cache=None, stall=STALL_TIMEOUT):
        self.repo = repo
        self.stall = stall  # seconds for a request head to arrive, or a response to be read on
        self.listen = listen
        self.log = log or (lambda line: None)
        self.warn = warn or (lambda line: None)
        self.catalog = _Catalog(repo, self.warn)
        self.cache = cache  # a LayerCache, or None to stream every layer from the repository
        self._httpd = None
        self._thread = None
        self._connections = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when the last connection ends

    def bind(self):
        """Listen on the requested address; return the port (the chosen one for port 0)."""
        if self._httpd is None:
            host, port = self.listen
            try:
                cls = _HTTPServer6 if _family(host) == socket.AF_INET6 else _HTTPServer
                httpd = cls((host, port), _Handler)
            except OSError as err:
                raise DogestryError(f"cannot listen on {url_of(host, port)[7:]}: {err.strerror or err}") from None
            httpd.app = self
            self._httpd = httpd
        return self.port

    @property
    def port(self):
        return self._httpd.server_address[1]

    @property
    def url(self):
        return url_of(self.listen[0], self.port)

    def start(self):
        port = self.bind()
        # stop() waits for the loop to see its request, up to one poll interval: a pull
        # through this server pays that wait on every run (0.2 s was 40% of P10's cost, 0.02 s
        # still 20 ms in a trace of one), and 500 wake-ups a second are nothing for a server
        # that lives a few seconds.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.002},
                                        name="dogestry-serve", daemon=True)
        self._thread.start()
        return port

    def serve_forever(self):
        self.bind()
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            self._close()

    def stop(self):
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._close()
        # _close cut every connection off: their threads end at once, each after writing its
        # log line. Waited for (briefly), so that a stopped server has finished its requests.
        with self._idle:
            self._idle.wait_for(lambda: not self._connections, timeout=2)

    def _close(self):
        if self.cache is not None:
            self.cache.close()
        if self._httpd is None:
            return
        self._httpd.server_close()
        # In-flight responses end now rather than whenever their clients finish.
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _track(self, conn, alive):
        with self._lock:
            (self._connections.add if alive else self._connections.discard)(conn)
            if not self._connections:
                self._idle.notify_all()


def _return_freed_chunks():
    """Make glibc hand each freed MiB-sized chunk back to the kernel.

    With a thread per client, glibc keeps freed chunks in per-thread arenas for reuse, so
    peak RSS grows with every client well beyond the chunks actually in flight; a fixed
    mmap threshold gives each large chunk its own mapping, unmapped when freed (measured:
    8 clients pulling a 512 MiB layer, peak RSS 130 MiB before, 89 MiB after). Only the
    command does this: the setting is the whole process's, not a library's to make.
    """
    try:
        ctypes.CDLL(None).mallopt(-3, 256 << 10)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: its allocator, its behaviour


def serve(ctx, remote, listen):
    """`dogestry serve`: serve REMOTE until SIGTERM or Ctrl-C."""
    host, port = parse_listen(listen)
    repo = ctx.repo(remote)
    if repo.format_version() is None:
        raise DogestryError(f"nothing to serve: {repo.location} holds no dogestry repository")
    repo.check_format()

    def warn(line):
        print(f"dogestry: {line}", file=ctx.err, flush=True)

    _return_freed_chunks()
    server = Server(repo, (host, port), log=ctx.detail, warn=warn, stall=stall_timeout(ctx.config))
    server.bind()  # first: an address that cannot be listened on is an error, with no warning before it
    if not is_loopback(host):
        warn(f"warning: listening on {host}, not a loopback address: anyone who can reach it can "
             f"pull every image in {repo.location}, unauthenticated and unencrypted")
    server.cache = LayerCache.create(repo, ctx.config.temp_dir(), warn)
    # Printed whatever -q says: it is how a caller (or a test) learns a chosen port.
    print(f"listening on {server.url}", file=ctx.err, flush=True)

    def terminate(signum, frame):
        raise KeyboardInterrupt

    # SIGINT too: a server started from a non-interactive shell inherits SIGINT ignored,
    # and Ctrl-C or `kill -INT` must still stop it.
    previous = {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        ctx.info("stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
