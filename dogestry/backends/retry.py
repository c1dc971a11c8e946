"""One retry policy for every network backend.

A backend turns a failure that may pass by itself (throttling, a 5xx, a connection reset
or a body cut short) into TransientError; anything else (not found, denied, a bad request)
is permanent and raised at once. retrying() tries again with exponential backoff and
jitter, and gives up with the last error's message once its attempts are spent.
"""

import random
import time

from ..errors import StorageError

ATTEMPTS = 5
BASE_DELAY = 0.2   # seconds before the second attempt; doubles each time
MAX_DELAY = 5.0


class TransientError(StorageError):
    """A failure worth retrying; str() says what failed."""


def backoff(attempt):
    """Seconds to wait after failed attempt number `attempt` (0-based), with jitter."""
    return min(BASE_DELAY * 2 ** attempt, MAX_DELAY) * (0.5 + random.random() / 2)


def retrying(fn, attempts=ATTEMPTS, on_retry=None):
    """fn() until it returns; TransientError is retried, every other error is final."""
    for attempt in range(attempts):
        try:
            return fn()
        except TransientError as err:
            if attempt == attempts - 1:
                raise StorageError(f"{err} (gave up after {attempts} attempts)") from None
            if on_retry is not None:
                on_retry(err, attempt)
            time.sleep(backoff(attempt))
