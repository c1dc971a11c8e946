"""update-ref: point name:tag at an image the repository holds whole.

Input with --stdin: ref records `<image-id> <name>:<tag>` (as save-to-repo prints); a
record without a ref (an image saved by id) is passed over.
"""

from ..errors import UsageError
from ..records import read_ref_records
from ..refs import looks_like_id, parse_ref
from ..transfer import set_refs
from . import nul_option, remote_argument, stdin_option

SUMMARY = "write a ref, refusing an image the repository lacks"


def add_arguments(p):
    remote_argument(p)
    p.add_argument("ref", metavar="NAME:TAG", nargs="?", help="the ref to write")
    p.add_argument("image_id", metavar="IMAGE-ID", nargs="?", help="the image it points at")
    stdin_option(p, "read ref records `<image-id> <name>:<tag>` from stdin")
    nul_option(p, "NUL-terminated input records")


def run(ctx, args):
    repo = ctx.repo(args.remote, create=True)
    pairs = []
    if args.ref or args.image_id:
        if not (args.ref and args.image_id):
            raise UsageError("give both NAME:TAG and IMAGE-ID")
        pairs.append((parse_ref(args.ref), args.image_id))
    elif not args.stdin:
        raise UsageError("give NAME:TAG IMAGE-ID, or --stdin")
    if args.stdin:
        for fields in read_ref_records(ctx.inp, args.nul):
            if len(fields) >= 2:
                pairs.append((parse_ref(fields[1]), fields[0]))
            elif not looks_like_id(fields[0]):
                # passed over only when it is what save-to-repo prints for an untagged image:
                # anything else is input from the wrong command, not a record to ignore
                raise UsageError(f"bad ref record {fields[0][:80]!r}; expected '<image-id> [<name>:<tag>]'")
    set_refs(ctx, repo, [(repo.resolve(image_id)[0], ref) for ref, image_id in pairs])
    return 0
