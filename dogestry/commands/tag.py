"""tag: another name:tag for an image the remote has; no data moves."""

from ..operations import tag
from ..records import write_ref_record
from . import remote_argument

SUMMARY = "give an image in a remote another name:tag (no data moves)"


def add_arguments(p):
    remote_argument(p)
    p.add_argument("source", metavar="SOURCE", help="name[:tag] or image id prefix the remote has")
    p.add_argument("target", metavar="TARGET", help="the new name[:tag] (tag defaults to latest)")


def run(ctx, args):
    # With ctx it says so when it waits for a running gc.
    image_id, ref = tag(ctx.repo(args.remote), args.source, args.target, ctx=ctx)
    ctx.detail(f"{ref} -> {image_id}")
    write_ref_record(ctx.out, image_id, ref)
    return 0
