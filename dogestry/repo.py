"""The portable repository format, versions 1 and 2, over any backend.

Layout (dogestry-repository(5) is the normative description; this module is the only
place that knows it):

    dogestry.json                      format marker {"format": "dogestry-repository", "version": 2}
    layers/sha256/<diffid-hex>         a layer tar as stored (lz4 frame or raw)
    layers/sha256/<diffid-hex>.json    its descriptor; published after the data
    configs/sha256/<image-id-hex>      the image config, byte for byte (its sha256 is the image id)
    images/sha256/<image-id-hex>.json  the image record: config and layer descriptors, base first
    repositories/<name>/_tags/<tag>    a ref: the image id and a newline (version 2)
    repositories/<name>/<tag>          the same in version 1, where app:sub and app/sub:1 collide
    leases/<what>-<random>.json        a writer (or gc) at work: the gc protocol, operations.py
    shares/<hex>.json                  a share index (sharing.py)

Everything but refs is written once and named by content. Writers publish in the order
layers, configs, image records, refs, so whatever a reader finds through a ref is complete.
Every object read from a backend is size-capped and verified: a repository is input.
Version 1 is read as it is and upgraded to version 2 by the first write (upgrade_refs).
"""

import fnmatch
import json
import os

from . import layerstore
from .digests import from_hex, hex_of, is_digest, sha256_digest
from .errors import CorruptObject, DogestryError, NotFound, StorageError, UsageError
from .image import Image, LayerDescriptor, parse_json
from .refs import docker_hub_twin, looks_like_id, normalize_id, parse_ref

FORMAT_KEY = "dogestry.json"
FORMAT_NAME = "dogestry-repository"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
TAGS_DIR = "_tags"  # no name component can be this: components start with [a-z0-9]
KINDS = ("layers", "configs", "images")

# Caps on the objects read whole: a damaged or hostile repository must not make a reader
# allocate without bound (a ref symlinked to /dev/zero).
MAX_MARKER = 64 << 10
MAX_REF = 4 << 10
MAX_DESCRIPTOR = 64 << 10
MAX_RECORD = 4 << 20
MAX_CONFIG = 64 << 20
MAX_ALIAS = 4 << 10


def layer_key(diff_id):
    return f"layers/sha256/{hex_of(diff_id)}"


def layer_descriptor_key(diff_id):
    return f"layers/sha256/{hex_of(diff_id)}.json"


def config_key(image_id):
    return f"configs/sha256/{hex_of(image_id)}"


def ref_body(image_id):
    """A ref's bytes as dogestry writes them: the image id and a newline."""
    return f"{image_id}\n".encode()


def image_key(image_id):
    return f"images/sha256/{hex_of(image_id)}.json"


def alias_key(engine_id):
    return f"aliases/sha256/{hex_of(engine_id)}"


ALIASES_PREFIX = "aliases/sha256/"


def ref_key(ref, version=FORMAT_VERSION):
    if version == 1:
        return f"repositories/{ref.name}/{ref.tag}"
    return f"repositories/{ref.name}/{TAGS_DIR}/{ref.tag}"


REFS_PREFIX = "repositories/"


def ref_of_key(key, version=FORMAT_VERSION):
    """The Ref a key under repositories/ names, or None for a key that is not a ref of this version."""
    rest = key[len(REFS_PREFIX):]
    if version == 1:
        name, _, tag = rest.rpartition("/")
    else:
        name, sep, tag = rest.rpartition(f"/{TAGS_DIR}/")
        if not sep:
            return None
    try:
        return parse_ref(f"{name}:{tag}")
    except UsageError:
        return None  # never produced by a writer: not a ref this version can name


def image_keys(image):
    """Every key an image needs, in publish order (layers, config, record); refs aside."""
    keys = []
    for layer in image.layers:
        keys += [layer_key(layer.diff_id), layer_descriptor_key(layer.diff_id)]
    return keys + [config_key(image.id), image_key(image.id)]


LEASES_PREFIX = "leases/"
SHARES_PREFIX = "shares/"
_HEX64 = frozenset("0123456789abcdef")


def lease_key(name):
    return f"{LEASES_PREFIX}{name}.json"


def object_of_key(key):
    """(kind, digest) for an object key: kind is layer, descriptor, config or image; else None.

    Refs, leases, shares and the marker are not objects; neither is a key no writer makes.
    """
    parts = key.split("/")
    if len(parts) != 3 or parts[1] != "sha256":
        return None
    kind, name = parts[0], parts[2]
    if kind == "layers":
        kind, name = ("descriptor", name[:-5]) if name.endswith(".json") else ("layer", name)
    elif kind == "configs":
        kind = "config"
    elif kind == "images" and name.endswith(".json"):
        kind, name = "image", name[:-5]
    else:
        return None
    if len(name) != 64 or not set(name) <= _HEX64:
        return None
    return kind, f"sha256:{name}"


def _shown(value):
    """A value from a file, as the file says it and short enough for one line."""
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _marker(version):
    return f'{{"format": "{FORMAT_NAME}", "version": {version}}}\n'.encode()


class Repository:
    def __init__(self, backend, codec="lz4", create=True):
        self.backend = backend
        self.codec = codec
        self.create = create  # a writer may start a repository where there is none
        self._format_checked = False
        self._writable = False
        self.version = FORMAT_VERSION  # of the repository as read; check_format sets it

    @property
    def location(self):
        return self.backend.location()

    def _where(self, key):
        return f"{key} in {self.location}"

    # -- format marker --------------------------------------------------------------
    def format_version(self):
        """The repository's format version, or None for an empty location."""
        try:
            data = self.backend.get(FORMAT_KEY, limit=MAX_MARKER)
        except NotFound:
            return None
        except CorruptObject as err:
            raise DogestryError(f"{self.location} has a damaged {FORMAT_KEY} ({err}); it is not a repository "
                                "this dogestry can read") from None
        try:
            marker = parse_json(data, FORMAT_KEY, "a format marker")
            name, version = marker["format"], marker["version"]
        except (CorruptObject, KeyError, TypeError):
            raise DogestryError(f"{self.location} has a damaged {FORMAT_KEY}; it is not a repository this "
                                "dogestry can read") from None
        if name != FORMAT_NAME:
            raise DogestryError(f"{self.location} is not a dogestry repository ({FORMAT_KEY} says "
                                f"{_shown(name)})")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise DogestryError(f"{self.location} has a damaged {FORMAT_KEY}: version {_shown(version)} is not a "
                                "format version")
        return version

    def check_format(self):
        if self._format_checked:
            return
        version = self.format_version()
        if version is None and not self.create:
            why = self.backend.missing()
            if why:
                raise NotFound(f"there is no repository at {self.location} ({why})")
        if version is not None and version not in READABLE_VERSIONS:
            raise DogestryError(f"{self.location} uses repository format version {version}; this dogestry reads "
                                f"versions {' and '.join(map(str, READABLE_VERSIONS))}: upgrade dogestry")
        self.version = version or FORMAT_VERSION
        self._format_checked = True

    def _prepare_write(self):
        if self._writable:
            return
        self.create = True
        self.check_format()
        if self.version < FORMAT_VERSION:
            self.upgrade_refs()
        if self.backend.put(FORMAT_KEY, _marker(FORMAT_VERSION)):
            # Read back what we wrote: a store that answers 200 but keeps nothing or other
            # bytes would leave refs that no reader (this one included) accepts.
            if self.format_version() != FORMAT_VERSION:
                raise StorageError(f"{self.location} did not keep {FORMAT_KEY} as written (it reads back missing "
                                   "or different): the store loses writes")
        self._writable = True

    def upgrade_refs(self):
        """Upgrade a version 1 repository to version 2, crash-safe at every step.

        1. copy every v1 ref to its v2 key (v1 readers still see the v1 refs; a v1 reader
           lists no v2 key as a ref, its name has a `_tags` component);
        2. flip the marker to 2 (one atomic overwrite: from here readers use the v2 keys);
        3. delete the v1 refs (a crash leaves some behind: v2 readers ignore them).
        Objects are the same in both versions. A writer that sees version 2 never runs this.
        """
        old = [(key, ref_of_key(key, 1)) for key in self.backend.list(REFS_PREFIX)]
        old = [(key, ref) for key, ref in old if ref is not None and f"/{TAGS_DIR}/" not in key]
        for key, ref in old:
            self.backend.put(ref_key(ref, 2), self.backend.get(key, limit=MAX_REF), overwrite=True)
        self.backend.put(FORMAT_KEY, _marker(2), overwrite=True)
        self.version = 2
        for key, _ in old:
            self.backend.delete(key)

    def ref_key(self, ref):
        self.check_format()
        return ref_key(ref, self.version)

    def _get(self, key, limit):
        self.check_format()
        return self.backend.get(key, limit=limit)

    # -- layers -----------------------------------------------------------------------
    def has_layer(self, diff_id):
        self.check_format()
        return self.backend.exists(layer_descriptor_key(diff_id))

    def layer_descriptor(self, diff_id):
        key = layer_descriptor_key(diff_id)
        desc = LayerDescriptor.from_bytes(self._get(key, MAX_DESCRIPTOR), self._where(key))
        if desc.diff_id != diff_id:
            raise CorruptObject(f"{self._where(key)} describes {desc.diff_id}")
        return desc

    def present_layer(self, diff_id):
        """The descriptor of a layer this repository holds whole, or None.

        A descriptor whose data is missing counts as absent (the layer is stored again);
        one whose size disagrees with the stored data (another writer's codec, an older
        dogestry's crash) is repaired from the stored bytes, so a push never reports a
        layer present that no pull could read.
        """
        if not self.has_layer(diff_id):
            return None
        desc = self.layer_descriptor(diff_id)
        try:
            stored = self.backend.size(layer_key(diff_id))
        except NotFound:
            return None
        if stored != desc.size:
            desc = self._repair_descriptor(diff_id)
        return desc

    def store_layer(self, chunks, expect_diff_id=None, wanted=None):
        """Store an uncompressed layer tar given as chunks; return (descriptor, newly stored).

        When the diffID is known up front (Docker 25+ names layer blobs by it) the bytes
        stream straight to their key and are checked at the end; otherwise they are
        hashed and compressed into a spool, because the key is only certain once the last
        byte is read. A spooled layer whose diffID is not in `wanted` (when given) is
        dropped with its spool: (its unpublished descriptor, None).
        """
        self._prepare_write()
        if expect_diff_id is None:
            return self._store_spooled(chunks, wanted)
        present = self.present_layer(expect_diff_id)
        if present is not None:
            for _ in chunks:
                pass
            return present, False
        return self._store_streamed(chunks, expect_diff_id)

    def _store_streamed(self, chunks, diff_id):
        sink = self.backend.writer(layer_key(diff_id))
        try:
            desc = layerstore.encode(chunks, self.codec, sink.write)
            if desc.diff_id != diff_id:
                raise CorruptObject(f"layer {diff_id} read from the image export has digest {desc.diff_id}")
            published = sink.commit()
        except BaseException:
            sink.abort()
            raise
        return self._publish_descriptor(desc, published)

    def _store_spooled(self, chunks, wanted=None):
        spool = self.backend.spool()
        try:
            desc = layerstore.encode(chunks, self.codec, spool.write)
            spool.close()
            if wanted is not None and desc.diff_id not in wanted:
                return desc, None
            present = self.present_layer(desc.diff_id)
            if present is not None:
                return present, False
            published = self.backend.put_file(layer_key(desc.diff_id), spool.name)
        finally:
            spool.close()
            if os.path.exists(spool.name):  # put_file consumed it unless we failed first
                os.unlink(spool.name)
        return self._publish_descriptor(desc, published)

    def _publish_descriptor(self, desc, published):
        """Descriptor after data. Only the writer whose bytes were published describes them;
        when another writer's data won the write-once race, describe what it stored."""
        if not published:
            return self._repair_descriptor(desc.diff_id), False
        self.backend.put(layer_descriptor_key(desc.diff_id), desc.to_bytes(), overwrite=True)
        # A store that ignores If-None-Match lets a concurrent writer with another codec
        # replace our data after we published it: check what is stored now, after our
        # descriptor, so that whichever writer writes a descriptor last leaves one that
        # matches the bytes.
        if self.backend.size(layer_key(desc.diff_id)) != desc.size:
            return self._repair_descriptor(desc.diff_id), False
        return desc, True

    def _repair_descriptor(self, diff_id):
        key = layer_key(diff_id)
        desc = layerstore.describe_stored(self.backend, key, diff_id, f"layer {diff_id} ({self._where(key)})")
        try:
            current = self.layer_descriptor(diff_id)
        except (NotFound, CorruptObject):
            current = None
        if current != desc:
            self.backend.put(layer_descriptor_key(diff_id), desc.to_bytes(), overwrite=True)
        return desc

    def layer_chunks(self, desc):
        """The layer's uncompressed bytes, verified as they stream (layerstore.read_uncompressed)."""
        self.check_format()
        key = layer_key(desc.diff_id)
        return layerstore.read_uncompressed(self.backend, key, desc, f"layer {desc.diff_id} ({self._where(key)})")

    def stored_chunks(self, desc):
        """The layer's stored bytes as they are, verified against the descriptor."""
        self.check_format()
        key = layer_key(desc.diff_id)
        return layerstore.read_stored(self.backend, key, desc, f"layer {desc.diff_id} ({self._where(key)})")

    def put_stored_layer(self, desc, chunks):
        """Publish a layer copied from another repository in its stored form."""
        self._prepare_write()
        sink = self.backend.writer(layer_key(desc.diff_id))
        try:
            for chunk in chunks:
                sink.write(chunk)
            published = sink.commit()
        except BaseException:
            sink.abort()
            raise
        return self._publish_descriptor(desc, published)[0]

    # -- configs and image records ----------------------------------------------------
    def has_config(self, image_id):
        self.check_format()
        return self.backend.exists(config_key(image_id))

    def put_config(self, data):
        self._prepare_write()
        image_id = sha256_digest(data)
        self.backend.put(config_key(image_id), data)
        return image_id

    def get_config(self, image_id):
        key = config_key(image_id)
        try:
            data = self._get(key, MAX_CONFIG)
        except NotFound:
            raise NotFound(f"config of image {image_id} ({key}) not found in {self.location}") from None
        if sha256_digest(data) != image_id:
            raise CorruptObject(f"config {image_id} ({self._where(key)}) is corrupt: digest mismatch")
        return data

    def has_image(self, image_id):
        self.check_format()
        return self.backend.exists(image_key(image_id))

    def put_image(self, image):
        self._prepare_write()
        return self.backend.put(image_key(image.id), image.to_record())

    def get_image(self, image_id):
        """The image record of image_id, as an Image (without config bytes)."""
        key = image_key(image_id)
        try:
            data = self._get(key, MAX_RECORD)
        except NotFound:
            raise NotFound(f"image {image_id} not found in {self.location}") from None
        image = Image.from_record(data, self._where(key))
        if image.id != image_id:
            raise CorruptObject(f"{self._where(key)} describes {image.id}")
        return image

    def load_image(self, image_id, tags=()):
        """An Image with its config bytes, ready to load or serve."""
        image = self.get_image(image_id)
        image.config = self.get_config(image_id)
        if len(image.config) != image.config_size:
            raise CorruptObject(f"image record {image_id} in {self.location} gives its config a wrong size")
        image.tags = list(tags)
        return image

    def image_ids(self):
        self.check_format()
        for key in self.backend.list("images/sha256/"):
            name = key.rsplit("/", 1)[-1]
            image_id = from_hex(name[:-5]) if name.endswith(".json") else None
            if image_id:
                yield image_id

    def missing_objects(self, image):
        """Keys an image needs that this repository lacks (a complete image has none).

        The config and descriptors are read, not only found: a store that answers a write
        with 200 but keeps nothing or other bytes must not get a ref to them. The requests
        are as many as existence checks would be, and these objects are small.
        """
        missing = []
        try:
            self.get_config(image.id)
        except (NotFound, CorruptObject):
            missing.append(config_key(image.id))
        for diff_id in image.diff_ids:
            try:
                self.layer_descriptor(diff_id)
            except (NotFound, CorruptObject):
                missing.append(layer_descriptor_key(diff_id))
        return missing

    def holds_whole(self, image_id):
        """True when the repository has image_id's record and every object it needs."""
        return self.has_image(image_id) and not self.missing_objects(self.get_image(image_id))

    def count_objects(self):
        """{kind: number of objects} for layers, configs and images, and the number of refs."""
        counts = {}
        for kind in KINDS:
            counts[kind] = sum(1 for key in self.backend.list(f"{kind}/")
                               if kind != "layers" or not key.endswith(".json"))
        self.check_format()
        counts["refs"] = sum(1 for key in self.backend.list(REFS_PREFIX) if ref_of_key(key, self.version))
        return counts

    # -- refs ---------------------------------------------------------------------------
    def get_ref(self, ref):
        key = self.ref_key(ref)
        try:
            data = self._get(key, MAX_REF)
        except NotFound:
            raise NotFound(f"{ref} not found in {self.location}") from None
        except CorruptObject as err:
            raise CorruptObject(f"ref {ref} is damaged: {err}") from None
        text = data.decode("ascii", "replace").strip()
        if not is_digest(text):
            raise CorruptObject(f"ref {ref} in {self.location} is damaged ({key})")
        return text

    def find_ref(self, ref):
        """The image id ref points at, or None."""
        try:
            return self.get_ref(ref)
        except NotFound:
            return None

    def set_ref(self, ref, image_id):
        """Point ref at image_id, refusing an image this repository does not hold whole."""
        image = self.get_image(image_id)
        missing = self.missing_objects(image)
        if missing:
            raise DogestryError(f"refusing to point {ref} at {image_id}: {self.location} lacks {missing[0]}"
                                f"{f' and {len(missing) - 1} more objects' if len(missing) > 1 else ''}")
        self._prepare_write()
        self.backend.put(self.ref_key(ref), ref_body(image_id), overwrite=True)

    def unreadable_refs(self):
        """Keys spelled as refs that hold no ref the storage can give (Backend.unlisted)."""
        return [key for key in self.backend.unlisted(REFS_PREFIX) if ref_of_key(key, self.version)]

    def list_refs(self, pattern=None):
        """(image_id, Ref) for every ref, sorted by name:tag; pattern is a glob on name:tag."""
        self.check_format()
        out = []
        for key in self.backend.list(REFS_PREFIX):
            ref = ref_of_key(key, self.version)
            if ref is None:
                continue
            if pattern and not (fnmatch.fnmatchcase(str(ref), pattern) or fnmatch.fnmatchcase(ref.name, pattern)):
                continue
            out.append((self.get_ref(ref), ref))
        out.sort(key=lambda item: (item[1].name, item[1].tag))
        return out

    def resolve(self, text):
        """`name[:tag]` or an image id prefix -> (image_id, Ref or None).

        Like docker, a bare hex word is first tried as a name, then as an id prefix.
        """
        self.check_format()
        ref = None
        if not text.startswith("sha256:"):
            try:
                ref = parse_ref(text)
            except UsageError:
                if not looks_like_id(text):
                    raise
            if ref is not None:
                try:
                    return self.get_ref(ref), ref
                except NotFound:
                    twin = docker_hub_twin(ref)
                    found = self.find_ref(twin) if twin is not None else None
                    if found is not None:
                        return found, ref
                    if not looks_like_id(text):
                        raise
        if not looks_like_id(text):
            raise UsageError(f"invalid image id {text!r}")
        prefix = normalize_id(text)
        candidates = sorted(i for i in self.image_ids() if i.startswith(prefix))
        if not candidates:
            raise NotFound(f"{text} not found in {self.location}")
        if len(candidates) > 1:
            raise DogestryError(f"image id prefix {text} is ambiguous in {self.location}: {' '.join(candidates)}")
        return candidates[0], None

    # -- operations (list, untag, gc, verify, leases: see operations.py) ----------------
    def ref_infos(self):
        """[(Ref, ObjectInfo)] for every ref, from one listing: ObjectInfo.mtime is its last write."""
        self.check_format()
        out = []
        for info in self.backend.scan(REFS_PREFIX):
            ref = ref_of_key(info.key, self.version)
            if ref is not None:
                out.append((ref, info))
        return out

    def delete_ref(self, ref):
        """Remove a ref (its objects stay until gc)."""
        self._prepare_write()
        self.backend.delete(self.ref_key(ref))

    def object_infos(self):
        """[(kind, digest, ObjectInfo)] for every object (object_of_key), from one listing per kind."""
        self.check_format()
        out = []
        for kind in KINDS:
            for info in self.backend.scan(f"{kind}/"):
                found = object_of_key(info.key)
                if found is not None:
                    out.append((*found, info))
        return out

    def lease_infos(self):
        """[ObjectInfo] of the leases (push protection, see dogestry-repository(5))."""
        return [info for info in self.backend.scan(LEASES_PREFIX) if info.key.endswith(".json")]

    def share_infos(self):
        return [info for info in self.backend.scan(SHARES_PREFIX) if info.key.endswith(".json")]

    def get_small(self, key, limit=MAX_DESCRIPTOR):
        """A lease or share index as bytes (size-capped: a repository is input)."""
        return self.backend.get(key, limit=limit)

    def put_lease(self, name, data):
        self.backend.put(lease_key(name), data, overwrite=True)

    def delete_key(self, key):
        """Remove an object, lease or share index by key (gc; never a ref: see delete_ref)."""
        if key.startswith(REFS_PREFIX) or key == FORMAT_KEY:
            raise DogestryError(f"internal error: refusing to delete {key} as an object")
        self.backend.delete(key)

    def absent_keys(self, image):
        """Every key of image (data too, not only descriptors) this repository lacks, in publish order."""
        return [key for key in image_keys(image) if not self.backend.exists(key)]

    # -- engine aliases -------------------------------------------------------------------
    # The containerd image store names an image by the digest of its manifest, which for an
    # image built there (its layers gzip-compressed) dogestry never sees. An alias records,
    # at push, that engine id -> image id, so that the id `docker images` shows resolves on
    # pull and a re-push of the same engine image costs no `docker save`. Like a ref it is
    # a pointer a reader must check (transfer does, against the engine's layers); unlike a
    # ref it never changes: a manifest digest names exactly one config.
    def put_alias(self, engine_id, image_id):
        """Record engine_id -> image_id (no write when equal or already recorded)."""
        if engine_id == image_id or not is_digest(engine_id):
            return False
        self._prepare_write()
        return self.backend.put(alias_key(engine_id), f"{image_id}\n".encode())

    def find_alias(self, engine_id):
        """The image id engine_id is an alias of, or None."""
        if not is_digest(engine_id):
            return None
        key = alias_key(engine_id)
        try:
            data = self._get(key, MAX_ALIAS)
        except NotFound:
            return None
        text = data.decode("ascii", "replace").strip()
        if not is_digest(text):
            raise CorruptObject(f"alias {engine_id} in {self.location} is damaged ({key})")
        return text

    def resolve_alias(self, text):
        """(engine id, image id) for an engine id or id prefix with an alias here, or None;
        an ambiguous prefix is an error, as for image ids."""
        if text.startswith("sha256:") and is_digest(text):
            image_id = self.find_alias(text)
            return (text, image_id) if image_id else None
        if not looks_like_id(text):
            return None
        prefix = normalize_id(text)
        self.check_format()
        matches = sorted(engine_id for engine_id in (from_hex(key[len(ALIASES_PREFIX):])
                                                     for key in self.backend.list(ALIASES_PREFIX))
                         if engine_id and engine_id.startswith(prefix))
        if len(matches) > 1:
            raise DogestryError(f"engine id prefix {text} is ambiguous in {self.location}: {' '.join(matches)}")
        if not matches:
            return None
        image_id = self.find_alias(matches[0])
        return (matches[0], image_id) if image_id else None
