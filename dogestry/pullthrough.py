"""The containerd image store: pulls through a loopback registry, and engine-id aliases.

That store cannot take a load tar that leaves out a layer, so `docker load` re-sends
every layer of an image it lacks. A registry pull does better: containerd's unpacker
skips fetching a layer whose snapshot (chain id) it already has. So a pull into that
store serves the planned images from a loopback registry (serve.Server) and has the
engine pull them; only the layers it lacks are read from the remote.

The store also names images by manifest digest, so an image built there has an id
dogestry never sees: a push records it as an alias of the image id (repo.put_alias), and
pull, push and resolve consult those aliases. transfer.py calls in here and re-exports
these names; nothing here imports transfer.
"""

import re
import threading

from .digests import from_hex, hex_of
from .dockertar import load_tar_chunks
from .errors import CorruptObject, DogestryError, NotFound
from .refs import looks_like_id, normalize_id

PULL_NAME = "dogestry-pull"  # + a random suffix: the temporary name an image is pulled under
# What a pull names an image while the engine pulls it: 127.0.0.1:PORT/dogestry-pull-HEX:ID.
TEMPORARY_NAMES = f"127.0.0.1:*/{PULL_NAME}-*"  # every such name, as `docker images` matches it
_TEMPORARY_RE = re.compile(r"127\.0\.0\.1:(?P<port>[0-9]{1,5})/" + PULL_NAME + r"-[0-9a-f]{12}:[0-9a-f]{64}")


class _PullView:
    """The repository as one pull's server shows it: only the planned images, each under
    a temporary ref, and every layer read counted (and drawn on the progress line)."""

    def __init__(self, ctx, repo, images, name):
        from .refs import Ref

        self._ctx, self._repo = ctx, repo
        self.location = repo.location
        self.refs = {Ref(name, hex_of(image.id)): image.id for image in images}
        self._ids = set(self.refs.values())
        self.served = []  # diffIDs whose bytes went out, in order
        self.requests = 0

    def check_format(self):
        self._repo.check_format()

    def format_version(self):
        return self._repo.format_version()

    def list_refs(self, pattern=None):
        import fnmatch

        self.requests += 1
        return sorted(((image_id, ref) for ref, image_id in self.refs.items()
                       if pattern is None or ref.name == pattern or fnmatch.fnmatchcase(str(ref), pattern)),
                      key=lambda item: str(item[1]))

    def get_ref(self, ref):
        if ref not in self.refs:
            raise NotFound(f"{ref} not found in {self.location}")
        return self.refs[ref]

    def image_ids(self):
        return iter(sorted(self._ids))

    def has_image(self, image_id):
        return image_id in self._ids

    def _planned(self, image_id):
        if image_id not in self._ids:
            raise NotFound(f"image {image_id} not found in {self.location}")
        return image_id

    def get_image(self, image_id):
        return self._repo.get_image(self._planned(image_id))

    def get_config(self, image_id):
        return self._repo.get_config(self._planned(image_id))

    def layer_chunks(self, desc):
        self.served.append(desc.diff_id)
        chunks = self._repo.layer_chunks(desc)
        progress = self._ctx.progress
        if progress is not None:
            chunks = progress.track(chunks, desc.diff_id, desc.uncompressed_size)
        return _Reported(self._ctx, desc, chunks)


class _Reported:
    """Layer chunks that say `sent layer ...` once every byte went out (the source holds
    back its last chunk until the layer verifies); close() reaches the source, which the
    server closes when a client goes away."""

    def __init__(self, ctx, desc, chunks):
        self._ctx, self._desc, self._chunks = ctx, desc, chunks
        self._sent = 0

    def __iter__(self):
        return self

    def __next__(self):
        chunk = next(self._chunks)
        self._sent += len(chunk)
        if self._sent == self._desc.uncompressed_size:
            self._ctx.detail(f"sent layer {self._desc.diff_id} ({self._sent} bytes, verified)")
        return chunk

    def close(self):
        close = getattr(self._chunks, "close", None)
        if close:
            close()


def pull_through_server(ctx, repo, plan):
    """Carry out plan on the containerd store through a loopback registry; return False
    (nothing done) where that does not apply: another engine, one not on this host's
    loopback (it could not reach the server), or nothing to load. Tags as load() does."""
    engine = ctx.engine
    if not plan.images or not engine.uses_containerd_store():
        return False
    if not engine.is_local():
        ctx.detail(f"the engine at {engine.host} is not on this host: it cannot reach a loopback server, "
                   "so every layer goes through docker load")
        return False
    if any(not image.tags for image in plan.images):
        # The store drops an image whose last name is removed, and the temporary name must
        # go: an image pulled by id alone is loaded, as `docker load` keeps it nameless.
        ctx.detail("an image is pulled by id without a tag: every layer goes through docker load")
        return False
    if any(layer.uncompressed_size == 0 for image in plan.images for layer in image.layers):
        # A zero-byte layer is a valid empty diff (graphdriver engines export one as is), but
        # containerd refuses to fetch a descriptor of size zero ("reports content size of
        # zero"); its `docker load` takes one.
        ctx.detail("an image has a zero-byte layer, which containerd will not fetch from a registry: every layer "
                   "goes through docker load")
        return False
    import secrets

    from .serve import Server

    name = f"{PULL_NAME}-{secrets.token_hex(6)}"
    view = _PullView(ctx, repo, plan.images, name)
    warnings = []
    server = Server(view, ("127.0.0.1", 0), log=lambda line: None, warn=warnings.append)
    port = server.start()
    temporary = []
    pulled_ids = []  # (engine id, tags) of each image pulled so far
    listed = None  # the engine's temporary names, once listed
    progress = ctx.progress
    if progress is not None:
        progress.set_total(sum(layer.uncompressed_size for layer in _distinct_layers(plan.images)))
    try:
        for image in plan.images:
            ref = next(r for r, image_id in view.refs.items() if image_id == image.id)
            pulled = f"127.0.0.1:{port}/{ref}"
            try:
                engine.pull(f"127.0.0.1:{port}/{ref.name}", ref.tag)
            except DogestryError as err:
                if view.requests == 0 and not warnings:
                    # The engine never reached us (a rootless or remote daemon behind a
                    # unix socket): its loopback is not ours. Load the plain way.
                    ctx.detail(f"the engine could not reach {pulled[:-len(ref.tag) - 1]} ({err}); "
                               "every layer goes through docker load")
                    return False
                raise DogestryError(f"pulling image {image.id} through a loopback registry: "
                                    f"{next((w for w in warnings if 'corrupt' in w), warnings[-1]) if warnings else err}") from None
            temporary.append(pulled)
            found = engine.inspect(pulled)
            completed = False
            if found is not None and not found.diff_ids and image.diff_ids:
                view.served += complete_pulled(ctx, repo, image, set(view.served))
                found, completed = engine.inspect(pulled), True
            if found is None or found.diff_ids != image.diff_ids:
                raise DogestryError(f"the engine pulled image {image.id} from the loopback registry with other "
                                    "layers than the repository records")
            # An image hides from `docker images` only when the unpacker skipped a layer's
            # content; with every layer sent there is nothing to ask (a round trip saved).
            # One listing of every temporary name serves this and the sweep below.
            if not completed and not set(image.diff_ids) <= set(view.served):
                listed = engine.names_matching(TEMPORARY_NAMES)
                if pulled not in listed:
                    view.served += complete_pulled(ctx, repo, image, set(view.served))
            pulled_ids.append((found.id, image.tags))
        # Names only once every image is in: a pull that fails on a later image leaves the
        # engine's names as they were (the temporary names go below, and with them what
        # only they held), as a load tar aborted mid-stream loads nothing.
        for engine_id, tags in pulled_ids:
            for tag in tags:
                engine.tag(engine_id, tag)
    finally:
        sweeper = None
        if view.requests:
            # The engine reached this process's loopback, so a live pull's port answers on
            # ours: names that killed pulls left can be told apart, beside the rest.
            sweeper = threading.Thread(target=_remove_names_killed_pulls_left, args=(engine, port, listed),
                                       name="dogestry-sweep", daemon=True)
            sweeper.start()
        server.stop()
        for pulled in temporary:
            engine.remove_tag(pulled)
        if sweeper is not None:
            sweeper.join()
        if progress is not None:
            progress.clear()
    served = set(view.served)
    for layer in _distinct_layers(plan.images):
        if layer.diff_id in served:
            continue
        ctx.detail(f"skipped layer {layer.diff_id}: the engine has it")
        if progress is not None:
            progress.skip(layer.diff_id, layer.uncompressed_size)
    for image_id, _ in plan.to_tag:
        if progress is not None:
            progress.skip(image_id, 0)
    for engine_id, tags in plan.to_tag:
        for tag in tags:
            engine.tag(engine_id, tag)
    return True


def _remove_names_killed_pulls_left(engine, own_port, names=None):
    """Remove the temporary names of pulls killed between the engine's pull and the name's
    removal: 127.0.0.1:PORT/dogestry-pull-... whose PORT nobody listens on any more (a pull
    serves on its port until it has removed its names). names: the engine's temporary
    names if already listed. Best effort, and said nowhere: the names are harmless, and
    Docker 26 does not list an image whose content is incomplete, so such a name stays."""
    try:
        names = engine.names_matching(TEMPORARY_NAMES) if names is None else names
    except DogestryError:
        return
    for name in names:
        found = _TEMPORARY_RE.fullmatch(name)
        if found is None or int(found["port"]) == own_port or _listened_on(int(found["port"])):
            continue
        try:
            engine.remove_tag(name)
        except DogestryError:
            pass


def _listened_on(port):
    """False only when a connection to 127.0.0.1:port is refused: in doubt, a name stays."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except ConnectionRefusedError:
        return False
    except (OSError, OverflowError):
        return True


def complete_pulled(ctx, repo, image, served):
    """Give the engine the content of the layers it skipped while pulling image.

    The unpacker skips fetching a layer whose snapshot exists, but the image then lacks
    that layer's content unless another image has it under the same digest (one that
    came from dogestry does: its layers are named by diffID). Without it the image runs
    but is hidden from `docker images` and exports only its manifest (moby/moby#49473),
    so a later push could not read it. A load of just those layers completes it: the
    content of the layers just pulled is already there."""
    skipped = {layer.diff_id for layer in image.layers if layer.diff_id not in served}
    ctx.detail(f"the engine lacks the content of {len(skipped)} layer(s) of image {image.id} whose snapshots it "
               "had (built or pulled elsewhere, moby/moby#49473): sending them so the image is complete")
    def source(desc):
        chunks = _Reported(ctx, desc, repo.layer_chunks(desc))
        return ctx.progress.track(chunks, desc.diff_id, desc.uncompressed_size) if ctx.progress else chunks

    ctx.engine.load(load_tar_chunks([image], source, skipped))
    return skipped


def _distinct_layers(images):
    return list({layer.diff_id: layer for image in images for layer in image.layers}.values())


# -- engine aliases (the containerd store's own ids) ---------------------------------

def record_aliases(ctx, repo, found_images, images):
    """After an export: alias each engine id that is neither the image id nor dogestry's
    own manifest digest (the containerd store names an image built there by a manifest
    dogestry never sees) to the image id, so the id `docker images` shows resolves on
    pull and the unchanged image is never exported again."""
    for found, image in zip(found_images, images):
        if not found.is_image(image) and repo.put_alias(found.id, image.id):
            ctx.detail(f"engine image {found.id} is image {image.id}")


def aliased_remote_copy(repo, found):
    """The image the repository holds whole under an alias of found's engine id, or None.
    The alias is checked against the engine's layers, as a ref is checked by is_image."""
    image_id = repo.find_alias(found.id)
    if image_id is None or not repo.has_image(image_id):
        return None
    image = repo.get_image(image_id)
    if image.diff_ids != found.diff_ids or repo.missing_objects(image):
        return None
    return image_id


def aliased_engine_copy(engine, repo, image):
    """On the containerd store: the engine's id for an image it holds under another
    manifest (built there, then pushed: the repository keeps that alias), or None.

    Only engine ids the repository has an alias for, and the engine lists, are inspected:
    one listing of the aliases (nothing more when there are none) and one of the engine's
    images. Inspecting every engine image for these layers cost a round trip per image on
    every pull of an image the engine lacked (63 ms with 4 images; seconds with 1,000).
    The listing leaves out a build's intermediate images: Docker 28's containerd store took
    40 s to list the 105 a tall legacy build left, on every such pull, and an image held only
    as an intermediate is merely pulled again (its layers' snapshots are there)."""
    if not engine.uses_containerd_store():
        return None
    from .repo import ALIASES_PREFIX

    aliased = {from_hex(key[len(ALIASES_PREFIX):]) for key in repo.backend.list(ALIASES_PREFIX)} - {None}
    if not aliased:
        return None
    for engine_id in sorted(aliased.intersection(engine.image_ids(intermediate=False))):
        found = engine.inspect(engine_id)
        if found is not None and found.diff_ids == image.diff_ids and repo.find_alias(engine_id) == image.id:
            return engine_id
    return None


def resolve_engine_id(ctx, repo, text):
    """repo.resolve(text), else the image an engine id (or prefix) is an alias of."""
    try:
        return repo.resolve(text)
    except NotFound:
        if not looks_like_id(text):
            raise
        found = repo.resolve_alias(text) or _resolve_manifest_digest(repo, text)
        if found is None:
            raise
    engine_id, image_id = found
    if ctx is not None:
        ctx.info(f"engine id {engine_id} is image {image_id} in {repo.location}")
    return image_id, None


def _resolve_manifest_digest(repo, text):
    """(manifest digest, image id) for an image whose manifest digest text is or begins
    with, else None. An image dogestry pulled into the containerd store is named by the
    manifest dogestry made for it (Image.manifest_digest): that is the id `docker images`
    shows there, and users copy it to pull the image elsewhere. Every image record is read,
    so only once the cheaper lookups have failed."""
    prefix = normalize_id(text)
    matches = set()
    for image_id in repo.image_ids():
        try:
            digest = repo.get_image(image_id).manifest_digest
        except (NotFound, CorruptObject):
            continue  # gone since the listing, or damaged: not what was asked for
        if digest.startswith(prefix):
            matches.add((digest, image_id))
    if len(matches) > 1:
        raise DogestryError(f"image id prefix {text} is ambiguous in {repo.location}: "
                            f"{' '.join(sorted(d for d, _ in matches))}")
    return matches.pop() if matches else None


_CONFIG_FIELDS = ("Cmd", "Entrypoint", "Env", "Labels", "WorkingDir", "User", "ExposedPorts", "Volumes")


def same_config(engine, found, images):
    """Of exported images that share found's layers, the one with found's config.

    Several images can have the same layers (a LABEL or CMD adds none); the containerd
    store names them by manifest digests the export does not carry, so they are told
    apart by what the engine's inspect says of the config."""
    if len(images) == 1 or engine is None:
        return images[0]
    import json

    details = engine.inspect_details(found.id) or {}
    details = details if isinstance(details, dict) else {}
    wanted = details.get("Config") if isinstance(details.get("Config"), dict) else {}

    def agrees(image):
        try:
            config = json.loads(image.config)
        except (ValueError, RecursionError):
            return False
        if not isinstance(config, dict):
            return False
        mine = config.get("config") if isinstance(config.get("config"), dict) else {}
        return (config.get("created") == details.get("Created")
                or _normal_created(config.get("created")) == _normal_created(details.get("Created"))) and all(
            (mine.get(key) or None) == (wanted.get(key) or None) for key in _CONFIG_FIELDS)

    for image in images:
        if agrees(image):
            return image
    return images[0]


def _normal_created(text):
    # The engine may print a time with fewer fractional digits than the config holds.
    if not isinstance(text, str):
        return text
    head, _, frac = text.rstrip("Z").partition(".")
    return head, frac.rstrip("0")


def export_checked(ctx, save_names, export):
    """export(), transfer's export of save_names, with the containerd store's incomplete
    images explained.

    An image that store pulled from a registry keeps no content for the layers whose
    snapshots it already had (moby/moby#49473), and Docker 26 then exports only its
    manifest. What is missing cannot be rebuilt from the engine: say why and what to do."""
    try:
        return export()
    except DogestryError as err:
        if not ctx.engine.uses_containerd_store():
            raise
        if "content digest" in str(err) and "not found" in str(err):
            # An index of which the store holds another platform than this host's only
            # (`docker pull --platform`): Docker before 28 exports the host's platform,
            # whose content is absent; Docker 28 is asked for the image's own platform.
            raise DogestryError(
                f"cannot push {' '.join(save_names)}: the containerd image store lacks content its export needs "
                f"({err}). An index holding only another platform than this host's (docker pull --platform) "
                "exports from Docker 28 on; an image pulled over layers the store had lacks their content "
                "(moby/moby#49473): remove every image sharing its layers and pull it again") from None
        if "the save stream lacks" not in str(err):
            raise
        names = " ".join(save_names)
        raise DogestryError(
            f"cannot push {names}: the containerd image store exported it incomplete ({err}); it keeps no "
            "content for layers it already had when the image was pulled (moby/moby#49473). Copy it from the "
            "remote it came from instead (dogestry walk-ancestry SRC IMAGE | dogestry sync-objects --stdin SRC "
            "DST), or remove every image sharing its layers and pull it again") from None


def refuse_layerless(found, name):
    """An image with no layers (FROM scratch and only metadata) is refused on every engine:
    graphdriver engines cannot export one (`docker save` answers "empty export - not
    implemented"), and a remote should not hold images only some engines can push. An
    image whose config the engine cannot read is no such image: say what it is."""
    if not found.readable:
        raise DogestryError(f"cannot push {name}: the Docker engine cannot read its config (its containerd image "
                            "store lacks content of the image, as a `docker pull` leaves it when a layer's snapshot "
                            "existed, moby/moby#49473); pull it again with `dogestry pull`, which completes it")
    if not found.diff_ids:
        raise DogestryError(f"cannot push {name}: it has no layers (FROM scratch with only metadata), which "
                            "Docker's graphdriver engines cannot export; give it a layer (e.g. COPY a file)")
