"""resolve-ref: name[:tag] or an image id prefix -> the full image id in a repository.

Output, one ref record per argument: `<image-id> [<name>:<tag>]`.
"""

from ..records import read_records, write_ref_record
from ..errors import UsageError

SUMMARY = "resolve name[:tag] or an image id prefix to a full image id"


def add_arguments(p):
    p.add_argument("repo", metavar="REPO", help="repository: config alias, path or URL")
    p.add_argument("refs", metavar="REF", nargs="*", help="name[:tag] (tag defaults to latest) or image id prefix")
    p.add_argument("--stdin", action="store_true", help="read REFs, one per record, from stdin")
    p.add_argument("-z", dest="nul", action="store_true", help="NUL-terminated records in and out")


def resolve(repo, texts):
    """[(image_id, Ref or None)] for each text, in order; NotFound/ambiguity raise."""
    return [repo.resolve(text) for text in texts]


def run(ctx, args):
    texts = list(args.refs)
    if args.stdin:
        texts += [fields[0] for fields in read_records(ctx.inp, args.nul)]
    if not texts:
        raise UsageError("name at least one REF (or use --stdin)")
    repo = ctx.repo(args.repo)
    for image_id, ref in resolve(repo, texts):
        write_ref_record(ctx.out, image_id, ref, args.nul)
    return 0
