"""gc: delete the objects no ref reaches, safely while other hosts push."""

from ..durations import parse_duration
from ..operations import gc
from ..progress import human
from . import held_lock, lock_options, remote_argument

SUMMARY = "delete the objects no tag reaches (safe while other hosts push)"


def add_arguments(p):
    remote_argument(p)
    p.add_argument("-n", "--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    p.add_argument("--grace", metavar="DURATION", default="24h",
                   help="never delete an object younger than DURATION: N[s|m|h|d] (default 24h)")
    lock_options(p)


def run(ctx, args):
    grace = parse_duration(args.grace, "--grace")
    repo = ctx.repo(args.remote)
    with held_lock(ctx, args):
        report = gc(ctx, repo, grace, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    kept = []
    if report.kept_young:
        kept.append(f"{report.kept_young} younger than {args.grace}")
    if report.kept_leased:
        kept.append(f"{report.kept_leased} written by a push still running")
    ctx.out.write(f"{verb} {len(report.removed)} object(s), {report.bytes} bytes ({human(report.bytes)}) "
                  f"from {repo.location}{'; kept unreachable: ' + ', '.join(kept) if kept else ''}\n")
    return 0
