"""save-to-repo: export images from the engine (or a save tar) into a repository.

Output, one ref record per image: `<image-id> [<name>:<tag>]`. An image the repository
already holds whole costs no `docker save`: only its record is printed.
"""

import sys

from ..errors import UsageError
from ..records import write_ref_record
from ..transfer import publish_images, save_images, store_save_stream
from . import nul_option, remote_argument

SUMMARY = "export images from the engine into a repository, storing only what it lacks"


def add_arguments(p):
    remote_argument(p)
    p.add_argument("images", metavar="IMAGE", nargs="*", help="name[:tag] or image id in the engine")
    p.add_argument("--input", metavar="FILE", help="read a `docker save` tar from FILE (- for stdin) instead of the engine")
    nul_option(p, "terminate output records with NUL")


def _from_input(ctx, repo, path):
    if path == "-":
        stream = sys.stdin.buffer
    else:
        try:
            stream = open(path, "rb")
        except OSError as err:
            raise UsageError(f"cannot open {path}: {err.strerror}") from None
    with stream:
        images = publish_images(ctx, repo, store_save_stream(ctx, repo, stream))
    return [(image.id, ref) for image in images for ref in (image.tags or [None])]


def run(ctx, args):
    repo = ctx.repo(args.remote, create=True)
    ctx.start_progress("save")
    if args.input:
        if args.images:
            raise UsageError("give either --input or IMAGE arguments, not both")
        results = _from_input(ctx, repo, args.input)
    else:
        if not args.images:
            raise UsageError("name at least one IMAGE, or use --input")
        results = save_images(ctx, repo, args.images)
    for image_id, ref in results:
        write_ref_record(ctx.out, image_id, ref, args.nul)
    return 0
