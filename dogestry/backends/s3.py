"""A repository in an S3 bucket (AWS or any S3-compatible store).

    s3://BUCKET/PREFIX/?region=us-west-2&endpoint=http://host:9000&addressing=path&checksums=when_required

The keys are the repository layout of dogestry-repository(5) under PREFIX. Large objects
go up as multipart uploads streamed from the layer, parts in parallel with bounded
memory, and come down as parallel ranged GETs. Nothing is visible before an upload
completes; write-once objects use a conditional PUT (If-None-Match: *). boto3 is
imported only when an s3:// remote is used.
"""

import os
import re
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlsplit

from ..errors import DogestryError, NotFound, StorageError, UsageError
from ..tlsfiles import check_tls_file
from . import PRESIGN, WRITE, Backend, ObjectInfo, check_key, mask_url, too_large
from .retry import TransientError, retrying, stall_timeout

# Memory is bounded by these: about (UPLOAD_PARALLEL + 1) x PART_SIZE per upload and
# 2 x DOWNLOAD_PARALLEL x RANGE_SIZE per download (bench/RESULTS.md has the peak RSS).
PART_SIZE = 8 << 20       # multipart part size; S3's minimum is 5 MiB
UPLOAD_PARALLEL = 3       # parts in flight per upload
RANGE_SIZE = 4 << 20      # ranged GET size
DOWNLOAD_PARALLEL = 4     # ranges in flight per download
MAX_ATTEMPTS = 5          # attempts per request (retry.retrying): throttling, 5xx, resets, timeouts
MIN_RATE = 16 << 10      # bytes/s: a request slower than this (beyond the stall timeout) is a stall
MAX_ANSWER = 16 << 20    # bytes of an answer that is not an object's body (a listing page is ~1 MB)
MAX_LISTED = 1_000_000   # keys in one listing: far more than a repository holds, a bound on memory
STALE_UPLOAD = 3600       # an unfinished multipart upload this old was abandoned (a killed push)
_OPTIONS = {"region", "endpoint", "addressing", "checksums", "profile"}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeoutException",
                    "InternalError", "ServiceUnavailable", "TooManyRequests", "RequestLimitExceeded",
                    "BandwidthLimitExceeded", "EC2ThrottledException"}


_BUCKET_RE = re.compile(r"[A-Za-z0-9._-]{1,255}")


def parse_s3_url(url):
    try:
        parts = urlsplit(url)
        parts.port  # a port that is not a number raises here
    except ValueError as err:
        raise UsageError(f"invalid S3 URL {url[:200]!r}: {err}") from None
    bucket = parts.netloc
    if not bucket:
        raise UsageError(f"S3 URL {url!r} has no bucket; write s3://BUCKET/PREFIX/")
    if "@" in bucket or ":" in bucket:
        # userinfo would be credentials typed into the URL: never echo it
        raise UsageError("an S3 URL names a bucket, without user, password or port (s3://BUCKET/PREFIX/); "
                         "credentials come from the AWS chain or [s3] in dogestry.cfg, the endpoint from ?endpoint=")
    if not _BUCKET_RE.fullmatch(bucket):
        # botocore's own check, said as a usage error rather than a ParamValidationError
        raise UsageError(f"S3 URL {mask_url(url)[:200]!r} names bucket {bucket[:70]!r}, which is not a bucket name "
                         "(1 to 255 letters, digits, '.', '-' and '_')")
    if parts.fragment:
        # '#' ends the URL: what follows it, ?endpoint= too, would be silently dropped
        raise UsageError(f"S3 URL {mask_url(url)[:200]!r} has a '#' in it; S3 URLs have no fragment")
    prefix = parts.path.lstrip("/")
    if any(part in (".", "..") for part in prefix.split("/")):
        # S3 keys are literal, so ../ would not go up: some stores refuse it, others make a
        # prefix nobody meant. Said now rather than as a storage error later.
        raise UsageError(f"S3 URL {mask_url(url)[:200]!r} has a . or .. in its prefix; S3 prefixes are literal, "
                         "write the prefix itself")
    if "//" in prefix:
        # AWS keeps a//b as it is; SeaweedFS (a filer) stores it as a/b and never lists it under
        # a//: a repository there would lose sight of its own refs and leases.
        raise UsageError(f"S3 URL {mask_url(url)[:200]!r} has an empty segment ('//') in its prefix; "
                         "S3-compatible stores disagree on such keys: write each '/' once")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - _OPTIONS
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in sorted(unknown)[:5])
        raise UsageError(f"unknown S3 URL option(s) {shown}; known: {', '.join(sorted(_OPTIONS))}")
    if query.get("addressing", "path") not in ("path", "virtual", "auto"):
        raise UsageError("addressing= takes path, virtual or auto")
    if query.get("checksums", "when_required") not in ("when_required", "when_supported"):
        raise UsageError("checksums= takes when_required or when_supported")
    if "endpoint" in query:
        check_endpoint(query["endpoint"], "the endpoint= option")
    return bucket, prefix, query


def check_endpoint(endpoint, where):
    """An S3 endpoint is http(s)://host[:port][/path]; anything else is a usage error, said now."""
    try:
        parts = urlsplit(endpoint)
        parts.port  # a port that is not a number raises here
    except ValueError:
        parts = None
    if parts is not None and "@" in parts.netloc:
        # a password typed into the endpoint would be echoed by every error that names it
        raise UsageError(f"{where} has a user or password in it; an S3 endpoint is http(s)://HOST[:PORT] and "
                         "credentials come from the AWS chain or [s3] in dogestry.cfg")
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{where} {endpoint[:200]!r} is not an S3 endpoint URL; write http(s)://HOST[:PORT]")
    return endpoint


def _legacy_or_config_credentials(config, warn):
    """Explicit credentials when boto3's own chain should not decide.

    The standard AWS_ACCESS_KEY_ID wins (boto3 reads it); then the original dogestry's
    AWS_ACCESS_KEY / AWS_SECRET_KEY, which boto3 does not read; then [s3] in dogestry.cfg.
    """
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID"):
        return {}
    if env.get("AWS_ACCESS_KEY") and env.get("AWS_SECRET_KEY"):
        return {"aws_access_key_id": env["AWS_ACCESS_KEY"], "aws_secret_access_key": env["AWS_SECRET_KEY"]}
    if config is not None and config.get("s3", "access-key-id"):
        path = config.path
        if path and os.path.exists(path) and os.stat(path).st_mode & (stat.S_IRGRP | stat.S_IROTH):
            warn(f"warning: {path} holds an S3 secret key and is readable by other users; chmod 600 it")
        return {"aws_access_key_id": config.get("s3", "access-key-id"),
                "aws_secret_access_key": config.get("s3", "secret-key")}
    return {}


# What botocore's parsers raise on an answer that is XML but not S3's (a <Size> of "abc", a
# date that is none): the server's fault, said as such rather than as an internal error.
_MALFORMED = (ValueError, TypeError, LookupError, AttributeError)


def _wire():
    """Exceptions of the connection itself. urllib3's own (ReadTimeoutError, ProtocolError)
    reach us unwrapped when botocore reads a whole answer's body (convert_to_response_dict
    runs outside its error translation): a PUT whose answer stalls past the socket timeout
    raised urllib3's ReadTimeoutError as an internal error."""
    from urllib3.exceptions import HTTPError

    return (ConnectionError, TimeoutError, HTTPError)


MAX_AWS_FILE = 16 << 20  # an AWS config or credentials file is a few kB


def _check_aws_files():
    """botocore reads the AWS config and credentials files whole (only regular files): a
    1 GB one cost 9.7 GB of memory and 15 s before its parse error. Refused by size first."""
    env = os.environ
    for variable, default in (("AWS_CONFIG_FILE", "~/.aws/config"), ("AWS_SHARED_CREDENTIALS_FILE",
                                                                      "~/.aws/credentials")):
        path = os.path.expanduser(env.get(variable) or default)
        try:
            info = os.stat(path)
        except (OSError, ValueError):
            continue  # botocore takes a missing file as none
        if stat.S_ISREG(info.st_mode) and info.st_size > MAX_AWS_FILE:
            raise StorageError(f"the AWS file {path[:300]} ({variable}) is {info.st_size} bytes; an AWS config or "
                               f"credentials file is far below {MAX_AWS_FILE >> 20} MiB")
    if env.get("AWS_CA_BUNDLE"):
        try:
            check_tls_file(env["AWS_CA_BUNDLE"], "AWS_CA_BUNDLE")
        except OSError as err:
            raise StorageError(f"the AWS CA bundle {err}") from None


def _timestamp(text):
    """A listed or answered time as an aware datetime: ISO 8601 (S3's) by the standard library,
    anything else (an HTTP date, a zoneless time) by botocore's own parser."""
    import datetime

    try:
        when = datetime.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        when = None
    if when is None or when.tzinfo is None:
        from botocore.utils import parse_timestamp

        return parse_timestamp(text)
    return when


def _body_size(body):
    """Bytes a request sends (for its time budget): a bytes body's length, else 0."""
    return len(body) if isinstance(body, (bytes, bytearray, memoryview)) else 0


def _shown_key(key):
    """A listed key fit for a one-line error: bounded, control characters escaped."""
    return repr(key[:200] + ("..." if len(key) > 200 else ""))


def _error_code(err):
    return (getattr(err, "response", None) or {}).get("Error", {}).get("Code", "")


def _status(err):
    return (getattr(err, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode")


class S3Backend(Backend):
    kind = "s3"
    capabilities = frozenset({WRITE, PRESIGN})

    def __init__(self, url, temp_dir=None, config=None, warn=None):
        super().__init__(url, temp_dir)
        self.bucket, self.prefix, self.options = parse_s3_url(url)
        self._config = config
        self._warn = warn or (lambda message: print(message, file=__import__("sys").stderr))
        self._client = None
        self._lock = threading.Lock()
        self.endpoint = (self.options.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL_S3")
                         or os.environ.get("AWS_ENDPOINT_URL") or (config.get("s3", "endpoint") if config else None))
        if self.endpoint:
            check_endpoint(self.endpoint, "the S3 endpoint")
        self.stall_timeout = stall_timeout(config)
        self._cleaned = False
        self._last_notice = 0.0
        self._http_send = None  # the client's HTTP session's send, once _cap_answers found it

    def location(self):
        where = f"s3://{self.bucket}/{self.prefix}"
        return f"{where} at {self.endpoint}" if self.endpoint else where

    # -- client -------------------------------------------------------------------------
    @property
    def client(self):
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self):
        # botocore alone, not boto3 on top of it: boto3 adds nothing used here, and importing it
        # and making its client cost every S3 command 0.06 s more.
        import botocore.session
        from botocore.config import Config as BotoConfig

        _check_aws_files()
        credentials = _legacy_or_config_credentials(self._config, self._warn)
        session = botocore.session.Session(profile=self.options.get("profile"))
        if credentials:
            session.set_credentials(credentials["aws_access_key_id"], credentials["aws_secret_access_key"])
        # botocore parses every listed LastModified with dateutil (0.1 ms each, 0.2 s of a
        # listing of 2,000 keys); S3's are ISO 8601, which the standard library reads in a tenth.
        session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_timestamp)
        custom = bool(self.endpoint)
        # botocore >= 1.36 sends CRC32 checksums and aws-chunked trailers by default, which
        # R2, GCS's XML API and older Ceph RGW reject: off for non-AWS endpoints unless asked.
        checksums = self.options.get("checksums") or ("when_required" if custom else "when_supported")
        addressing = self.options.get("addressing") or ("path" if custom else "auto")
        region = (self.options.get("region") or session.get_config_variable("region")
                  or (self._config.get("s3", "region") if self._config else None))
        if region is None:
            region = self._discover_region(session, custom)
        self.region = region
        client = session.create_client("s3", endpoint_url=self.endpoint, config=BotoConfig(
            region_name=region, signature_version="s3v4", s3={"addressing_style": addressing},
            # Retries are ours (retry.retrying), so each one is bounded and said on stderr; the
            # socket timeouts bound one attempt, so a stalled server costs about stall-timeout.
            retries={"max_attempts": 1, "mode": "standard"},
            max_pool_connections=4 * max(UPLOAD_PARALLEL, DOWNLOAD_PARALLEL),
            connect_timeout=min(10, self.stall_timeout / 4), read_timeout=min(30, self.stall_timeout / 4),
            request_checksum_calculation=checksums, response_checksum_validation=checksums))
        self._cap_answers(client)
        return client

    def _cap_answers(self, client):
        """botocore reads every answer but an object's body whole before parsing it: a hostile
        listing or error of 300 MB cost 2.9 GB of memory. Answers other than an object's body
        (whose reads are bounded where they are made) are cut at MAX_ANSWER instead. This wraps
        the client's HTTP session, which botocore does not expose: without it, no cap."""
        http_session = getattr(getattr(client, "_endpoint", None), "http_session", None)
        send = getattr(http_session, "send", None)
        if send is None:
            return
        where = self.endpoint or "AWS"

        def capped_send(request):
            whole = not getattr(request, "stream_output", True)
            if whole:
                # The session reads such an answer whole before returning it: have it hand over
                # the stream instead, and let botocore read it through the cap.
                request.stream_output = True
                try:
                    response = send(request)
                finally:
                    request.stream_output = False
            else:
                response = send(request)  # an object's body: its reads are bounded by their callers
            if whole or response.status_code >= 300:
                response.raw = _CappedRaw(response.raw, MAX_ANSWER, where)
            return response

        http_session.send = capped_send
        self._http_send = capped_send

    def _discover_region(self, session, custom):
        """The bucket's region from HeadBucket's x-amz-bucket-region (AWS answers it even on a 301/403)."""
        if custom:
            return "us-east-1"
        from botocore.config import Config as BotoConfig
        from botocore.exceptions import BotoCoreError, ClientError

        probe = session.create_client("s3", config=BotoConfig(region_name="us-east-1", signature_version="s3v4",
                                                        retries={"max_attempts": 2}))
        try:
            headers = probe.head_bucket(Bucket=self.bucket)["ResponseMetadata"]["HTTPHeaders"]
        except ClientError as err:
            headers = (err.response.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
        except BotoCoreError:
            headers = {}
        return headers.get("x-amz-bucket-region") or "us-east-1"

    def _key(self, key):
        return self.prefix + check_key(key)

    def _fail(self, err, what):
        """Translate a boto error into one line that says what to do; never a secret."""
        from botocore.exceptions import (ClientError, EndpointConnectionError, NoCredentialsError,
                                         PartialCredentialsError, ProfileNotFound)

        where = f"s3://{self.bucket}/{self.prefix}"
        if isinstance(err, ProfileNotFound):
            return StorageError(f"{what}: the AWS profile {err.kwargs.get('profile')!r} is not in the AWS config "
                                "files (check AWS_PROFILE, the profile= option and AWS_CONFIG_FILE)")
        if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
            return StorageError(f"{what}: no AWS credentials found for {where}; set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY, a profile, an instance role, or [s3] in dogestry.cfg")
        if isinstance(err, EndpointConnectionError):
            return StorageError(f"{what}: cannot reach the S3 endpoint {self.endpoint or 'of AWS'}; check the "
                                "endpoint= option, AWS_ENDPOINT_URL and the network")
        if isinstance(err, ClientError):
            code = _error_code(err)
            if code == "NoSuchBucket":
                return StorageError(f"{what}: bucket {self.bucket!r} does not exist"
                                    f"{f' at {self.endpoint}' if self.endpoint else ''}")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden",
                        "ExpiredToken", "InvalidToken"):
                return StorageError(f"{what}: access to {where} denied ({code}); check the credentials and that "
                                    "they allow this operation (see dogestry-push(1) for the IAM permissions)")
            return StorageError(f"{what}: S3 error {code or _status(err)} on {where}")
        return StorageError(f"{what}: {type(err).__name__} talking to S3 at {self.endpoint or 'AWS'}")

    def _classify(self, err, what, kwargs):
        """The exception to raise for a botocore error: NotFound, TransientError or permanent."""
        from botocore.exceptions import (ClientError, ConnectionClosedError, ConnectionError as BotoConnectionError,
                                         EndpointConnectionError, HTTPClientError, IncompleteReadError, ReadTimeoutError,
                                         ResponseStreamingError)

        if isinstance(err, ClientError):
            code, status = _error_code(err), _status(err)
            if code in ("NoSuchKey", "404", "NotFound") and "Key" in kwargs:
                return NotFound(f"{kwargs['Key'][len(self.prefix):]} not found in {self.location()}")
            # 501 NotImplemented is a store without the feature: asking again will not help.
            if code in _TRANSIENT_CODES or ((status or 0) >= 500 and code != "NotImplemented") or status == 429:
                return TransientError(f"{what}: S3 at {self.endpoint or 'AWS'} answered {code or status}")
            return self._fail(err, what)
        if isinstance(err, _MALFORMED):
            return StorageError(f"{what}: S3 at {self.endpoint or 'AWS'} sent an answer that is not S3's "
                                f"({type(err).__name__})")
        if isinstance(err, EndpointConnectionError):
            return TransientError(f"{what}: cannot reach the S3 endpoint {self.endpoint or 'of AWS'}; check the "
                                  "endpoint= option, AWS_ENDPOINT_URL and the network")
        if isinstance(err, (BotoConnectionError, HTTPClientError, ReadTimeoutError, ConnectionClosedError,
                            IncompleteReadError, ResponseStreamingError, *_wire())):
            return TransientError(f"{what}: no answer from S3 at {self.endpoint or 'AWS'} "
                                  f"({type(err).__name__})")
        return self._fail(err, what)

    def _waiting(self, err, attempt, waited):
        """Say on stderr what we are waiting for (at most every 10 s), so a stall is never silent."""
        now = time.monotonic()
        # Quick failures (a refused connection, retried a few times) stay one line.
        if waited >= min(10, self.stall_timeout / 4) and now - self._last_notice >= 10:
            self._last_notice = now
            self._warn(f"dogestry: {err}; retrying (waited {waited:.0f} s, giving up after "
                       f"{self.stall_timeout:.0f} s without progress)")

    def _retrying(self, attempt):
        return retrying(attempt, attempts=MAX_ATTEMPTS, on_retry=self._waiting, deadline=self.stall_timeout)

    def _call(self, what, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        def attempt():
            try:
                return fn(Bucket=self.bucket, **kwargs)
            except (ClientError, BotoCoreError, *_wire(), *_MALFORMED) as err:
                raise self._classify(err, what, kwargs) from None

        return self._retrying(self._bounded(attempt, what, _body_size(kwargs.get("Body"))))

    def _bounded(self, attempt, what, size=0):
        """attempt, given up on (as a TransientError) when it outlasts the stall timeout plus
        the time its bytes take at MIN_RATE. The socket timeouts cannot catch a server that
        trickles a byte a second, nor a listing it sends forever: this does, whatever urllib3
        does. The attempt runs in a daemon thread left behind when it is given up on (it holds
        one connection until the process ends)."""
        budget = self.stall_timeout + size / MIN_RATE

        def bounded():
            outcome = {}

            def run():
                try:
                    outcome["value"] = attempt()
                except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                    outcome["error"] = err

            worker = threading.Thread(target=run, name="dogestry-s3", daemon=True)
            worker.start()
            worker.join(budget)
            if worker.is_alive():
                raise TransientError(f"{what}: S3 at {self.endpoint or 'AWS'} took more than {budget:.0f} s to "
                                     "answer (a stalled or trickling server)")
            if isinstance(outcome.get("error"), RecursionError):
                # botocore follows a 301/307 by asking the bucket's region, which a server that
                # redirects everything answers with another redirect, and so on until the stack ends.
                raise StorageError(f"{what}: S3 at {self.endpoint or 'AWS'} answers with redirects that lead "
                                   "nowhere; check the endpoint") from None
            if isinstance(outcome.get("error"), _AnswerTooLarge):
                raise StorageError(f"{what}: {outcome['error']}") from None
            if "error" in outcome:
                raise outcome["error"]
            return outcome["value"]

        return bounded

    # -- the backend contract ---------------------------------------------------------
    def get(self, key, limit=None):
        return self._read(self._key(key), limit=limit)

    def _read(self, full, start=None, end=None, limit=None):
        """GET an object or a range; a failed request or a body cut short is retried whole."""
        from botocore.exceptions import BotoCoreError, ClientError, IncompleteReadError

        key = full[len(self.prefix):]
        kwargs = {"Key": full}
        if start is not None:
            kwargs["Range"] = f"bytes={start}-{end - 1}"
        what = f"cannot read {key}"

        def attempt():
            try:
                response = self._quick_get(full) if start is None else None
                if response is None:
                    response = self.client.get_object(Bucket=self.bucket, **kwargs)
            except (ClientError, BotoCoreError, *_wire(), *_MALFORMED) as err:
                raise self._classify(err, what, kwargs) from None
            body = response["Body"]
            try:
                if limit is not None and response.get("ContentLength", 0) > limit:
                    raise too_large(key, self.location(), limit)
                # Never more than asked for, whatever the headers say (a chunked answer has no
                # Content-Length): a hostile 1 GB ref must not be held in memory.
                wanted = limit if start is None else end - start
                data = body.read() if wanted is None else body.read(wanted + 1)
                if limit is not None and len(data) > limit:
                    raise too_large(key, self.location(), limit)
                if start is not None and len(data) != end - start:
                    raise IncompleteReadError(actual_bytes=len(data), expected_bytes=end - start)
                return data
            except (BotoCoreError, *_wire(), *_MALFORMED) as err:
                raise self._classify(err, what, kwargs) from None
            finally:
                body.close()

        return self._retrying(self._bounded(attempt, what, end - start if start is not None else (limit or 0)))

    def _quick_get(self, full):
        """A whole object's answer by a presigned GET sent through the client's own HTTP session
        (its proxies, TLS settings, pool and answer cap), or None when that session is not to
        be had or the answer is not 200: then the caller asks the ordinary way, so that
        botocore reads and classifies every error as for any other request.

        Why: botocore's request pipeline costs about 1.4 ms of CPU a request, this about 0.9,
        and the small reads are many: `list` reads one image record per image, a pull one
        record and config per image. What it leaves out is botocore's optional CRC check of
        the answer; dogestry checks what it reads itself (digests, or parsing and limits)."""
        client = self.client  # makes the client, and with it _http_send
        if self._http_send is None:
            return None
        from botocore.awsrequest import AWSRequest
        from botocore.response import StreamingBody

        url = client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": full},
                                            ExpiresIn=900)
        request = AWSRequest(method="GET", url=url).prepare()
        request.stream_output = True
        answer = self._http_send(request)
        length = answer.headers.get("content-length")
        if answer.status_code != 200 or not (length and length.isascii() and length.isdigit()):
            answer.raw.close()
            return None
        length = int(length)
        return {"Body": StreamingBody(answer.raw, length), "ContentLength": length}

    def size(self, key):
        size = self._call(f"cannot stat {key}", self.client.head_object, Key=self._key(key)).get("ContentLength")
        if not isinstance(size, int) or size < 0:
            raise StorageError(f"cannot stat {key}: S3 at {self.endpoint or 'AWS'} gave it no size "
                               f"({str(size)[:40]!r})")
        return size

    def open(self, key):
        size = self.size(key)
        return _RangedReader(self, self._key(key), size)

    def exists(self, key):
        try:
            self.size(key)
            return True
        except NotFound:
            return False

    # -- leftovers of killed writers --------------------------------------------------
    def _first_write(self):
        """Once per run, before writing: abort multipart uploads and remove spool files that
        killed pushes left (stale by age; S3 cannot tell a live upload from a dead one)."""
        if self._cleaned:
            return
        self._cleaned = True
        try:
            self.clean_leftovers()
        except (DogestryError, OSError):
            pass  # housekeeping must not fail the push that follows

    def _uploads(self):
        """(key, upload id, age) of unfinished multipart uploads under this prefix."""
        now = time.time()
        what = f"cannot list multipart uploads in {self.location()}"
        for upload in self._pages(what, self.client.list_multipart_uploads, "Uploads",
                                  lambda page: {"KeyMarker": page.get("NextKeyMarker"),
                                                "UploadIdMarker": page.get("NextUploadIdMarker")},
                                  Prefix=self.prefix):
            key, upload_id, initiated = upload.get("Key"), upload.get("UploadId"), upload.get("Initiated")
            if (isinstance(key, str) and key.startswith(self.prefix) and len(key) <= 1024 and key.isprintable()
                    and isinstance(upload_id, str) and hasattr(initiated, "timestamp")):
                yield key, upload_id, max(0.0, now - initiated.timestamp())

    def leftovers(self):
        yield from super().leftovers()
        try:
            for key, _, age in self._uploads():
                yield f"s3://{self.bucket}/{key} (unfinished multipart upload)", None, age
        except Exception as err:  # noqa: BLE001 - a store without the listing has none to report
            if "NotImplemented" not in str(err):
                raise (err if isinstance(err, DogestryError) else
                       self._classify(err, "cannot list multipart uploads", {})) from None

    def clean_leftovers(self, min_age=STALE_UPLOAD):
        count, size = super().clean_leftovers(min_age)
        try:
            uploads = list(self._uploads())
        except Exception:  # noqa: BLE001 - stores without ListMultipartUploads have nothing to clean
            return count, size
        for key, upload_id, age in uploads:
            if age >= min_age:
                try:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                    count += 1
                except Exception:  # noqa: BLE001 - best effort; a lifecycle rule reaps the rest
                    continue
        return count, size

    def spool(self):
        self._first_write()
        return super().spool()

    def put(self, key, data, overwrite=False):
        self._first_write()
        full = self._key(key)
        if not overwrite and self.exists(key):
            return False
        kwargs = {} if overwrite else {"IfNoneMatch": "*"}
        return self._put_object(full, data, kwargs, key)

    def _put_object(self, full, data, kwargs, key):
        return self._conditional(f"cannot write {key}", self.client.put_object, kwargs, Key=full, Body=data)

    def _conditional(self, what, fn, condition, **kwargs):
        """A write that may carry If-None-Match: True when it published, False when the key was
        there first (412: content-addressed, so the same bytes). A store without conditional
        writes (NotImplemented) gets the plain write: the caller checked existence just before."""
        from botocore.exceptions import BotoCoreError, ClientError

        state = {"condition": dict(condition)}

        def attempt():
            try:
                fn(Bucket=self.bucket, **kwargs, **state["condition"])
                return True
            except ClientError as err:
                code = _error_code(err)
                if code in ("PreconditionFailed", "ConditionalRequestConflict") or _status(err) == 412:
                    return False
                if code == "NotImplemented" and state["condition"]:
                    state["condition"] = {}
                    return attempt()
                raise self._classify(err, what, kwargs) from None
            except (BotoCoreError, *_wire(), *_MALFORMED) as err:
                raise self._classify(err, what, kwargs) from None

        return self._retrying(self._bounded(attempt, what, _body_size(kwargs.get("Body"))))

    def writer(self, key, overwrite=False):
        self._first_write()
        return _MultipartWriter(self, key, overwrite)

    def put_file(self, key, path, overwrite=False):
        try:
            if not overwrite and self.exists(key):
                return False
            writer = _MultipartWriter(self, key, overwrite, checked=True)
            try:
                with open(path, "rb") as f:
                    while chunk := f.read(PART_SIZE):
                        writer.write(chunk)
                return writer.commit()
            except BaseException:
                writer.abort()
                raise
        finally:
            if os.path.exists(path):
                os.unlink(path)

    def list(self, prefix=""):
        for info in self.scan(prefix):
            yield info.key

    def scan(self, prefix=""):
        full = self.prefix + prefix
        what = f"cannot list {prefix or 'the repository'} in {self.location()}"
        for item in self._pages(what, self.client.list_objects_v2, "Contents",
                                lambda page: {"ContinuationToken": page.get("NextContinuationToken")}, Prefix=full):
            info = self._listed(item, full, what)
            if info is not None:
                yield info

    def _pages(self, what, fn, field, next_args, **kwargs):
        """The items of a paginated S3 listing, each page retried like any request, and bounded:
        a server that repeats or cycles its continuation, starts a page over or lists more than
        MAX_LISTED items gets one error naming it, never an endless loop or endless memory.
        next_args(page) gives the arguments of the next request."""
        seen, firsts, count, empty_since = set(), set(), 0, None
        endless = f"{what}: S3 at {self.endpoint or 'AWS'} sent a listing that does not end"
        while True:
            page = self._call(what, fn, **kwargs)
            items = page.get(field) or []
            if not isinstance(items, list):
                raise StorageError(f"{what}: S3 at {self.endpoint or 'AWS'} sent a listing that is not one")
            if items and isinstance(items[0], dict):
                # The same page again under a new token: a listing that started over.
                first = (items[0].get("Key"), items[0].get("UploadId"))
                if first in firsts:
                    raise StorageError(f"{endless} (it started over at {_shown_key(str(first[0]))})")
                firsts.add(first)
            count += len(items)
            if count > MAX_LISTED:
                raise StorageError(f"{what}: S3 at {self.endpoint or 'AWS'} lists more than {MAX_LISTED} keys "
                                   "there, more than a repository holds")
            yield from items
            if not page.get("IsTruncated"):
                return
            # Empty pages happen (S3 skipping delete markers), but pages without a key for
            # longer than the stall timeout are a listing that makes no progress.
            empty_since = None if items else (empty_since or time.monotonic())
            stalled = empty_since is not None and time.monotonic() - empty_since > self.stall_timeout
            following = next_args(page)
            token = repr(sorted(following.items()))
            if not all(isinstance(v, str) and v for v in following.values()) or len(token) > 8192:
                raise StorageError(f"{what}: S3 at {self.endpoint or 'AWS'} said the listing goes on but gave no "
                                   "usable continuation")
            if token in seen or stalled:
                raise StorageError(f"{endless} ({'a continuation it sent before' if token in seen else 'empty pages'})")
            seen.add(token)
            kwargs.update(following)

    def _listed(self, item, full, what):
        """An ObjectInfo for a listed item, or None for a key that is not a repository object
        (outside the prefix, a name check_key refuses): ignored, as a directory ignores dot-names."""
        key = item.get("Key")
        if not isinstance(key, str) or not key.startswith(full) or len(key) > 1024:
            return None
        try:
            relative = check_key(key[len(self.prefix):])
        except UsageError:
            return None
        size = item.get("Size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise StorageError(f"{what}: S3 at {self.endpoint or 'AWS'} listed {_shown_key(relative)} with the size "
                               f"{str(size)[:40]!r}")
        modified = item.get("LastModified")
        etag = item.get("ETag")  # S3's MD5 of the bytes, quoted (see ObjectInfo)
        return ObjectInfo(relative, size, modified.timestamp() if hasattr(modified, "timestamp") else None,
                          etag.strip('"') or None if isinstance(etag, str) and len(etag) <= 100 else None)

    def delete(self, key):
        self._call(f"cannot delete {key}", self.client.delete_object, Key=self._key(key))

    def presign(self, key, expires):
        """A GET URL for key valid for `expires` seconds (SigV4, at most 7 days)."""
        return self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": self._key(key)},
                                                  ExpiresIn=expires)


class _AnswerTooLarge(StorageError):
    """Raised inside botocore's read; _bounded adds what was being done."""


class _CappedRaw:
    """A urllib3 response that refuses to yield more than `limit` bytes (see _cap_answers)."""

    def __init__(self, raw, limit, where):
        self._raw, self._limit, self._where, self._seen = raw, limit, where, 0

    def _count(self, data):
        self._seen += len(data)
        if self._seen > self._limit:
            self._raw.close()
            raise _AnswerTooLarge(f"S3 at {self._where} sent an answer larger than {self._limit >> 20} MiB where a "
                                  "small one was due (a listing or an error): refused")
        return data

    def stream(self, *args, **kwargs):
        for data in self._raw.stream(*args, **kwargs):
            yield self._count(data)

    def read(self, *args, **kwargs):
        return self._count(self._raw.read(*args, **kwargs))

    def __getattr__(self, name):
        return getattr(self._raw, name)


class _MultipartWriter:
    """Streams an object up in PART_SIZE parts, UPLOAD_PARALLEL in flight; small objects are one PUT.

    Memory is bounded by (UPLOAD_PARALLEL + 1) parts. The object appears only when the upload
    completes; abort() (or a failure) removes the parts.
    """

    def __init__(self, backend, key, overwrite, checked=False):
        self.backend, self.key, self.overwrite = backend, key, overwrite
        self.full = backend._key(key)
        self.buf = bytearray()
        self.upload_id = None
        self.futures = []
        self.pool = None
        self.slots = threading.Semaphore(UPLOAD_PARALLEL)
        self.checked = checked

    def write(self, data):
        self.buf += data
        while len(self.buf) >= PART_SIZE:
            part = bytes(self.buf[:PART_SIZE])
            del self.buf[:PART_SIZE]
            self._send(part)

    def _send(self, body):
        client = self.backend.client
        if self.upload_id is None:
            upload_id = self.backend._call(f"cannot write {self.key}", client.create_multipart_upload,
                                           Key=self.full).get("UploadId")
            if not isinstance(upload_id, str) or not upload_id:
                raise StorageError(f"cannot write {self.key}: S3 at {self.backend.endpoint or 'AWS'} began a "
                                   "multipart upload without an upload id")
            self.upload_id = upload_id
            self.pool = ThreadPoolExecutor(UPLOAD_PARALLEL)
        number = len(self.futures) + 1
        self.slots.acquire()

        def upload():
            try:
                # botocore retries throttling, 5xx and dropped connections for this part alone.
                etag = self.backend._call(f"cannot write {self.key}", client.upload_part, Key=self.full,
                                          UploadId=self.upload_id, PartNumber=number, Body=body).get("ETag")
                if not isinstance(etag, str) or not etag:
                    raise StorageError(f"cannot write {self.key}: S3 at {self.backend.endpoint or 'AWS'} took part "
                                       f"{number} without giving its ETag")
                return etag
            finally:
                self.slots.release()

        self.futures.append(self.pool.submit(upload))

    def commit(self):
        if self.upload_id is None:
            if not self.overwrite and not self.checked and self.backend.exists(self.key):
                return False
            return self.backend._put_object(self.full, bytes(self.buf), {} if self.overwrite else {"IfNoneMatch": "*"},
                                            self.key)
        try:
            if self.buf:
                self._send(bytes(self.buf))
                self.buf = bytearray()
            parts = [{"PartNumber": i + 1, "ETag": f.result()} for i, f in enumerate(self.futures)]
            return self._complete(parts)
        except BaseException:
            self.abort()
            raise
        finally:
            self.pool.shutdown(wait=True)

    def _complete(self, parts):
        condition = {} if self.overwrite else {"IfNoneMatch": "*"}
        published = self.backend._conditional(f"cannot write {self.key}", self.backend.client.complete_multipart_upload,
                                               condition, Key=self.full, UploadId=self.upload_id,
                                               MultipartUpload={"Parts": parts})
        if not published:
            self.abort()
        return published

    def abort(self):
        if self.upload_id is None:
            return
        for future in self.futures:
            future.cancel()
        try:
            self.backend.client.abort_multipart_upload(Bucket=self.backend.bucket, Key=self.full,
                                                       UploadId=self.upload_id)
        except Exception:
            pass  # best effort: an abandoned upload is invisible and a lifecycle rule reaps it
        self.upload_id = None


class _RangedReader:
    """Reads an object with up to DOWNLOAD_PARALLEL ranged GETs in flight, returning bytes in order."""

    def __init__(self, backend, full, size):
        self.backend, self.full, self.size = backend, full, size
        self.next_offset = 0
        self.pending = []
        self.buf = memoryview(b"")
        self.pool = ThreadPoolExecutor(DOWNLOAD_PARALLEL) if size > RANGE_SIZE else None
        self._fill()

    def _fetch(self, start, end):
        return self.backend._read(self.full, start, end)

    def _fill(self):
        while self.next_offset < self.size and len(self.pending) < DOWNLOAD_PARALLEL:
            start, end = self.next_offset, min(self.next_offset + RANGE_SIZE, self.size)
            self.next_offset = end
            if self.pool is None:
                self.pending.append(_Done(self._fetch(start, end)))
            else:
                self.pending.append(self.pool.submit(self._fetch, start, end))

    def read(self, n=-1):
        if not self.buf:
            if not self.pending:
                return b""
            self.buf = memoryview(self.pending.pop(0).result())
            self._fill()
        if n < 0 or n >= len(self.buf):
            data, self.buf = bytes(self.buf), memoryview(b"")
            return data
        data, self.buf = bytes(self.buf[:n]), self.buf[n:]
        return data

    def close(self):
        for future in self.pending:
            if hasattr(future, "cancel"):
                future.cancel()
        self.pending = []
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value
