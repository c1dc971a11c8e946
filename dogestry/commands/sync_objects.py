"""sync-objects: copy objects from one repository to another, verifying every byte.

Input: object records with --stdin (`<kind> <digest> ...`, as walk-ancestry prints; extra
fields are ignored), or the whole closure of each `--image ID`.
Output: one object record `<kind> <digest>` per object copied; objects DST already has
are skipped silently (listed on stderr with -v).
Whatever the input order, layers are published first, then configs, then image records.
It holds a lease on DST meanwhile, as a push does, so that a gc of DST keeps what it writes
and the objects of the images it copies (those DST already had included).
"""

from ..digests import is_digest
from ..errors import DogestryError, UsageError
from ..operations import before_refs, lease
from ..records import OBJECT_KINDS, read_records, write_record
from ..transfer import closure, sync
from . import nul_option, stdin_option

SUMMARY = "copy objects between repositories, verifying digests"


def add_arguments(p):
    p.add_argument("src", metavar="SRC", help="source repository")
    p.add_argument("dst", metavar="DST", help="destination repository")
    p.add_argument("--image", metavar="ID", action="append", default=[],
                   help="copy the image's whole closure (repeatable)")
    stdin_option(p, "read object records `<kind> <digest> ...` from stdin")
    nul_option(p, "NUL-terminated records in and out")


def run(ctx, args):
    if not args.image and not args.stdin:
        raise UsageError("give --image ID or --stdin with object records")
    src, dst = ctx.repo(args.src), ctx.repo(args.dst, create=True)
    objects = []
    for image in args.image:
        objects += closure(src, src.resolve(image)[0])
    if args.stdin:
        for fields in read_records(ctx.inp, args.nul):
            if len(fields) < 2 or fields[0] not in OBJECT_KINDS or not is_digest(fields[1]):
                raise UsageError(f"bad object record {' '.join(fields)[:200]!r}; expected "
                                 "'<layer|config|image> sha256:<hex>'")
            objects.append((fields[0], fields[1]))
    images = [digest for kind, digest in objects if kind == "image"]
    with lease(dst, "sync") as held:
        copied = sync(ctx, src, dst, objects)
        # As a push before its refs: name the images in the lease, let running gcs end, then
        # check that each is whole in DST; what a gc took meanwhile is copied again.
        for attempt in range(3):
            gone = before_refs(ctx, dst, held, [(image_id, None) for image_id in images]) if images else []
            if not gone:
                break
            if attempt == 2:
                raise DogestryError(f"image {gone[0]} lost objects in {dst.location} to a gc three times while it "
                                    "was being copied; run sync-objects again")
            ctx.detail(f"a gc removed objects of {len(gone)} image(s) in {dst.location}; copying them again")
            copied += sync(ctx, src, dst, [o for i in gone for o in closure(src, i)])
    for record in copied:
        write_record(ctx.out, record, args.nul)
    return 0
