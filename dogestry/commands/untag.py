"""untag (rmtag): remove tags from a remote, by name or by retention (--keep-last N)."""

from ..errors import UsageError
from ..operations import retention, untag
from ..records import write_ref_record
from . import held_lock, lock_options, remote_argument

SUMMARY = "remove tags, or all but the newest N of each name (objects stay until gc)"


def add_arguments(p):
    remote_argument(p)
    p.add_argument("refs", metavar="NAME:TAG", nargs="+",
                   help="tags to remove; with --keep-last, globs on name:tag or name (PATTERN)")
    p.add_argument("--keep-last", metavar="N", type=int,
                   help="keep the N most recently pushed tags of each matching name, remove the rest")
    p.add_argument("-n", "--dry-run", action="store_true", help="print what would be removed, remove nothing")
    lock_options(p)


def run(ctx, args):
    repo = ctx.repo(args.remote)
    with held_lock(ctx, args):
        if args.keep_last is not None:
            if args.keep_last < 0:
                raise UsageError("--keep-last must be 0 or more")
            removed = retention(repo, args.keep_last, args.refs, args.dry_run)
        else:
            removed = untag(repo, args.refs, args.dry_run)
    for image_id, ref in removed:
        write_ref_record(ctx.out, image_id or "-", ref)
    verb = "would untag" if args.dry_run else "untagged"
    ctx.info(f"{verb} {len(removed)} tag(s) in {repo.location}")
    return 0
