"""A read-only repository behind one pre-signed URL (written by `dogestry share`).

The URL points at a share index: a JSON object that maps each repository key an image
needs to a pre-signed GET URL, and carries the shared refs themselves. Pulling through
it needs no configuration and no credentials. Signed query strings never appear in
output (mask_url).
"""

import http.client
import json
import re
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from urllib.parse import urlsplit

from ..errors import NotFound, StorageError
from ..jsontext import too_many_values
from ..tlsfiles import check_default_ca_file
from . import Backend, check_key, mask_url, too_large
from .retry import TransientError, retrying, stall_timeout

SHARE_FORMAT = "dogestry-share"   # sharing.py writes what this reads
SHARE_VERSION = 1
TIMEOUT = 60
MAX_INDEX = 64 << 20


def _number(text):
    """A size from a header, or None: ASCII digits, and few ('²'.isdigit() is True, and
    int() refuses more than 4300 digits)."""
    return int(text) if text and text.isascii() and text.isdigit() and len(text) <= 20 else None


def _ref_bytes(value):
    """A shared ref's bytes as a ref file would hold them. A value that is not a string, or
    one that does not encode (a lone surrogate), becomes bytes get_ref calls damaged."""
    text = value if isinstance(value, str) else ""
    return f"{text}\n".encode("utf-8", "replace")


def _shown(value):
    """A value from the index, short enough for a one-line error whatever its size."""
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _RangeNotSatisfiable(StorageError):
    """416: a range starting at 0 of an empty object."""


def _refusal(err, what):
    """One line for an HTTP refusal from S3, naming expiry and tampering plainly."""
    if err.code == 416:
        return _RangeNotSatisfiable(f"{what}: HTTP 416 from the shared URL")
    body = b""
    try:
        body = err.read(4096)
    except Exception:
        pass
    code = re.search(rb"<Code>([^<]*)</Code>", body)
    message = re.search(rb"<Message>([^<]*)</Message>", body)
    # Only the server's own XML codes are shown; urllib's reasons can span lines (a redirect loop).
    code = code.group(1).decode("ascii", "replace")[:80] if code else ""
    message = message.group(1).decode("utf-8", "replace")[:200] if message else ""
    if 300 <= err.code < 400:
        return StorageError(f"{what}: HTTP {err.code} from the shared URL: a redirect loop or one without "
                            "a location; a shared URL is fetched directly")
    if "expired" in message.lower() or code in ("ExpiredToken", "RequestExpired"):
        return StorageError(f"{what}: the shared URL has expired; ask for a new one (dogestry share)")
    if code in ("SignatureDoesNotMatch", "AuthorizationQueryParametersError", "InvalidAccessKeyId",
                "AccessDenied") or err.code == 403:
        return StorageError(f"{what}: the shared URL was refused ({code}): it was altered, or the "
                            "credentials that signed it were revoked")
    if err.code == 404:
        return StorageError(f"{what}: nothing at the shared URL (404{f' {code}' if code else ''})")
    return StorageError(f"{what}: HTTP {err.code}{f' {code}' if code else ''} from the shared URL")


def _timeout(stall):
    """Socket timeout of one attempt: a quarter of the stall timeout, at most TIMEOUT."""
    return max(1.0, min(TIMEOUT, stall / 4))


def _get(url, what, stall, headers=None):
    """An open HTTP response; 5xx and connection failures are retried (retry.retrying)
    until `stall` seconds pass without success. Only http(s) URLs are fetched: an index
    is input, and must not make us read a local file (file://) or talk ftp."""
    try:
        scheme = urlsplit(url).scheme.lower() if isinstance(url, str) else None
    except ValueError:  # "http://[::1": urlsplit refuses it
        scheme = None
    if scheme not in ("http", "https"):
        raise StorageError(f"{what}: the share index gives it no http(s) URL ({mask_url(str(url))[:80]!r})")
    try:
        check_default_ca_file()  # an https answer, or a redirect to one, makes OpenSSL read it
    except OSError as err:
        raise StorageError(f"{what}: {err}") from None
    request = urllib.request.Request(url, headers=headers or {})

    def attempt():
        try:
            return _Body(urllib.request.urlopen(request, timeout=_timeout(stall)), what, stall)
        except urllib.error.HTTPError as err:
            if err.code >= 500 or err.code == 429:
                raise TransientError(f"{what}: HTTP {err.code} from {mask_url(url)}") from None
            raise _refusal(err, what) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise TransientError(f"{what}: cannot reach {mask_url(url)} ({reason})") from None

    return retrying(attempt, deadline=stall)


class _Body:
    """A response body whose reads fail as StorageError, never as a socket or HTTP
    exception, and give up when less than PROGRESS bytes arrive in `stall` seconds: each
    recv is bounded by the socket timeout, but a server trickling a byte at a time would
    otherwise hold a reader for hours."""

    PROGRESS = 64 << 10

    def __init__(self, response, what, stall):
        self.response, self.what, self.stall = response, what, stall
        self.headers, self.status = response.headers, response.status
        self._mark, self._since = 0, time.monotonic()
        self._total = 0

    def read(self, size=-1):
        """Up to size bytes (all when size < 0), short only at the end of the body."""
        parts, want = [], size if size is not None and size >= 0 else None
        while want is None or want > 0:
            try:
                # read1: one recv at a time, so the stall check below runs between them
                data = self.response.read1(self.PROGRESS if want is None else min(want, self.PROGRESS))
            except (OSError, http.client.HTTPException, ValueError) as err:
                raise TransientError(f"{self.what}: the shared URL's answer broke off ({type(err).__name__}: "
                                   f"{err or 'no data'})") from None
            if not data:
                if self.response.length:  # the server promised more than it sent
                    raise TransientError(f"{self.what}: the shared URL's answer broke off "
                                       f"({self.response.length} bytes short)")
                break
            parts.append(data)
            if want is not None:
                want -= len(data)
            self._progress(len(data))
        return b"".join(parts)

    def _progress(self, count):
        self._total += count
        now = time.monotonic()
        if self._total - self._mark >= self.PROGRESS:
            self._mark, self._since = self._total, now
        elif now - self._since > self.stall:
            raise StorageError(f"{self.what}: the shared URL sent under {self.PROGRESS >> 10} KiB in "
                               f"{self.stall:.0f} s (stall-timeout); giving up")

    def close(self):
        self.response.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _read(response, key, where, limit):
    """The body, refusing more than limit bytes (a hostile server cannot grow our memory)."""
    if limit is None:
        return response.read()
    data = bytearray()
    while len(data) <= limit and (chunk := response.read(min(_Body.PROGRESS, limit + 1 - len(data)))):
        data += chunk
    if len(data) > limit:
        raise too_large(key, where, limit)
    return bytes(data)


def _fetch(url, what, stall, key, where, limit):
    """A whole (small) object; a body that breaks off is fetched again, like a failed request."""
    def attempt():
        with _get(url, what, stall) as response:
            return _read(response, key, where, limit)

    return retrying(attempt, deadline=stall)


class PresignedIndexBackend(Backend):
    """Reads a repository through the pre-signed URLs of a share index; never writes."""

    kind = "shared-url"
    capabilities = frozenset()

    def __init__(self, url, temp_dir=None, config=None):
        super().__init__(url, temp_dir)
        self._index = None
        self.stall = stall_timeout(config)

    def location(self):
        return mask_url(self.url)

    @property
    def index(self):
        if self._index is None:
            data = _fetch(self.url, "cannot read the share index", self.stall, "the share index",
                          self.location(), MAX_INDEX)
            try:
                if too_many_values(data):
                    raise ValueError  # parsed, 25 times its text: more than any index sharing.py writes
                index = json.loads(data)
                if not isinstance(index, dict) or index.get("format") != SHARE_FORMAT \
                        or not isinstance(index.get("objects", {}), dict) or not isinstance(index.get("refs", {}), dict):
                    raise ValueError
            except (ValueError, RecursionError):
                raise StorageError(f"{self.location()} is not a dogestry share index") from None
            version = index.get("version")
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise StorageError(f"{self.location()} is a damaged share index (version "
                                   f"{_shown(version)})")
            if version != SHARE_VERSION:
                raise StorageError(f"{self.location()} is a share index of version {_shown(version)}; "
                                   f"this dogestry reads version {SHARE_VERSION}: upgrade dogestry")
            expires = index.get("expires")
            try:
                until = datetime.fromisoformat(expires.replace("Z", "+00:00")) if expires else None
                if until is not None and until.tzinfo is None:
                    raise ValueError  # sharing.py writes UTC with a Z; a zoneless time is no instant
            except (AttributeError, TypeError, ValueError):
                raise StorageError(f"{self.location()} is a damaged share index (expires "
                                   f"{_shown(expires)})") from None
            if until is not None and until < datetime.now(timezone.utc):
                raise StorageError(f"the shared URL expired at {expires}; ask for a new one (dogestry share)")
            bad = next((key for key, url in index.get("objects", {}).items() if not isinstance(url, str)), None)
            if bad is not None:
                raise StorageError(f"{self.location()} is a damaged share index (no URL for {_shown(bad)})")
            self._index = index
        return self._index

    def _url(self, key):
        check_key(key)
        url = self.index.get("objects", {}).get(key)
        if url is None:
            raise NotFound(f"{key} is not part of the share {self.location()}")
        return url

    def get(self, key, limit=None):
        refs = self.index.get("refs", {})
        if key in refs:
            return _ref_bytes(refs[key])
        return _fetch(self._url(key), f"cannot read {key}", self.stall, key, self.location(), limit)

    def open(self, key):
        return _get(self._url(key), f"cannot read {key}", self.stall)

    def size(self, key):
        refs = self.index.get("refs", {})
        if key in refs:
            return len(_ref_bytes(refs[key]))
        # A pre-signed GET cannot be turned into a HEAD: ask for one byte and read the total.
        try:
            response = _get(self._url(key), f"cannot read {key}", self.stall, headers={"Range": "bytes=0-0"})
        except _RangeNotSatisfiable:
            return 0  # not even one byte: the object is empty
        with response:
            total = _number((response.headers.get("Content-Range") or "").rpartition("/")[2])
            if total is not None:
                return total
            length = _number(response.headers.get("Content-Length"))
            if length is not None and response.status == 200:
                return length
        raise StorageError(f"cannot tell the size of {key} from the shared URL")

    def exists(self, key):
        return key in self.index.get("objects", {}) or key in self.index.get("refs", {})

    def list(self, prefix=""):
        keys = set(self.index.get("objects", {})) | set(self.index.get("refs", {}))
        return iter(sorted(k for k in keys if k.startswith(prefix)))

    def _read_only(self, *args, **kwargs):
        raise StorageError(f"{self.location()} is a read-only shared URL; push to the remote itself")

    put = put_file = writer = delete = _read_only
