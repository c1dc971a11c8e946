"""A bound on JSON read from outside, checked on its text before it is parsed.

Parsed JSON can take 25 times the memory of its text ('[[],[],...]': 21 MiB became 580 MiB),
and every document dogestry parses (a docker save's manifest and configs, an image record,
a share index, a lease, an engine's answer) may be up to tens of MiB. Counting commas and
brackets first bounds what parsing can cost, far above what any real document holds.
"""

MAX_JSON_VALUES = 1 << 20  # commas and brackets in one JSON document read from outside


def too_many_values(data):
    """True when JSON text (bytes) has more than MAX_JSON_VALUES values."""
    return data.count(b",") + data.count(b"[") + data.count(b"{") > MAX_JSON_VALUES
