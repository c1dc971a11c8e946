"""build-load-tar: write a `docker load` tar of images from a repository, or load it.

Input: IMAGE-ID arguments (with --tag for a single image) and/or ref records on stdin
with --stdin (`<image-id> [<name>:<tag>]`, as resolve-ref prints).
"""

import sys

from ..errors import DogestryError, UsageError
from ..records import read_ref_records
from ..refs import parse_ref
from ..transfer import load, plan_load, write_tar
from . import nul_option, remote_argument, stdin_option

SUMMARY = "write a docker-load tar of images, or stream it into the engine"


def add_arguments(p):
    remote_argument(p)
    p.add_argument("images", metavar="IMAGE-ID", nargs="*", help="image id (or unique prefix)")
    p.add_argument("--tag", metavar="NAME:TAG", action="append", default=[],
                   help="tag the image with NAME:TAG (repeatable; needs exactly one IMAGE-ID)")
    stdin_option(p, "read ref records `<image-id> [<name>:<tag>]` from stdin")
    p.add_argument("--missing-in-docker", action="store_true",
                   help="leave out layers the engine already has; only tag images it already has")
    p.add_argument("--load", action="store_true", help="stream the tar into the engine instead of stdout")
    nul_option(p, "NUL-terminated input records")


def run(ctx, args):
    repo = ctx.repo(args.remote)
    ctx.start_progress("load" if args.load else "tar")
    tags = [parse_ref(t) for t in args.tag]
    if tags and len(args.images) != 1:
        raise UsageError("--tag needs exactly one IMAGE-ID; for several images use --stdin with ref records")
    items = [(repo.resolve(text)[0], tags) for text in args.images]
    if args.stdin:
        for fields in read_ref_records(ctx.inp, args.nul):
            items.append((repo.resolve(fields[0])[0], [parse_ref(f) for f in fields[1:2]]))
    if not items:
        raise UsageError("name at least one IMAGE-ID (or use --stdin)")
    out = None
    if not args.load:
        out = ctx.out.buffer if hasattr(ctx.out, "buffer") else ctx.out
        if out is sys.stdout.buffer and sys.stdout.isatty():
            raise UsageError("refusing to write a tar to a terminal; redirect stdout or use --load")
    plan = plan_load(ctx, repo, items, args.missing_in_docker)
    if args.load:
        load(ctx, repo, plan)
        return 0
    if plan.to_tag:
        raise DogestryError("the engine already has " + ", ".join(i for i, _ in plan.to_tag) +
                            "; use --load to tag it, or leave out --missing-in-docker")
    write_tar(ctx, repo, plan, out)
    return 0
