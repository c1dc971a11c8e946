"""share: one pre-signed URL through which hosts pull images with no credentials."""

import re

from ..errors import UsageError
from ..sharing import MAX_EXPIRES, share
from . import remote_argument

SUMMARY = "print one pre-signed URL that lets hosts pull images with no credentials"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_arguments(p):
    remote_argument(p, "an S3 remote: config alias or s3:// URL")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="name[:tag] or image id prefix")
    p.add_argument("--expires", metavar="DURATION", default="7d",
                   help="how long the URL works: N[s|m|h|d], at most 7d (default 7d)")


def parse_duration(text):
    m = re.fullmatch(r"(\d{1,9})([smhd]?)", text.strip())
    if not m:
        raise UsageError(f"invalid duration {text!r}; use N followed by s, m, h or d (e.g. 12h, 7d)")
    seconds = int(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds <= 0:
        raise UsageError("--expires must be positive")
    if seconds > MAX_EXPIRES:
        raise UsageError(f"--expires {text} is longer than 7d, the most an S3 pre-signed URL (SigV4) allows")
    return seconds


def run(ctx, args):
    expires = parse_duration(args.expires)
    ctx.out.write(share(ctx, ctx.repo(args.remote), args.images, expires) + "\n")
    return 0
