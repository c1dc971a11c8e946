"""update-ref: point name:tag at an image the repository holds whole.

Input with --stdin: ref records `<image-id> <name>:<tag>` (as save-to-repo prints).
"""

from ..errors import UsageError
from ..records import read_records
from ..refs import parse_ref

SUMMARY = "write a ref, refusing an image the repository lacks"


def add_arguments(p):
    p.add_argument("repo", metavar="REPO", help="repository: config alias, path or URL")
    p.add_argument("ref", metavar="NAME:TAG", nargs="?", help="the ref to write")
    p.add_argument("image_id", metavar="IMAGE-ID", nargs="?", help="the image it points at")
    p.add_argument("--stdin", action="store_true", help="read ref records `<image-id> <name>:<tag>` from stdin")
    p.add_argument("-z", dest="nul", action="store_true", help="NUL-terminated input records")


def update(repo, ref, image_id):
    repo.set_ref(ref, image_id)


def run(ctx, args):
    repo = ctx.repo(args.repo)
    pairs = []
    if args.ref or args.image_id:
        if not (args.ref and args.image_id):
            raise UsageError("give both NAME:TAG and IMAGE-ID")
        pairs.append((parse_ref(args.ref), args.image_id))
    if args.stdin:
        for fields in read_records(ctx.inp, args.nul):
            if len(fields) < 2:
                continue  # an image saved by id carries no ref
            pairs.append((parse_ref(fields[1]), fields[0]))
    elif not pairs:
        raise UsageError("give NAME:TAG IMAGE-ID, or --stdin")
    resolved = [(ref, repo.resolve(image_id)[0]) for ref, image_id in pairs]
    for ref, image_id in resolved:
        update(repo, ref, image_id)
        ctx.detail(f"{ref} -> {image_id}")
    return 0
