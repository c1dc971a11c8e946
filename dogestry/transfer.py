"""What moves and why: push and pull, planned and carried out over repo, engine and dockertar.

Every porcelain and plumbing command that moves images calls these functions; commands
only parse arguments and records. `ctx` is a context.Context: the engine, the progress
line and the -v reporting (ctx.detail).

Push (save_images, then set_refs):
  an image the remote holds whole -> no `docker save` at all;
  otherwise one save stream, each layer stored unless the remote has it (Docker 25+ names
  blobs by diffID: skipped unread; Docker <= 24: only hashed when its size matches a layer
  the remote has, and saved once more if the bet was lost), then configs, image records,
  and last the refs.
Pull (plan_load, then load):
  an image the engine has -> only tagged; otherwise a load tar with the layers above the
  highest chain the engine already has (every layer on the containerd store, which cannot
  take a partial image), verified as they stream.
"""

import hashlib
import json

from .digests import chain_ids, of_hash
from .dockertar import NotATar, load_tar_chunks, read_save_stream
from .errors import CorruptObject, DogestryError, NotFound, UsageError
from .image import Image, parse_json
from .operations import before_refs, lease, pending_lease
from .pipeline import Stage
# The containerd store's part of push and pull lives in pullthrough.py.
from .pullthrough import (aliased_engine_copy, aliased_remote_copy, export_checked, pull_through_server,
                          record_aliases, refuse_layerless, resolve_engine_id, same_config)
from .refs import looks_like_id, parse_ref

MIN_SIZE_BET = 1 << 20  # only layers this big are worth hashing on the bet that the remote has them


class Counts:
    """What a push moved and what it skipped, for the closing summary."""

    def __init__(self):
        self.stored = self.stored_bytes = self.skipped = self.skipped_bytes = 0

    def store(self, desc):
        self.stored += 1
        self.stored_bytes += desc.uncompressed_size

    def skip(self, size):
        self.skipped += 1
        self.skipped_bytes += size

    def summary(self):
        from .progress import human

        return (f"stored {self.stored} layer(s) ({human(self.stored_bytes)}), "
                f"skipped {self.skipped} ({human(self.skipped_bytes)})")


class LayerResult:
    """One layer of a save stream: its descriptor once stored or found in the repository;
    desc None when it was only hashed on a lost bet and must be read again (path says where)."""

    __slots__ = ("diff_id", "desc", "path")

    def __init__(self, diff_id, desc=None, path=None):
        self.diff_id, self.desc, self.path = diff_id, desc, path


# -- push ---------------------------------------------------------------------------

def engine_request(engine, name):
    """(EngineImage, Ref or None) for a push argument. A bare hex word is a name when the
    engine has an image tagged so (docker's rule), else an image id."""
    ref = None
    if not (looks_like_id(name) and not _tagged_in_engine(engine, name)):
        ref = parse_ref(name)
    return engine.require(str(ref) if ref else name), ref


def _tagged_in_engine(engine, name):
    if name.startswith("sha256:"):
        return False
    try:
        ref = parse_ref(name)
    except UsageError:
        return False
    found = engine.inspect(str(ref))
    return found is not None and str(ref) in found.repo_tags


def remote_copy(repo, found, ref):
    """The remote's id for the engine image `found` if the remote holds it whole, else None.

    Candidates: the engine id itself (a graphdriver engine's id is the config digest) and
    what the ref and the engine image's tags point at in the remote (the containerd store
    names images by manifest digest; an image that came from dogestry has our manifest).
    """
    aliased = aliased_remote_copy(repo, found)
    if aliased:
        return aliased
    candidates = [found.id]
    names = [str(ref)] if ref is not None else []
    names += [t for t in found.repo_tags if t not in names]
    for name in names:
        try:
            target = repo.find_ref(parse_ref(name))
        except UsageError:
            target = None
        if target:
            candidates.append(target)
    for image_id in dict.fromkeys(candidates):
        if not repo.has_image(image_id):
            continue
        image = repo.get_image(image_id)
        if found.is_image(image) and not repo.missing_objects(image):
            return image_id
    return None


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
    return of_hash(digest)


class _RepoSink:
    """Where read_save_stream puts layers: the repository, skipping what it has.

    Docker <= 24 names layer files by v1 ids, so a layer's diffID is known only after
    reading it. likely_present holds the tar sizes of layers the repository already has:
    an entry of such a size is only hashed, not compressed and spooled; when the bet is
    lost the result has no descriptor and the caller saves again. With only_paths,
    entries at other paths are only hashed (that second, targeted pass). With wanted (a
    set of diffIDs), a layer not in it is read but not stored: Docker 26's containerd
    store exports every platform of an index, and only the pushed images' layers belong
    in the repository (one the manifest does name after all is stored by the second pass).
    """

    def __init__(self, ctx, repo, counts, likely_present=(), only_paths=None, wanted=None):
        self.ctx, self.repo, self.counts = ctx, repo, counts
        self.likely_present, self.only_paths, self.wanted = likely_present, only_paths, wanted

    def _unwanted(self, diff_id, path):
        self.ctx.detail(f"not stored: layer {diff_id} of the export belongs to no image being pushed "
                        "(another platform of an index)")
        return LayerResult(diff_id, path=path)

    def _skipped(self, desc):
        self.counts.skip(desc.uncompressed_size)
        self.ctx.detail(f"skipped layer {desc.diff_id}: {self.repo.location} has it")
        return LayerResult(desc.diff_id, desc)

    def known(self, diff_id, size):
        desc = self.repo.present_layer(diff_id)
        return self._skipped(desc) if desc is not None else None

    def store(self, chunks, expect, path, size):
        if self.only_paths is not None and path not in self.only_paths:
            return LayerResult(_hash_only(chunks), path=path)
        if expect is not None and self.wanted is not None and expect not in self.wanted:
            for _ in chunks:  # named by its diffID: nothing to learn from its bytes
                pass
            return self._unwanted(expect, path)
        if expect is None and size in self.likely_present and self.only_paths is None:
            diff_id = _hash_only(chunks)
            desc = self.repo.present_layer(diff_id)
            if desc is not None:
                return self._skipped(desc)
            self.ctx.detail(f"layer {diff_id} is new though its size matched a known one; it will be read again")
            return LayerResult(diff_id, path=path)
        desc, new = self.repo.store_layer(chunks, expect, self.wanted)
        if new is None:
            return self._unwanted(desc.diff_id, path)
        if not new:
            return self._skipped(desc)
        self.counts.store(desc)
        self.ctx.detail(f"stored layer {desc.diff_id} ({desc.uncompressed_size} bytes, {desc.codec} {desc.size})")
        return LayerResult(desc.diff_id, desc)


def store_save_stream(ctx, repo, stream, counts=None, likely_present=(), only_paths=None, wanted=None):
    """Read a `docker save` stream into repo (layers only); return [dockertar.SavedImage]."""
    sink = _RepoSink(ctx, repo, counts or Counts(), likely_present, only_paths, wanted)
    try:
        return read_save_stream(stream, sink, ctx.progress)
    except NotATar as err:
        raise DogestryError(f"cannot read the image export: {err}") from None
    finally:
        if ctx.progress is not None:
            ctx.progress.clear()


def _unread(saved):
    return {r.path for image in saved for r in image.layer_results if r.desc is None}


def publish_images(ctx, repo, saved):
    """Configs, then image records, once every layer is stored; return [Image] with the
    tags the export gave them. Every tag is checked before anything is published."""
    images = [Image.from_config(item.config, [r.desc for r in item.layer_results],
                                tags=[parse_ref(t) for t in item.repo_tags]) for item in saved]
    for image in images:
        repo.put_config(image.config)
        if repo.put_image(image):
            ctx.detail(f"stored image {image.id}")
    return images


def _sizes_of_present_layers(repo, found_images):
    """Tar sizes of the layers of these engine images that the repository already holds."""
    sizes = set()
    for found in found_images:
        for diff_id in found.diff_ids:
            desc = repo.present_layer(diff_id)
            if desc is not None and desc.uncompressed_size >= MIN_SIZE_BET:
                sizes.add(desc.uncompressed_size)
    return sizes


def _export(ctx, repo, save_names, found_images, counts):
    """One `docker save` of save_names into repo (twice if a size bet was lost)."""
    likely_present = _sizes_of_present_layers(repo, found_images)
    size = sum(found.size for found in found_images)
    containerd = ctx.engine.uses_containerd_store()
    platform = found_images[0].platform if containerd else None  # one: _platform_groups
    # Docker 26 exports every platform of an index: keep only the layers of these images.
    wanted = {diff_id for found in found_images for diff_id in found.diff_ids} if containerd else None

    def save():
        return ctx.engine.save(save_names, size, platform=platform)

    stream = save()
    try:
        saved = store_save_stream(ctx, repo, stream, counts, likely_present, wanted=wanted)
    finally:
        stream.close()
    missed = _unread(saved)
    if missed:
        # A size matched but the content was new: export once more and store just those
        # entries (v1 layer paths are deterministic, so they name the same layers).
        stream = save()
        try:
            again = store_save_stream(ctx, repo, stream, counts, only_paths=missed)
        finally:
            stream.close()
        for image, retried in zip(saved, again):
            if image.id != retried.id:
                raise DogestryError("the engine's second export differs from the first; retry the push")
            image.layer_results = [r2 if r1.desc is None else r1
                                   for r1, r2 in zip(image.layer_results, retried.layer_results)]
        if _unread(saved):
            raise DogestryError("the engine's second export lacks layers of the first; retry the push")
    return publish_images(ctx, repo, saved)


def _platform_groups(engine, wanted):
    """[(EngineImage, Ref)] split into one save each per platform on the containerd store,
    which Docker 28+ is asked for (engine.save): an index of which the store holds only
    another platform than the host's (`docker pull --platform`) exports only so, and no
    other platform's layers are read and stored. Elsewhere one save of all."""
    if not engine.uses_containerd_store():
        return [wanted]
    groups = {}
    for item in wanted:
        groups.setdefault(json.dumps(item[0].platform, sort_keys=True), []).append(item)
    return list(groups.values())


def _match(images, found, ref, engine=None):
    """The exported image a request names: by tag, by id, then (containerd store, which
    names images by manifest digest) by its layer chain."""
    for image in images:
        if ref is not None and ref in image.tags:
            return image
    for image in images:
        if found.is_image(image):
            return image
    same_layers = [image for image in images if image.diff_ids == found.diff_ids]
    if same_layers:
        return same_config(engine, found, same_layers)
    raise DogestryError(f"the engine's export does not contain {ref or found.id}")


def save_images(ctx, repo, names, counts=None):
    """Store the images `names` of the engine in repo, refs aside; return [(image_id, Ref or None)].

    An image the repository already holds whole costs no `docker save`. Results keep the
    order the images were named in.
    """
    counts = counts if counts is not None else Counts()
    requests = [engine_request(ctx.engine, name) for name in names]
    for name, (found, _) in zip(names, requests):
        refuse_layerless(found, name)
    results, to_save = [None] * len(requests), []
    for index, (found, ref) in enumerate(requests):
        image_id = remote_copy(repo, found, ref)
        if image_id:
            ctx.detail(f"skipped {ref or found.id}: {repo.location} already has image {image_id}")
            for layer in repo.get_image(image_id).layers:
                counts.skip(layer.uncompressed_size)
            results[index] = (image_id, ref)
        else:
            to_save.append(index)
    if to_save:
        wanted = [requests[i] for i in to_save]
        if ctx.progress is not None:
            ctx.progress.set_total(sum(found.size for found, _ in wanted))
        with lease(repo):  # before the first object: a gc beside us keeps what we write (operations.py)
            images = []
            for group in _platform_groups(ctx.engine, wanted):
                save_names = list(dict.fromkeys(str(ref) if ref else found.id for found, ref in group))
                images += export_checked(ctx, save_names, lambda: _export(ctx, repo, save_names,
                                                                          [found for found, _ in group], counts))
            matched = [_match(images, found, ref, ctx.engine) for found, ref in wanted]
            for index, (found, ref), image in zip(to_save, wanted, matched):
                results[index] = (image.id, ref)
            record_aliases(ctx, repo, [found for found, _ in wanted], matched)
    return results


def set_refs(ctx, repo, results):
    """Write the refs of [(image_id, Ref or None)]; an unchanged ref costs no write."""
    for image_id, ref in results:
        if ref is not None and repo.find_ref(ref) != image_id:
            repo.set_ref(ref, image_id)
            ctx.detail(f"{ref} -> {image_id}")


def push(ctx, repo, names, counts=None):
    """save_images, then set_refs: what `save-to-repo | update-ref --stdin` does.

    Before any ref is written every object of the images is checked once more: a gc beside
    us may have removed one we found present and reused (our lease covers only what we
    wrote); such an image is stored again. The lease is held until the refs are written
    (operations.before_refs has the protocol)."""
    with pending_lease(repo) as held:  # one lease, from the first object until the refs are written
        results = save_images(ctx, repo, names, counts)
        for attempt in range(3):
            gone = before_refs(ctx, repo, held, results)  # names the images in the lease, lets a gc end
            if not gone:
                break
            if attempt == 2:
                raise DogestryError(f"objects of image {gone[0]} keep vanishing from {repo.location} (a gc?); "
                                    "push again")
            ctx.detail(f"objects of image {gone[0]} vanished from {repo.location} during the push; storing it again")
            results = save_images(ctx, repo, names, counts)
        set_refs(ctx, repo, results)
    return results


# -- pull ---------------------------------------------------------------------------

def resolve(repo, texts, ctx=None):
    """[(image_id, Ref or None)] for each text, in order; NotFound/ambiguity raise. An id
    the repository does not know may be an engine id it has an alias for."""
    return [resolve_engine_id(ctx, repo, text) for text in texts]


def engine_copy(engine, image, repo=None):
    """The engine's id for image if it has it whole (config digest on a graphdriver engine;
    on the containerd store the digest of the manifest dogestry loads it with, and an image
    that store hides is not whole), else None."""
    for candidate in (image.id, image.manifest_digest):
        found = engine.inspect(candidate)
        if found is not None:
            if found.diff_ids != image.diff_ids or (engine.uses_containerd_store()
                                                     and not engine.lists(found.id)):
                # The containerd store lacks the content of a layer whose snapshot it had
                # when the image was pulled (a plain `docker pull`, moby/moby#49473): Docker
                # 26 hides it from listings, Docker 28 lists it with an empty inspect. It
                # runs but cannot be saved, so it is no copy to tag: the pull completes it.
                return None
            return found.id
    return aliased_engine_copy(engine, repo, image) if repo is not None else None


def missing_layers(engine, image, chains=None):
    """The layers of image above the highest chain the engine already has, base first.

    The containerd image store cannot take a load tar that leaves out a layer: it records
    an image whose content is incomplete (hidden from `docker images`; a later save exports
    no layers). It keeps layers under their compressed digests, which the API does not
    reveal, so for that store every layer counts as missing.
    """
    if engine.uses_containerd_store():
        return list(image.layers)
    if chains is None:
        chains = engine.layer_chains()
    chain = chain_ids(image.diff_ids)
    for i in range(len(chain) - 1, -1, -1):
        if chain[i] in chains:
            return image.layers[i + 1:]
    return list(image.layers)


def walk(repo, image_id, engine=None):
    """Object records for image_id, top layer first; engine given -> only what it lacks."""
    image = repo.get_image(image_id)
    if engine is not None and engine_copy(engine, image, repo):
        return []
    wanted = {layer.diff_id for layer in (missing_layers(engine, image) if engine is not None else image.layers)}
    chains = chain_ids(image.diff_ids)
    out = [("image", image.id), ("config", image.id)]
    for position in range(len(image.layers), 0, -1):
        layer = image.layers[position - 1]
        if layer.diff_id in wanted:
            out.append(("layer", layer.diff_id, position, chains[position - 1]))
    return out


class LoadPlan:
    """What a load sends: images (with config and tags), the diffIDs whose bytes go into
    the tar, and [(engine id, [Ref])] for images the engine has, which are only tagged."""

    def __init__(self):
        self.images, self.include, self.to_tag = [], set(), []

    def skipped_layers(self):
        seen = {}
        for image in self.images:
            for layer in image.layers:
                if layer.diff_id not in self.include:
                    seen[layer.diff_id] = layer
        return list(seen.values())

    def bytes_to_send(self):
        sent = {}
        for image in self.images:
            for layer in image.layers:
                if layer.diff_id in self.include:
                    sent[layer.diff_id] = layer.uncompressed_size
        return sum(sent.values())


def merge_requests(items):
    """[(image_id, [Ref])] -> {image_id: [Ref]} in first-seen order, tags deduplicated."""
    merged = {}
    for image_id, tags in items:
        merged.setdefault(image_id, [])
        merged[image_id] += [t for t in tags if t not in merged[image_id]]
    return merged


def _config_os(config):
    """The operating system an image's config names, or None (absent, or not JSON we read)."""
    try:
        found = parse_json(config, "the config", "JSON")
    except CorruptObject:
        return None
    os_name = found.get("os") if isinstance(found, dict) else None
    return os_name if isinstance(os_name, str) and os_name else None


def _refuse_another_os(engine, image, tags):
    """An image for another operating system, refused before anything is sent. Engines
    differ: Docker 20.10 refuses a windows image and crashes its handler on plan9 (the
    connection closes unanswered), and the containerd store takes either silently, an
    image no container can run from. The engine is asked only for such a rare image."""
    os_name = _config_os(image.config)
    if os_name in (None, "linux"):
        return
    engine_os = engine.info().get("OSType")
    if isinstance(engine_os, str) and engine_os and engine_os != os_name:
        label = str(tags[0]) if tags else image.id
        raise DogestryError(f"image {label} is for {os_name[:40]!r}, and the Docker engine at {engine.host} "
                            f"runs {engine_os[:40]!r} images: it cannot load it")


def plan_load(ctx, repo, items, missing_in_docker=True):
    """Decide what to send for [(image_id, [Ref])]; with missing_in_docker only what the
    engine lacks (asking ctx.engine), else everything."""
    engine = ctx.engine if missing_in_docker else None
    chains = None
    plan = LoadPlan()
    for image_id, tags in merge_requests(items).items():
        image = repo.load_image(image_id, tags)
        if engine is not None:
            present = engine_copy(engine, image, repo)
            if present:
                ctx.detail(f"skipped image {image_id}: the engine has it")
                plan.to_tag.append((present, tags))
                continue
            _refuse_another_os(engine, image, tags)
            if chains is None and not engine.uses_containerd_store():
                chains = engine.layer_chains()  # only once an image is missing: costs a listing
            wanted = missing_layers(engine, image, chains)
            for layer in image.layers:
                if layer not in wanted:
                    ctx.detail(f"skipped layer {layer.diff_id}: the engine has it")
        else:
            wanted = image.layers
        plan.include.update(layer.diff_id for layer in wanted)
        plan.images.append(image)
    return plan


def _layer_source(ctx, repo, plan):
    """layer_chunks for load_tar_chunks: verified bytes, reported to -v and the progress line."""
    def verified(desc):
        yield from repo.layer_chunks(desc)
        ctx.detail(f"sent layer {desc.diff_id} ({desc.uncompressed_size} bytes, verified)")

    progress = ctx.progress
    if progress is None:
        return verified
    for layer in plan.skipped_layers():
        progress.skip(layer.diff_id, layer.uncompressed_size)
    for image_id, _ in plan.to_tag:
        progress.skip(image_id, 0)
    progress.set_total(plan.bytes_to_send())
    return lambda desc: progress.track(verified(desc), desc.diff_id, desc.uncompressed_size)


def tar_chunks(ctx, repo, plan):
    """The load tar of a plan, as chunks."""
    return load_tar_chunks(plan.images, _layer_source(ctx, repo, plan), plan.include)


def load(ctx, repo, plan):
    """Carry out a plan: stream its tar into the engine, then tag what it already had."""
    if plan.images:
        try:
            ctx.engine.load(tar_chunks(ctx, repo, plan))
        finally:
            if ctx.progress is not None:
                ctx.progress.clear()
        if ctx.engine.uses_containerd_store():
            # That store names an image by its manifest: the image id printed on stdout is
            # unknown to `docker run`; an image with no tag is reachable only so.
            for image in plan.images:
                if not image.tags:
                    ctx.info(f"image {image.id} is {image.manifest_digest} in the engine at {ctx.engine.host}")
    for engine_id, tags in plan.to_tag:
        for tag in tags:
            ctx.engine.tag(engine_id, tag)


def write_tar(ctx, repo, plan, out):
    try:
        for chunk in tar_chunks(ctx, repo, plan):
            out.write(chunk)
    finally:
        if ctx.progress is not None:
            ctx.progress.clear()
    out.flush()


def pull(ctx, repo, names):
    """resolve, plan_load, load: what `resolve-ref | build-load-tar --stdin --missing-in-docker
    --load` does. Returns ([(image_id, Ref or None)], the plan)."""
    resolved = resolve(repo, names, ctx)
    plan = plan_load(ctx, repo, [(image_id, [ref] if ref else []) for image_id, ref in resolved])
    if not pull_through_server(ctx, repo, plan):
        load(ctx, repo, plan)
    return resolved, plan


# -- copying between repositories ---------------------------------------------------

def closure(repo, image_id):
    """The objects [(kind, digest)] image_id needs, in publish order."""
    image = repo.get_image(image_id)
    return [("layer", d) for d in image.diff_ids] + [("config", image.id), ("image", image.id)]


def sync(ctx, src, dst, objects, parallel=4):
    """Copy objects [(kind, digest)] from src to dst in publish order; return those copied."""
    from concurrent.futures import ThreadPoolExecutor

    wanted = list(dict.fromkeys(objects))
    copied = []

    def copy_layer(diff_id):
        if dst.present_layer(diff_id) is not None:
            ctx.detail(f"skipped layer {diff_id}: {dst.location} has it")
            return None
        desc = src.layer_descriptor(diff_id)
        dst.put_stored_layer(desc, src.stored_chunks(desc))
        ctx.detail(f"copied layer {diff_id} ({desc.size} bytes, verified)")
        return ("layer", diff_id)

    with ThreadPoolExecutor(parallel) as pool:
        copied += [r for r in pool.map(copy_layer, [d for k, d in wanted if k == "layer"]) if r]
    for kind, digest in wanted:
        if kind == "config" and not dst.has_config(digest):
            dst.put_config(src.get_config(digest))
            copied.append(("config", digest))
    for kind, digest in wanted:
        if kind == "image" and not dst.has_image(digest):
            dst.put_image(src.get_image(digest))
            copied.append(("image", digest))
    return copied


__all__ = ["Counts", "save_images", "set_refs", "push", "resolve", "plan_load", "load", "write_tar", "pull",
           "walk", "closure", "sync", "engine_copy", "missing_layers", "remote_copy", "NotFound"]
