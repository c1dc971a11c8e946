"""pull: bring images from a remote into the engine, fetching only what it lacks.

Equivalent plumbing pipeline:
    dogestry resolve-ref REMOTE IMAGE... | dogestry build-load-tar --stdin --missing-in-docker --load REMOTE
"""

import time

from ..records import write_record
from .build_load_tar import load_images
from .resolve_ref import resolve

SUMMARY = "pull images (and their tags) from a remote into the engine"


def add_arguments(p):
    p.add_argument("remote", metavar="REMOTE", help="remote: config alias, path or URL")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="name[:tag] (tag defaults to latest) or image id prefix")


def pull(ctx, remote, names):
    repo = ctx.repo(remote)
    started = time.monotonic()
    resolved = resolve(repo, names)
    to_load, to_tag = load_images(ctx, repo, [(image_id, [ref] if ref else []) for image_id, ref in resolved])
    layers = sum(len(image.include) for image in to_load)
    ctx.info(f"pulled {len(resolved)} image(s) from {repo.location}: loaded {len(to_load)} "
             f"({layers} layer(s)), {len(to_tag)} already present, in {time.monotonic() - started:.1f}s")
    return resolved


def run(ctx, args):
    for image_id, ref in pull(ctx, args.remote, args.images):
        write_record(ctx.out, [image_id] + ([ref] if ref else []))
    return 0
