"""push: send images and their tags from the engine to a remote.

Equivalent plumbing pipeline:
    dogestry save-to-repo REMOTE IMAGE... | dogestry update-ref --stdin REMOTE
push adds one thing the pipeline lacks: when the remote already holds an image whole,
it only writes the ref and never asks the engine for a `docker save`.
"""

import time

from ..digests import sha256_digest
from ..dockertar import oci_manifest
from ..errors import NotFound, UsageError
from ..records import write_ref_record
from ..refs import looks_like_id, parse_ref
from .save_to_repo import Counts, _is_ref_in_engine, save_images
from .update_ref import update

SUMMARY = "push images (and their tags) to a remote"


def add_arguments(p):
    p.add_argument("remote", metavar="REMOTE", help="remote: config alias, path or URL")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="name[:tag] (tag defaults to latest) or image id")


def _remote_copy(repo, found, ref):
    """The remote's id for the engine image `found` if the remote holds it whole, else None.

    Graphdriver engines name an image by its config digest, which is our image id. The
    containerd store names it by manifest digest; an image that came from dogestry has the
    manifest we build (deterministic), so the ref's current target can be recognised.
    """
    candidates = [found["Id"]]
    names = [str(ref)] if ref is not None else []
    names += [t for t in found.get("RepoTags") or [] if t not in names]
    for name in names:  # any tag the engine image carries may already point at it
        try:
            candidates.append(repo.get_ref(parse_ref(name)))
        except (NotFound, UsageError):
            pass
    for image_id in candidates:
        if not repo.has_image(image_id):
            continue
        record = repo.get_image(image_id)
        same = image_id == found["Id"] or \
            sha256_digest(oci_manifest(record.id, record.config_size, record.layers)) == found["Id"]
        if same and not repo.missing_objects(record):
            return image_id
    return None


def _current(repo, ref):
    try:
        return repo.get_ref(ref)
    except NotFound:
        return None


def push(ctx, remote, names):
    """Push names to remote; return [(image_id, Ref or None)]."""
    repo = ctx.repo(remote)
    started = time.monotonic()
    ctx.start_progress("push")
    counts = Counts()
    done, to_save = [None] * len(names), []
    for index, name in enumerate(names):
        ref = None if looks_like_id(name) and not _is_ref_in_engine(ctx, name) else parse_ref(name)
        found = ctx.engine.require(str(ref) if ref else name)
        image_id = _remote_copy(repo, found, ref)
        if image_id:
            ctx.detail(f"skipped {ref or found['Id']}: {repo.location} already has image {image_id}")
            layers = repo.get_image(image_id).layers
            counts.skipped += len(layers)
            counts.skipped_bytes += sum(layer.uncompressed_size for layer in layers)
            done[index] = (image_id, ref)
        else:
            to_save.append(name)
    if to_save:  # results keep the order the images were named in
        saved = iter(save_images(ctx, repo, to_save, counts))
        done = [item if item is not None else next(saved) for item in done]
    for image_id, ref in done:
        if ref is not None and _current(repo, ref) != image_id:  # an unchanged ref costs no write
            update(repo, ref, image_id)
    ctx.info(f"pushed {len(done)} image(s) to {repo.location}: {counts.summary()} "
             f"in {time.monotonic() - started:.1f}s")
    return done


def run(ctx, args):
    for image_id, ref in push(ctx, args.remote, args.images):
        write_ref_record(ctx.out, image_id, ref)
    return 0
