"""The one image model, from the engine adapter up to the repository.

An image is named by its id, the sha256 of its config (what graphdriver engines call it).
Its layers, base first, are LayerDescriptors: the diffID (sha256 of the uncompressed tar)
and how the repository stores it. The containerd image store names an image by the digest
of a manifest instead; `Image.manifest()` is the deterministic OCI manifest dogestry loads
and serves images with, so that digest is predictable too (`Image.manifest_digest`).

EngineImage is what an engine's inspect says of an image; `EngineImage.is_image(image)`
is the one place that decides whether an engine image and a repository image are the same.
"""

import json

from .digests import is_digest, sha256_digest
from .errors import CorruptObject
from .jsontext import too_many_values

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MAX_LAYERS = 1000  # far beyond any engine's limit (overlay2 stacks at most 128)


class LayerDescriptor:
    """How one layer is stored: enough to verify it before and after decompression."""

    FIELDS = ("diff_id", "codec", "digest", "size", "uncompressed_size")
    __slots__ = FIELDS

    def __init__(self, diff_id, codec, digest, size, uncompressed_size):
        self.diff_id, self.codec, self.digest = diff_id, codec, digest
        self.size, self.uncompressed_size = size, uncompressed_size

    def __eq__(self, other):
        return isinstance(other, LayerDescriptor) and self.to_json() == other.to_json()

    def __hash__(self):
        return hash(self.diff_id)

    def __repr__(self):
        return f"LayerDescriptor({self.diff_id}, {self.codec}, {self.size})"

    def to_json(self):
        return {f: getattr(self, f) for f in self.FIELDS}

    def to_bytes(self):
        return (json.dumps(self.to_json(), sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, obj, where):
        try:
            desc = cls(**{f: obj[f] for f in cls.FIELDS})
        except (KeyError, TypeError):
            raise CorruptObject(f"{where} is not a valid layer descriptor") from None
        if not (isinstance(desc.diff_id, str) and is_digest(desc.diff_id) and isinstance(desc.digest, str)
                and is_digest(desc.digest) and isinstance(desc.codec, str) and _size(desc.size)
                and _size(desc.uncompressed_size)):
            raise CorruptObject(f"{where} is not a valid layer descriptor")
        return desc

    @classmethod
    def from_bytes(cls, data, where):
        return cls.from_json(parse_json(data, where, "a layer descriptor"), where)


def _size(value):
    # bool is an int in Python; a size of True is damage, not 1 byte.
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 50


def parse_json(data, where, what):
    """JSON from a repository, tar or server: any damage is CorruptObject naming `where`."""
    if too_many_values(data):
        raise CorruptObject(f"{where} is not {what} (implausibly many JSON values)")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise CorruptObject(f"{where} is not {what} (not valid JSON)") from None


class Image:
    """An image: id (= config digest), config bytes when known, layers base first, tags."""

    def __init__(self, image_id, config_size, layers, config=None, tags=()):
        self.id = image_id
        self.config_size = config_size
        self.layers = list(layers)
        self.config = config
        self.tags = list(tags)

    @classmethod
    def from_config(cls, config, layers, tags=()):
        return cls(sha256_digest(config), len(config), layers, config=config, tags=tags)

    @property
    def diff_ids(self):
        return [layer.diff_id for layer in self.layers]

    @property
    def stored_size(self):
        return self.config_size + sum(layer.size for layer in self.layers)

    def manifest(self):
        """The OCI manifest dogestry loads and serves this image with (deterministic)."""
        return json.dumps({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": self.id, "size": self.config_size},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer.diff_id, "size": layer.uncompressed_size}
                       for layer in self.layers],
        }, separators=(",", ":")).encode()

    @property
    def manifest_digest(self):
        return sha256_digest(self.manifest())

    # -- the image record of dogestry-repository(5) --------------------------------------
    def to_record(self):
        obj = {"id": self.id, "config": {"digest": self.id, "size": self.config_size},
               "layers": [layer.to_json() for layer in self.layers]}
        return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_record(cls, data, where):
        obj = parse_json(data, where, "an image record")
        try:
            image_id, config = obj["id"], obj["config"]
            if not (isinstance(image_id, str) and is_digest(image_id) and config["digest"] == image_id
                    and _size(config["size"]) and isinstance(obj["layers"], list)
                    and len(obj["layers"]) <= MAX_LAYERS):
                raise ValueError
            layers = [LayerDescriptor.from_json(layer, where) for layer in obj["layers"]]
        except (ValueError, KeyError, TypeError):
            raise CorruptObject(f"{where} is not a valid image record") from None
        return cls(image_id, config["size"], layers)


class EngineImage:
    """What an engine says of one of its images (its inspect), in the fields dogestry uses."""

    __slots__ = ("id", "diff_ids", "repo_tags", "size", "readable", "platform")

    def __init__(self, image_id, diff_ids, repo_tags, size, readable=True, platform=None):
        self.id, self.diff_ids, self.repo_tags, self.size = image_id, diff_ids, repo_tags, size
        # False when the engine could not read the image's config: its inspect has neither
        # RootFS nor Os (Docker 28's containerd store, for an image lacking layer content).
        self.readable = readable
        self.platform = platform  # {"os", "architecture"[, "variant"]} as an OCI platform, or None

    @classmethod
    def from_inspect(cls, found):
        rootfs = found.get("RootFS") or {}
        platform = None
        if isinstance(found.get("Os"), str) and isinstance(found.get("Architecture"), str) and \
                found["Os"] and found["Architecture"]:
            platform = {"os": found["Os"], "architecture": found["Architecture"]}
            if isinstance(found.get("Variant"), str) and found["Variant"]:
                platform["variant"] = found["Variant"]
        # An engine is input: names that are not strings in a list are none (engine.inspect
        # checks the id and layers, which everything keys on).
        tags, size = found.get("RepoTags"), found.get("Size")
        tags = [t for t in tags if isinstance(t, str) and t != "<none>:<none>"] if isinstance(tags, list) else []
        # A size beyond 1 PiB is no image's: the save's socket timeout grows with it, and
        # 10**18 bytes overflowed it (socket.settimeout: OverflowError).
        size = size if _size(size) else 0
        return cls(found["Id"], list(rootfs.get("Layers") or []), tags, size,
                   readable=bool(rootfs or found.get("Os")), platform=platform)

    def is_image(self, image):
        """True when this engine image is `image`: by config digest on a graphdriver engine, by
        the digest of dogestry's manifest on the containerd store (an image that came from us)."""
        return self.id == image.id or self.id == image.manifest_digest
