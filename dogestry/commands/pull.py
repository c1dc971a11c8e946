"""pull: bring images from a remote into the engine, fetching only what it lacks.

Equivalent plumbing pipeline:
    dogestry resolve-ref REMOTE IMAGE... | dogestry build-load-tar --stdin --missing-in-docker --load REMOTE
"""

from ..records import write_ref_record
from .build_load_tar import load_images
from .resolve_ref import resolve

SUMMARY = "pull images (and their tags) from a remote into the engine"


def add_arguments(p):
    p.add_argument("remote", metavar="REMOTE", help="remote: config alias, path or URL")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="name[:tag] (tag defaults to latest) or image id prefix")


def pull(ctx, remote, names):
    repo = ctx.repo(remote)
    progress = ctx.start_progress("pull")
    resolved = resolve(repo, names)
    to_load, to_tag = load_images(ctx, repo, [(image_id, [ref] if ref else []) for image_id, ref in resolved])
    ctx.info(f"pulled {len(resolved)} image(s) from {repo.location} ({len(to_tag)} already present): "
             f"{progress.summary('loaded')}")
    return resolved


def run(ctx, args):
    for image_id, ref in pull(ctx, args.remote, args.images):
        write_ref_record(ctx.out, image_id, ref)
    return 0
