"""Durations on the command line: N followed by s, m, h or d (seconds when no unit).

Shared by every option that takes one (share --expires, gc --grace, --lock-timeout), so
they all read the same grammar and fail with the same one line.
"""

import re

from .errors import UsageError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text, option="duration"):
    """Seconds (an int, 0 allowed) for text such as 90, 30s, 15m, 24h, 7d."""
    # [0-9], not \d: int() reads '３' and '٣' as 3, and a grace of 3 s is not what was typed.
    m = re.fullmatch(r"([0-9]{1,9})([smhd]?)", text.strip())
    if not m:
        raise UsageError(f"invalid {option} {text[:80]!r}; use N followed by s, m, h or d (e.g. 12h, 7d)")
    return int(m.group(1)) * UNITS[m.group(2) or "s"]
