"""list (ls): the tags of a remote with their images, stored sizes and last push times.

The module is not named list.py: importing it would bind `list` in this package over the builtin.
"""

import json
import time

from ..errors import NotFound
from ..operations import list_tags
from ..progress import human
from . import remote_argument

SUMMARY = "list the tags of a remote: image, stored size, when pushed"


def add_arguments(p):
    remote_argument(p)
    p.add_argument("patterns", metavar="PATTERN", nargs="*", help="glob on name:tag or name (e.g. 'team/*')")
    p.add_argument("--no-trunc", action="store_true", help="full image ids and exact times")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of the table")


def _ago(when, now):
    if when is None:
        return "-"
    seconds = max(0, now - when)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


def _utc(when):
    """ISO 8601 UTC, or None for a time gmtime cannot hold (a file stamped 2^62 on tmpfs)."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when)) if when is not None else None
    except (OverflowError, OSError, ValueError):
        return None


def run(ctx, args):
    repo = ctx.repo(args.remote)
    rows = list_tags(repo, args.patterns)
    # Like show-ref: patterns that match nothing are a failure scripts can test, in one line.
    if args.patterns and not rows:
        raise NotFound(f"no tag matches {' or '.join(repr(p[:200]) for p in args.patterns[:5])} in {repo.location}")
    if args.json:
        for row in rows:
            obj = row.to_json()
            obj["pushed"] = _utc(row.pushed)
            ctx.out.write(json.dumps(obj, sort_keys=True) + "\n")
    else:
        now = time.time()
        table = [("REPOSITORY", "TAG", "IMAGE ID", "SIZE", "PUSHED")]
        for row in rows:
            image_id = row.image_id or "<damaged>"
            if row.image_id and not args.no_trunc:
                image_id = row.image_id.split(":", 1)[1][:12]
            size = "-" if row.size is None else (str(row.size) if args.no_trunc else human(row.size))
            pushed = _utc(row.pushed) if args.no_trunc else _ago(row.pushed, now)
            table.append((row.ref.name, row.ref.tag, image_id, size, pushed or "-"))
        widths = [max(len(r[i]) for r in table) for i in range(4)]
        for r in table:
            ctx.out.write("   ".join(r[i].ljust(widths[i]) for i in range(4)) + "   " + r[4] + "\n")
    return 0
