"""share: one pre-signed URL through which hosts pull images with no credentials."""

from ..durations import parse_duration
from ..errors import UsageError
from ..sharing import MAX_EXPIRES, share
from . import remote_argument

SUMMARY = "print one pre-signed URL that lets hosts pull images with no credentials"


def add_arguments(p):
    remote_argument(p, "an S3 remote: config alias or s3:// URL")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="name[:tag] or image id prefix")
    p.add_argument("--expires", metavar="DURATION", default="7d",
                   help="how long the URL works: N[s|m|h|d], at most 7d (default 7d)")


def _expires(text):
    seconds = parse_duration(text, "--expires")
    if seconds <= 0:
        raise UsageError("--expires must be positive")
    if seconds > MAX_EXPIRES:
        raise UsageError(f"--expires {text} is longer than 7d, the most an S3 pre-signed URL (SigV4) allows")
    return seconds


def run(ctx, args):
    expires = _expires(args.expires)
    ctx.out.write(share(ctx, ctx.repo(args.remote), args.images, expires) + "\n")
    return 0
