"""untag (rmtag): remove tags from a remote, by name or by retention (--keep-last N)."""

import re

from ..errors import UsageError
from ..operations import retention, untag
from ..records import write_ref_record
from . import held_lock, lock_options, remote_argument

SUMMARY = "remove tags, or all but the newest N of each name (objects stay until gc)"


def _count(text):
    """--keep-last N: ASCII digits only. int() also reads '３' (full-width) and '٣' as 3,
    which a user who typed them did not mean as a count of tags to keep."""
    if not re.fullmatch(r"[0-9]+", text.strip()):
        raise UsageError(f"untag: --keep-last {text[:80]!r} is not a count (0, 1, 2, ...)")
    return int(text)


def add_arguments(p):
    remote_argument(p)
    p.add_argument("refs", metavar="NAME:TAG", nargs="+",
                   help="tags to remove; with --keep-last, globs on name:tag or name (PATTERN)")
    p.add_argument("--keep-last", metavar="N", type=_count,
                   help="keep the N most recently pushed tags of each matching name, remove the rest")
    p.add_argument("-n", "--dry-run", action="store_true", help="print what would be removed, remove nothing")
    lock_options(p)


def run(ctx, args):
    repo = ctx.repo(args.remote)
    with held_lock(ctx, args):
        if args.keep_last is not None:
            removed = retention(repo, args.keep_last, args.refs, args.dry_run)
        else:
            removed = untag(repo, args.refs, args.dry_run)
    for image_id, ref in removed:
        write_ref_record(ctx.out, image_id or "-", ref)
    verb = "would untag" if args.dry_run else "untagged"
    ctx.info(f"{verb} {len(removed)} tag(s) in {repo.location}")
    return 0
