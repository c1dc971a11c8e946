"""build-load-tar: write a `docker load` tar of images from a repository, or load it.

Input: IMAGE-ID arguments (with --tag for a single image) and/or ref records on stdin
with --stdin (`<image-id> [<name>:<tag>]`, as resolve-ref prints).
"""

import sys

from ..dockertar import LoadImage, load_tar_chunks
from ..errors import DogestryError, UsageError
from ..records import read_records
from ..refs import parse_ref
from .walk_ancestry import engine_image_id, missing_layers

SUMMARY = "write a docker-load tar of images, or stream it into the engine"


def add_arguments(p):
    p.add_argument("repo", metavar="REPO", help="repository: config alias, path or URL")
    p.add_argument("image_ids", metavar="IMAGE-ID", nargs="*", help="image id (or unique prefix)")
    p.add_argument("--tag", metavar="NAME:TAG", action="append", default=[],
                   help="tag the image with NAME:TAG (repeatable; needs exactly one IMAGE-ID)")
    p.add_argument("--stdin", action="store_true", help="read ref records `<image-id> [<name>:<tag>]` from stdin")
    p.add_argument("--missing-in-docker", action="store_true",
                   help="leave out layers the engine already has; only tag images it already has")
    p.add_argument("--load", action="store_true", help="stream the tar into the engine instead of stdout")
    p.add_argument("-z", dest="nul", action="store_true", help="NUL-terminated input records")


def plan(ctx, repo, items, missing_in_docker):
    """Decide what to send: (LoadImage list, [(engine id, tags)] that only need tagging)."""
    engine = ctx.engine if missing_in_docker else None
    chains = engine.layer_chains() if engine is not None and not engine.uses_containerd_store() else None
    to_load, to_tag = [], []
    merged = {}
    for image_id, tags in items:
        merged.setdefault(image_id, [])
        merged[image_id] += [t for t in tags if t not in merged[image_id]]
    for image_id, tags in merged.items():
        record = repo.get_image(image_id)
        config = repo.get_config(image_id)
        include = {layer.diff_id for layer in record.layers}
        image = LoadImage(config, record.layers, include, tags)
        if engine is not None:
            present = engine_image_id(engine, record)
            if present:
                ctx.detail(f"skipped image {image_id}: the engine has it")
                to_tag.append((present, tags))
                continue
            image.include = {layer.diff_id for layer in missing_layers(engine, record, chains)}
            for layer in record.layers:
                if layer.diff_id not in image.include:
                    ctx.detail(f"skipped layer {layer.diff_id}: the engine has it")
        to_load.append(image)
    return to_load, to_tag


def _verified(ctx, repo, desc):
    """A layer's chunks, saying (with -v) once it has passed verification."""
    yield from repo.layer_chunks(desc)
    ctx.detail(f"sent layer {desc.diff_id} ({desc.uncompressed_size} bytes, verified)")


def _tracked_layers(ctx, repo, to_load, to_tag):
    """layer_chunks that report to the progress line; skipped layers are counted first."""
    progress = ctx.progress
    if progress is None:
        return lambda desc: _verified(ctx, repo, desc)
    sent = set()
    for image in to_load:
        for layer in image.layers:
            if layer.diff_id not in image.include and layer.diff_id not in sent:
                sent.add(layer.diff_id)
                progress.skip(layer.diff_id, layer.uncompressed_size)
    for image_id, _ in to_tag:
        progress.skip(image_id, 0)
    progress.set_total(sum(layer.uncompressed_size for image in to_load for layer in image.layers
                           if layer.diff_id in image.include))
    return lambda desc: progress.track(_verified(ctx, repo, desc), desc.diff_id, desc.uncompressed_size)


def load_images(ctx, repo, items, missing_in_docker=True):
    """Load [(image_id, [Ref])] into the engine, sending only what it lacks; tag them."""
    to_load, to_tag = plan(ctx, repo, items, missing_in_docker)
    if to_load:
        try:
            ctx.engine.load(load_tar_chunks(to_load, _tracked_layers(ctx, repo, to_load, to_tag)))
        finally:
            if ctx.progress is not None:
                ctx.progress.clear()
    for engine_id, tags in to_tag:
        for tag in tags:
            ctx.engine.tag(engine_id, tag)
    return to_load, to_tag


def write_tar(ctx, repo, items, out, missing_in_docker=False):
    to_load, to_tag = plan(ctx, repo, items, missing_in_docker)
    try:
        for chunk in load_tar_chunks(to_load, _tracked_layers(ctx, repo, to_load, to_tag)):
            out.write(chunk)
    finally:
        if ctx.progress is not None:
            ctx.progress.clear()
    out.flush()
    return to_load, to_tag


def run(ctx, args):
    repo = ctx.repo(args.repo)
    ctx.start_progress("load" if args.load else "tar")
    tags = [parse_ref(t) for t in args.tag]
    if tags and len(args.image_ids) != 1:
        raise UsageError("--tag needs exactly one IMAGE-ID; for several images use --stdin with ref records")
    items = [(repo.resolve(text)[0], tags) for text in args.image_ids]
    if args.stdin:
        for fields in read_records(ctx.inp, args.nul):
            image_id = repo.resolve(fields[0])[0]
            items.append((image_id, [parse_ref(f) for f in fields[1:2]]))
    if not items:
        raise UsageError("name at least one IMAGE-ID (or use --stdin)")
    if args.load:
        load_images(ctx, repo, items, args.missing_in_docker)
    else:
        out = ctx.out.buffer if hasattr(ctx.out, "buffer") else ctx.out
        if out is sys.stdout.buffer and sys.stdout.isatty():
            raise UsageError("refusing to write a tar to a terminal; redirect stdout or use --load")
        _, to_tag = write_tar(ctx, repo, items, out, args.missing_in_docker)
        if to_tag:
            raise DogestryError("the engine already has " + ", ".join(i for i, _ in to_tag) +
                                "; use --load to tag it, or leave out --missing-in-docker")
    return 0

