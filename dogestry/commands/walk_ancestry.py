"""walk-ancestry: the objects an image needs, top layer first.

Output records (object records):
    image  <image-id>
    config <image-id>
    layer  <diff-id> <position> <chain-id>     position 1 is the base layer
With --missing-in-docker the walk stops at the first layer whose chain the engine has,
and prints nothing at all when the engine already has the image.
"""

from ..records import write_record
from ..transfer import walk
from . import nul_option, remote_argument

SUMMARY = "list the objects an image needs, top layer first"


def add_arguments(p):
    remote_argument(p)
    p.add_argument("images", metavar="IMAGE-ID", help="image id (or unique prefix, or name:tag)")
    p.add_argument("--missing-in-docker", action="store_true",
                   help="stop at the first chain the Docker engine already has")
    nul_option(p, "terminate output records with NUL")


def run(ctx, args):
    repo = ctx.repo(args.remote)
    image_id, _ = repo.resolve(args.images)
    for record in walk(repo, image_id, ctx.engine if args.missing_in_docker else None):
        write_record(ctx.out, record, args.nul)
    return 0
