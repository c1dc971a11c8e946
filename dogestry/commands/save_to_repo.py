"""save-to-repo: export images from the engine (or a save tar) into a repository.

Output, one ref record per image: `<image-id> [<name>:<tag>]`.
"""

import hashlib
import sys

from ..dockertar import NotATar, scan_save_stream
from ..errors import DogestryError, UsageError
from ..pipeline import Stage
from ..records import write_ref_record
from ..refs import looks_like_id, parse_ref
from ..repo import ImageRecord

SUMMARY = "export images from the engine into a repository, storing only what it lacks"


def add_arguments(p):
    p.add_argument("repo", metavar="REPO", help="repository: config alias, path or URL")
    p.add_argument("images", metavar="IMAGE", nargs="*", help="name[:tag] or image id in the engine")
    p.add_argument("--input", metavar="FILE", help="read a `docker save` tar from FILE (- for stdin) instead of the engine")
    p.add_argument("-z", dest="nul", action="store_true", help="terminate output records with NUL")


class _Stored:
    def __init__(self, desc):
        self.desc = desc
        self.diff_id = desc.diff_id


class Counts:
    """What a save moved and what it skipped, for the closing summary."""

    def __init__(self):
        self.stored = self.stored_bytes = self.skipped = self.skipped_bytes = 0

    def summary(self):
        from ..progress import human

        return (f"stored {self.stored} layer(s) ({human(self.stored_bytes)}), "
                f"skipped {self.skipped} ({human(self.skipped_bytes)})")


class _Hashed:
    """A layer only hashed, on the bet that the repository has it (see store_save_stream)."""

    def __init__(self, diff_id, path):
        self.diff_id, self.path = diff_id, path


def _hash_only(chunks):
    """sha256 of the chunks, hashed in a thread while this one reads the next."""
    digest = hashlib.sha256()
    hasher = Stage(digest.update, name="dogestry-hash")
    try:
        for chunk in chunks:
            hasher.put(chunk)
    except BaseException:
        hasher.abandon()
        raise
    hasher.close()
    return "sha256:" + digest.hexdigest()


def store_save_stream(ctx, repo, stream, counts=None, likely_present=None, only_paths=None):
    """Read a save stream into repo; return [SavedImage].

    Docker <= 24 names layer files by v1 ids, so a layer's diffID is known only after
    reading it. likely_present holds the tar sizes of layers the repository already has:
    an entry of such a size is only hashed, not compressed and spooled. When the bet is
    lost the result is a _Hashed the caller must fetch again (save_images does).
    With only_paths, entries at other paths are only hashed (that second, targeted pass).
    """
    counts = counts or Counts()
    likely_present = likely_present or set()

    def store_layer(chunks, expect, path, size):
        if only_paths is not None and path not in only_paths:
            return _Hashed(_hash_only(chunks), path)
        if expect is None and size in likely_present and only_paths is None:
            diff_id = _hash_only(chunks)
            if repo.has_layer(diff_id):
                desc = repo.layer_descriptor(diff_id)
                counts.skipped += 1
                counts.skipped_bytes += desc.uncompressed_size
                ctx.detail(f"skipped layer {diff_id}: {repo.location} has it")
                return _Stored(desc)
            ctx.detail(f"layer {diff_id} is new though its size matched a known one; it will be read again")
            return _Hashed(diff_id, path)
        desc, new = repo.store_layer(chunks, expect)
        if new:
            counts.stored += 1
            counts.stored_bytes += desc.uncompressed_size
            ctx.detail(f"stored layer {desc.diff_id} ({desc.uncompressed_size} bytes, {desc.codec} {desc.size})")
        else:
            counts.skipped += 1
            counts.skipped_bytes += desc.uncompressed_size
            ctx.detail(f"skipped layer {desc.diff_id}: {repo.location} has it")
        return _Stored(desc)

    def have_layer(diff_id):
        if repo.has_layer(diff_id):
            counts.skipped += 1
            counts.skipped_bytes += repo.layer_descriptor(diff_id).uncompressed_size
            ctx.detail(f"skipped layer {diff_id}: {repo.location} has it")
            return True
        return False

    try:
        return scan_save_stream(stream, store_layer, have_layer, ctx.progress)
    except NotATar as err:
        raise DogestryError(f"cannot read the image export: {err}") from None
    finally:
        if ctx.progress is not None:
            ctx.progress.clear()


def missed_paths(images):
    return {r.path: r.diff_id for image in images for r in image.layer_results if isinstance(r, _Hashed)}


def publish_images(ctx, repo, images):
    """Configs and image records, once every layer is stored."""
    for image in images:
        layers = []
        for result in image.layer_results:
            layers.append(result.desc if isinstance(result, _Stored) else repo.layer_descriptor(result.diff_id))
        repo.put_config(image.config)
        if repo.put_image(ImageRecord(image.id, len(image.config), layers)):
            ctx.detail(f"stored image {image.id}")


def _match(images, wanted, found):
    """Find the saved image a requested argument names."""
    image_id, ref = wanted
    for image in images:
        if ref is not None and str(ref) in image.repo_tags:
            return image
    for image in images:
        if image.id == found["Id"]:
            return image
    # The containerd store names images by manifest digest: match on the layer chain.
    layers = (found.get("RootFS") or {}).get("Layers") or []
    for image in images:
        if image.diff_ids == layers:
            return image
    raise DogestryError(f"the engine's export does not contain {ref or image_id}")


def save_images(ctx, repo, names, counts=None):
    """Export `names` from the engine into repo; return [(image_id, Ref or None)]."""
    requested = []
    for name in names:
        ref = None if looks_like_id(name) and not _is_ref_in_engine(ctx, name) else parse_ref(name)
        found = ctx.engine.require(str(ref) if ref else name)
        requested.append(((found["Id"], ref), found))
    save_names = list(dict.fromkeys(str(ref) if ref else found["Id"] for (_, ref), found in requested))
    if ctx.progress is not None:
        ctx.progress.set_total(sum(found.get("Size") or 0 for _, found in requested))
    likely_present = _sizes_of_present_layers(repo, [found for _, found in requested])
    stream = ctx.engine.save(save_names)
    try:
        images = store_save_stream(ctx, repo, stream, counts, likely_present)
    finally:
        stream.close()
    missed = missed_paths(images)
    if missed:
        # A size matched but the content was new: export once more and store just those
        # entries (v1 layer paths are deterministic, so they name the same layers).
        stream = ctx.engine.save(save_names)
        try:
            again = store_save_stream(ctx, repo, stream, counts, only_paths=set(missed))
        finally:
            stream.close()
        for image, retried in zip(images, again):
            if image.id != retried.id:
                raise DogestryError("the engine's second export differs from the first; retry the push")
            image.layer_results = [r2 if isinstance(r1, _Hashed) else r1
                                   for r1, r2 in zip(image.layer_results, retried.layer_results)]
        if missed_paths(images):
            raise DogestryError("the engine's second export lacks layers of the first; retry the push")
    publish_images(ctx, repo, images)
    return [(_match(images, wanted, found).id, wanted[1]) for wanted, found in requested]


def _sizes_of_present_layers(repo, found_images):
    """Tar sizes of the layers of these engine images that the repository already holds.

    Only layers of 1 MiB and more: tiny layers are cheap to store and collide in size often.
    """
    sizes = set()
    for found in found_images:
        for diff_id in (found.get("RootFS") or {}).get("Layers") or []:
            if repo.has_layer(diff_id):
                size = repo.layer_descriptor(diff_id).uncompressed_size
                if size >= 1 << 20:
                    sizes.add(size)
    return sizes


def _is_ref_in_engine(ctx, name):
    """A bare hex word is a name if the engine has an image by that name (docker's rule)."""
    if name.startswith("sha256:"):
        return False
    try:
        ref = parse_ref(name)
    except UsageError:
        return False
    found = ctx.engine.inspect(str(ref))
    return found is not None and any(t == str(ref) for t in found.get("RepoTags") or [])


def run(ctx, args):
    repo = ctx.repo(args.repo)
    ctx.start_progress("save")
    if args.input:
        if args.images:
            raise UsageError("give either --input or IMAGE arguments, not both")
        if args.input == "-":
            stream = sys.stdin.buffer
        else:
            try:
                stream = open(args.input, "rb")
            except OSError as err:
                raise UsageError(f"cannot open {args.input}: {err.strerror}") from None
        with stream:
            images = store_save_stream(ctx, repo, stream)
        publish_images(ctx, repo, images)
        results = []
        for image in images:
            refs = [parse_ref(t) for t in image.repo_tags] or [None]
            results.extend((image.id, ref) for ref in refs)
    else:
        if not args.images:
            raise UsageError("name at least one IMAGE, or use --input")
        results = save_images(ctx, repo, args.images)
    for image_id, ref in results:
        write_ref_record(ctx.out, image_id, ref, args.nul)
    return 0
