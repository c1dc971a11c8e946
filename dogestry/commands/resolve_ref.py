"""resolve-ref: name[:tag] or an image id prefix -> the full image id in a repository.

Output, one ref record per argument: `<image-id> [<name>:<tag>]`.
"""

from ..errors import UsageError
from ..records import read_ref_records, write_ref_record
from ..transfer import resolve
from . import nul_option, remote_argument, stdin_option

SUMMARY = "resolve name[:tag] or an image id prefix to a full image id"


def add_arguments(p):
    remote_argument(p)
    p.add_argument("images", metavar="REF", nargs="*", help="name[:tag] (tag defaults to latest) or image id prefix")
    stdin_option(p, "read REFs, one per record, from stdin")
    nul_option(p, "NUL-terminated records in and out")


def run(ctx, args):
    if not args.images and not args.stdin:
        raise UsageError("name at least one REF (or use --stdin)")
    repo = ctx.repo(args.remote)
    for image_id, ref in resolve(repo, args.images):
        write_ref_record(ctx.out, image_id, ref, args.nul)
    if args.stdin:  # one record out per record in, as it arrives
        for fields in read_ref_records(ctx.inp, args.nul):
            for image_id, ref in resolve(repo, fields[:1]):
                write_ref_record(ctx.out, image_id, ref, args.nul)
    return 0
