"""sync-objects: copy objects from one repository to another, verifying every byte.

Input: object records on stdin (`<kind> <digest> ...`, as walk-ancestry prints; extra
fields are ignored), or the whole closure of each `--image ID`.
Output: one object record `<kind> <digest>` per object copied; objects DST already has
are skipped silently (listed on stderr with -v).
Whatever the input order, layers are published first, then configs, then image records.
"""

from concurrent.futures import ThreadPoolExecutor

from ..digests import is_digest
from ..errors import UsageError
from ..records import read_records, write_record

SUMMARY = "copy objects between repositories, verifying digests"
KINDS = ("layer", "config", "image")
PARALLEL = 4


def add_arguments(p):
    p.add_argument("src", metavar="SRC", help="source repository")
    p.add_argument("dst", metavar="DST", help="destination repository")
    p.add_argument("--image", metavar="ID", action="append", default=[],
                   help="copy the image's whole closure (repeatable); without it, read object records from stdin")
    p.add_argument("-z", dest="nul", action="store_true", help="NUL-terminated records in and out")


def closure(repo, image_id):
    record = repo.get_image(image_id)
    return [("layer", d) for d in record.diff_ids] + [("config", record.id), ("image", record.id)]


def sync(ctx, src, dst, objects):
    """Copy objects [(kind, digest)] from src to dst in publish order; return those copied."""
    wanted = list(dict.fromkeys(objects))
    copied = []
    layers = [d for k, d in wanted if k == "layer"]

    def copy_layer(diff_id):
        if dst.has_layer(diff_id):
            ctx.detail(f"skipped layer {diff_id}: {dst.location} has it")
            return None
        desc = src.layer_descriptor(diff_id)
        dst.put_stored_layer(desc, src.stored_chunks(desc))
        ctx.detail(f"copied layer {diff_id} ({desc.size} bytes, verified)")
        return ("layer", diff_id)

    with ThreadPoolExecutor(PARALLEL) as pool:
        copied += [r for r in pool.map(copy_layer, layers) if r]
    for kind, digest in wanted:
        if kind == "config":
            if dst.has_config(digest):
                continue
            dst.put_config(src.get_config(digest))
            copied.append(("config", digest))
    for kind, digest in wanted:
        if kind == "image":
            if dst.has_image(digest):
                continue
            dst.put_image(src.get_image(digest))
            copied.append(("image", digest))
    return copied


def run(ctx, args):
    src, dst = ctx.repo(args.src), ctx.repo(args.dst)
    objects = []
    for image in args.image:
        image_id, _ = src.resolve(image)
        objects += closure(src, image_id)
    if not args.image:
        for fields in read_records(ctx.inp, args.nul):
            if len(fields) < 2 or fields[0] not in KINDS or not is_digest(fields[1]):
                raise UsageError(f"bad object record {' '.join(fields)!r}; expected '<layer|config|image> sha256:<hex>'")
            objects.append((fields[0], fields[1]))
    for record in sync(ctx, src, dst, objects):
        write_record(ctx.out, record, args.nul)
    return 0
