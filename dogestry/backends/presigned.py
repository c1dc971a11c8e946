"""A read-only repository behind one pre-signed URL (written by `dogestry share`).

The URL points at a share index: a JSON object that maps each repository key an image
needs to a pre-signed GET URL, and carries the shared refs themselves. Pulling through
it needs no configuration and no credentials. Signed query strings never appear in
output (mask_url).
"""

import json
import re
import urllib.error
import urllib.request
from datetime import datetime, timezone

from ..errors import NotFound, StorageError
from . import Backend, check_key, mask_url, too_large
from .retry import TransientError, retrying

SHARE_FORMAT = "dogestry-share"   # sharing.py writes what this reads
SHARE_VERSION = 1
TIMEOUT = 60
MAX_INDEX = 64 << 20


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
    code = code.group(1).decode() if code else str(err.code)
    message = message.group(1).decode() if message else err.reason
    if "expired" in message.lower() or code in ("ExpiredToken", "RequestExpired"):
        return StorageError(f"{what}: the shared URL has expired; ask for a new one (dogestry share)")
    if code in ("SignatureDoesNotMatch", "AuthorizationQueryParametersError", "InvalidAccessKeyId",
                "AccessDenied") or err.code == 403:
        return StorageError(f"{what}: the shared URL was refused ({code}): it was altered, or the "
                            "credentials that signed it were revoked")
    if err.code == 404:
        return StorageError(f"{what}: nothing at the shared URL (404 {code})")
    return StorageError(f"{what}: HTTP {err.code} {code} from the shared URL")


def _get(url, what, headers=None):
    """An open HTTP response; 5xx and connection failures are retried (retry.retrying)."""
    request = urllib.request.Request(url, headers=headers or {})

    def attempt():
        try:
            return urllib.request.urlopen(request, timeout=TIMEOUT)
        except urllib.error.HTTPError as err:
            if err.code >= 500 or err.code == 429:
                raise TransientError(f"{what}: HTTP {err.code} from {mask_url(url)}") from None
            raise _refusal(err, what) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise TransientError(f"{what}: cannot reach {mask_url(url)} ({reason})") from None

    return retrying(attempt)


def _read(response, key, where, limit):
    """The body, refusing more than limit bytes (a hostile server cannot grow our memory)."""
    if limit is None:
        return response.read()
    data = response.read(limit + 1)
    if len(data) > limit:
        raise too_large(key, where, limit)
    return data


class PresignedIndexBackend(Backend):
    """Reads a repository through the pre-signed URLs of a share index; never writes."""

    kind = "shared-url"
    capabilities = frozenset()

    def __init__(self, url, temp_dir=None):
        super().__init__(url, temp_dir)
        self._index = None

    def location(self):
        return mask_url(self.url)

    @property
    def index(self):
        if self._index is None:
            with _get(self.url, "cannot read the share index") as response:
                data = _read(response, "the share index", self.location(), MAX_INDEX)
            try:
                index = json.loads(data)
                if not isinstance(index, dict) or index.get("format") != SHARE_FORMAT \
                        or not isinstance(index.get("objects", {}), dict) or not isinstance(index.get("refs", {}), dict):
                    raise ValueError
            except (ValueError, RecursionError):
                raise StorageError(f"{self.location()} is not a dogestry share index") from None
            if index.get("version") != SHARE_VERSION:
                raise StorageError(f"{self.location()} is a share index of version {index.get('version')}; "
                                   f"this dogestry reads version {SHARE_VERSION}: upgrade dogestry")
            expires = index.get("expires")
            try:
                until = datetime.fromisoformat(expires.replace("Z", "+00:00")) if expires else None
            except (AttributeError, TypeError, ValueError):
                raise StorageError(f"{self.location()} is a damaged share index (expires {expires!r})") from None
            if until is not None and until < datetime.now(timezone.utc):
                raise StorageError(f"the shared URL expired at {expires}; ask for a new one (dogestry share)")
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
            return f"{refs[key]}\n".encode()
        with _get(self._url(key), f"cannot read {key}") as response:
            return _read(response, key, self.location(), limit)

    def open(self, key):
        return _get(self._url(key), f"cannot read {key}")

    def size(self, key):
        refs = self.index.get("refs", {})
        if key in refs:
            return len(f"{refs[key]}\n")
        # A pre-signed GET cannot be turned into a HEAD: ask for one byte and read the total.
        try:
            response = _get(self._url(key), f"cannot read {key}", headers={"Range": "bytes=0-0"})
        except _RangeNotSatisfiable:
            return 0  # not even one byte: the object is empty
        with response:
            total = (response.headers.get("Content-Range") or "").rpartition("/")[2]
            if total.isdigit():
                return int(total)
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and response.status == 200:
                return int(length)
        raise StorageError(f"cannot tell the size of {key} from the shared URL")

    def exists(self, key):
        return key in self.index.get("objects", {}) or key in self.index.get("refs", {})

    def list(self, prefix=""):
        keys = set(self.index.get("objects", {})) | set(self.index.get("refs", {}))
        return iter(sorted(k for k in keys if k.startswith(prefix)))

    def _read_only(self, *args, **kwargs):
        raise StorageError(f"{self.location()} is a read-only shared URL; push to the remote itself")

    put = put_file = writer = delete = _read_only
