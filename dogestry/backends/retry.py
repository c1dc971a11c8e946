"""One retry policy for every network backend.

A backend turns a failure that may pass by itself (throttling, a 5xx, a connection reset,
a timeout or a body cut short) into TransientError; anything else (not found, denied, a
bad request) is permanent and raised at once. retrying() tries again with exponential
backoff and jitter, and gives up with the last error's message once its attempts are
spent or, with a deadline, once that many seconds passed without success (a stalled
server: each attempt is bounded by the backend's own socket timeouts).
"""

import os
import random
import time

from ..errors import StorageError, UsageError

ATTEMPTS = 5
BASE_DELAY = 0.2   # seconds before the second attempt; doubles each time
MAX_DELAY = 5.0


STALL_TIMEOUT = 120  # seconds without progress before a network transfer gives up (stall-timeout)


def stall_timeout(config, environ=os.environ):
    """Seconds without progress before a network transfer gives up: DOGESTRY_STALL_TIMEOUT,
    else [dogestry] stall-timeout, else STALL_TIMEOUT (environment beats config file)."""
    text = environ.get("DOGESTRY_STALL_TIMEOUT") or (config.get("dogestry", "stall-timeout") if config else None)
    if text is None:
        return STALL_TIMEOUT
    try:
        value = float(text)
        if not 1 <= value <= 86400:
            raise ValueError
    except ValueError:
        raise UsageError(f"stall-timeout {text[:80]!r} is not a number of seconds between 1 and 86400") from None
    return value


class TransientError(StorageError):
    """A failure worth retrying; str() says what failed."""


def backoff(attempt):
    """Seconds to wait after failed attempt number `attempt` (0-based), with jitter."""
    return min(BASE_DELAY * 2 ** attempt, MAX_DELAY) * (0.5 + random.random() / 2)


def retrying(fn, attempts=ATTEMPTS, on_retry=None, deadline=None):
    """fn() until it returns; TransientError is retried, every other error is final.

    on_retry(err, attempt, seconds_waited) is told before each new attempt.
    """
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            return fn()
        except TransientError as err:
            waited = time.monotonic() - started
            delay = backoff(attempt)
            if deadline is not None and waited + delay > deadline:
                raise StorageError(f"{err} (gave up after {waited:.0f} s without progress)") from None
            if attempt >= attempts - 1:
                raise StorageError(f"{err} (gave up after {attempt + 1} attempts)") from None
            if on_retry is not None:
                on_retry(err, attempt, waited)
            time.sleep(delay)
            attempt += 1
