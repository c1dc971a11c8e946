"""pull: bring images from a remote into the engine, fetching only what it lacks.

Equivalent plumbing pipeline:
    dogestry resolve-ref REMOTE IMAGE... | dogestry build-load-tar --stdin --missing-in-docker --load REMOTE
"""

from ..records import write_ref_record
from ..transfer import pull
from . import held_lock, lock_options, remote_argument

SUMMARY = "pull images (and their tags) from a remote into the engine"


def add_arguments(p):
    remote_argument(p)
    p.add_argument("images", metavar="IMAGE", nargs="+", help="name[:tag] (tag defaults to latest) or image id prefix")
    lock_options(p)


def run(ctx, args):
    repo = ctx.repo(args.remote)
    progress = ctx.start_progress("pull")
    with held_lock(ctx, args):
        resolved, plan = pull(ctx, repo, args.images)
    ctx.info(f"pulled {len(resolved)} image(s) from {repo.location} ({len(plan.to_tag)} already present): "
             f"{progress.summary('loaded')}")
    for image_id, ref in resolved:
        write_ref_record(ctx.out, image_id, ref)
    return 0
