"""push: send images and their tags from the engine to a remote.

Equivalent plumbing pipeline, exactly:
    dogestry save-to-repo REMOTE IMAGE... | dogestry update-ref --stdin REMOTE
"""

import time

from ..records import write_ref_record
from ..transfer import Counts, push
from . import held_lock, lock_options, remote_argument

SUMMARY = "push images (and their tags) to a remote"


def add_arguments(p):
    remote_argument(p)
    p.add_argument("images", metavar="IMAGE", nargs="+", help="name[:tag] (tag defaults to latest) or image id")
    lock_options(p)


def run(ctx, args):
    repo = ctx.repo(args.remote, create=True)
    started = time.monotonic()
    ctx.start_progress("push")
    counts = Counts()
    with held_lock(ctx, args):
        results = push(ctx, repo, args.images, counts)
    ctx.info(f"pushed {len(results)} image(s) to {repo.location}: {counts.summary()} "
             f"in {time.monotonic() - started:.1f}s")
    for image_id, ref in results:
        write_ref_record(ctx.out, image_id, ref)
    return 0
