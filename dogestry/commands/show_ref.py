"""show-ref: list refs as ref records `<image-id> <name>:<tag>`, sorted by name:tag."""

from ..errors import NotFound
from ..records import write_record
from . import nul_option, remote_argument

SUMMARY = "list the refs of a repository"


def add_arguments(p):
    remote_argument(p)
    p.add_argument("pattern", metavar="PATTERN", nargs="?", help="glob on name:tag or name (e.g. 'app:*')")
    nul_option(p, "terminate output records with NUL")


def run(ctx, args):
    repo = ctx.repo(args.remote)
    refs = repo.list_refs(args.pattern)
    for image_id, ref in refs:
        write_record(ctx.out, [image_id, ref], args.nul)
    # Like git show-ref: a pattern that matches nothing is a failure scripts can test,
    # said in one line like every failure (stdout stays empty).
    if args.pattern and not refs:
        raise NotFound(f"no ref matches {args.pattern[:200]!r} in {repo.location}")
    return 0
