"""The portable repository format, version 1, over any backend.

Layout (dogestry-repository(5) is the normative description):

    dogestry.json                      format marker {"format": "dogestry-repository", "version": 1}
    layers/sha256/<diffid-hex>         a layer tar as stored (lz4 frame or raw)
    layers/sha256/<diffid-hex>.json    its descriptor; published after the data
    configs/sha256/<image-id-hex>      the image config, byte for byte (its sha256 is the image id)
    images/sha256/<image-id-hex>.json  the image record: config and layer descriptors, base first
    repositories/<name>/<tag>          a ref: the image id and a newline

Everything but refs is written once and named by content. Writers publish in the order
layers, configs, image records, refs, so whatever a reader finds through a ref is complete.
"""

import fnmatch
import hashlib
import json
import os

from . import compress
from .digests import hex_of, is_digest, sha256_digest
from .errors import CorruptObject, DogestryError, NotFound, UsageError
from .pipeline import Stage, produce
from .refs import Ref, looks_like_id, normalize_id, parse_ref

FORMAT_KEY = "dogestry.json"
FORMAT_NAME = "dogestry-repository"
FORMAT_VERSION = 1
CHUNK = 1 << 20


def layer_key(diff_id):
    return f"layers/sha256/{hex_of(diff_id)}"


def layer_descriptor_key(diff_id):
    return f"layers/sha256/{hex_of(diff_id)}.json"


def config_key(image_id):
    return f"configs/sha256/{hex_of(image_id)}"


def image_key(image_id):
    return f"images/sha256/{hex_of(image_id)}.json"


def ref_key(ref):
    return f"repositories/{ref.name}/{ref.tag}"


def _hold_last(chunks, verify):
    """Yield chunks one behind and run verify() before the last goes out, so a consumer
    (a docker load, an upload) never completes with bytes that failed verification."""
    pending = None
    for chunk in chunks:
        if pending is not None:
            yield pending
        pending = chunk
    verify()
    if pending is not None:
        yield pending


class LayerDescriptor:
    """How one layer is stored: enough to verify it before and after decompression."""

    FIELDS = ("diff_id", "codec", "digest", "size", "uncompressed_size")
    __slots__ = FIELDS

    def __init__(self, diff_id, codec, digest, size, uncompressed_size):
        self.diff_id, self.codec, self.digest = diff_id, codec, digest
        self.size, self.uncompressed_size = size, uncompressed_size

    def to_json(self):
        return {f: getattr(self, f) for f in self.FIELDS}

    @classmethod
    def from_json(cls, obj, where):
        try:
            desc = cls(**{f: obj[f] for f in cls.FIELDS})
        except (KeyError, TypeError):
            raise CorruptObject(f"{where} is not a valid layer descriptor") from None
        if not (is_digest(desc.diff_id) and is_digest(desc.digest) and isinstance(desc.size, int)
                and isinstance(desc.uncompressed_size, int)):
            raise CorruptObject(f"{where} is not a valid layer descriptor")
        return desc


class ImageRecord:
    """An image as the repository knows it: its config digest and its layers, base first."""

    def __init__(self, image_id, config_size, layers):
        self.id = image_id
        self.config_size = config_size
        self.layers = layers

    @property
    def diff_ids(self):
        return [layer.diff_id for layer in self.layers]

    def to_bytes(self):
        obj = {"id": self.id, "config": {"digest": self.id, "size": self.config_size},
               "layers": [layer.to_json() for layer in self.layers]}
        return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data, where):
        try:
            obj = json.loads(data)
            image_id = obj["id"]
            config = obj["config"]
            if config["digest"] != image_id or not is_digest(image_id):
                raise ValueError
            layers = [LayerDescriptor.from_json(layer, where) for layer in obj["layers"]]
            return cls(image_id, int(config["size"]), layers)
        except (ValueError, KeyError, TypeError):
            raise CorruptObject(f"{where} is not a valid image record") from None


class Repository:
    def __init__(self, backend, codec="lz4"):
        self.backend = backend
        self.codec = codec
        self._format_checked = False
        self._writable = False

    @property
    def location(self):
        return self.backend.location()

    # -- format marker --------------------------------------------------------------
    def format_version(self):
        """The repository's format version, or None for an empty location."""
        try:
            data = self.backend.get(FORMAT_KEY)
        except NotFound:
            return None
        try:
            marker = json.loads(data)
            name, version = marker["format"], marker["version"]
        except (ValueError, KeyError, TypeError):
            raise DogestryError(f"{self.location} has a damaged {FORMAT_KEY}; it is not a repository this dogestry can read") from None
        if name != FORMAT_NAME:
            raise DogestryError(f"{self.location} is not a dogestry repository ({FORMAT_KEY} says {name!r})")
        return version

    def check_format(self):
        if self._format_checked:
            return
        version = self.format_version()
        if version is not None and version != FORMAT_VERSION:
            raise DogestryError(f"{self.location} uses repository format version {version}; this dogestry reads "
                                f"version {FORMAT_VERSION}: upgrade dogestry")
        self._format_checked = True

    def _prepare_write(self):
        if self._writable:
            return
        self.check_format()
        marker = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION}) + "\n"
        self.backend.put(FORMAT_KEY, marker.encode())
        self._writable = True

    # -- layers -----------------------------------------------------------------------
    def has_layer(self, diff_id):
        self.check_format()
        return self.backend.exists(layer_descriptor_key(diff_id))

    def layer_descriptor(self, diff_id):
        self.check_format()
        key = layer_descriptor_key(diff_id)
        try:
            obj = json.loads(self.backend.get(key))
        except ValueError:
            raise CorruptObject(f"{key} in {self.location} is not valid JSON") from None
        desc = LayerDescriptor.from_json(obj, f"{key} in {self.location}")
        if desc.diff_id != diff_id:
            raise CorruptObject(f"{key} in {self.location} describes {desc.diff_id}")
        return desc

    def store_layer(self, chunks, expect_diff_id=None):
        """Store an uncompressed layer tar given as chunks; return (descriptor, newly stored).

        When the diffID is known up front (Docker 25+ names layer blobs by it) the bytes
        stream straight to their key and are checked at the end; otherwise they are
        hashed and compressed into a spool, because the key is only certain once the last
        byte is read.
        """
        self._prepare_write()
        if expect_diff_id and self.has_layer(expect_diff_id):
            for _ in chunks:
                pass
            return self.layer_descriptor(expect_diff_id), False
        codec = self.codec
        comp = compress.compressor(codec)
        diff_hash, stored_hash = hashlib.sha256(), hashlib.sha256()
        sizes = {"stored": 0, "uncompressed": 0}
        if expect_diff_id:
            sink = self.backend.writer(layer_key(expect_diff_id))
        else:
            sink = self.backend.spool()

        def encode(chunk):
            out = comp.compress(chunk) if chunk is not None else comp.flush()
            if out:
                stored_hash.update(out)
                sizes["stored"] += len(out)
                sink.write(out)

        # Reading (this thread), hashing and compressing+writing overlap.
        hasher, encoder = Stage(diff_hash.update, name="dogestry-hash"), Stage(encode, name="dogestry-encode")
        try:
            try:
                for chunk in chunks:
                    sizes["uncompressed"] += len(chunk)
                    hasher.put(chunk)
                    encoder.put(chunk)
                encoder.put(None)  # flush the codec
            except BaseException:
                hasher.abandon()
                encoder.abandon()
                raise
            try:
                hasher.close()
            finally:
                encoder.close()
            size, uncompressed = sizes["stored"], sizes["uncompressed"]
            diff_id = "sha256:" + diff_hash.hexdigest()
            if expect_diff_id and diff_id != expect_diff_id:
                raise CorruptObject(f"layer {expect_diff_id} read from the image export has digest {diff_id}")
            desc = LayerDescriptor(diff_id, codec, "sha256:" + stored_hash.hexdigest(), size, uncompressed)
            if expect_diff_id:
                sink.commit()
            else:
                sink.close()
                if self.has_layer(diff_id):
                    return self.layer_descriptor(diff_id), False
                self.backend.put_file(layer_key(diff_id), sink.name)
            self._put_descriptor(desc)
            return desc, True
        except BaseException:
            if expect_diff_id:
                sink.abort()
            raise
        finally:
            if not expect_diff_id:
                sink.close()
                if os.path.exists(sink.name):
                    os.unlink(sink.name)

    def _put_descriptor(self, desc):
        data = (json.dumps(desc.to_json(), sort_keys=True) + "\n").encode()
        self.backend.put(layer_descriptor_key(desc.diff_id), data)

    def layer_chunks(self, desc):
        """Yield the layer's uncompressed bytes, verifying digests and sizes as they stream.

        A thread reads, hashes and decompresses ahead of the consumer. CorruptObject is
        raised as soon as the bytes exceed their recorded sizes, and at the end when a
        digest differs, before the last chunk is handed on, so a load fed from here is cut
        short instead of completing with damaged content.
        """
        self.check_format()
        key = layer_key(desc.diff_id)
        where = f"layer {desc.diff_id} ({key} in {self.location})"

        def decode():
            decomp = compress.decompressor(desc.codec)
            stored_hash = hashlib.sha256()
            size = 0
            reader = self.backend.open(key)
            try:
                while data := reader.read(CHUNK):
                    size += len(data)
                    if size > desc.size:
                        raise CorruptObject(f"{where} is corrupt: larger than its recorded {desc.size} bytes")
                    stored_hash.update(data)
                    try:
                        yield from decomp.decompress(data)
                    except ValueError as err:
                        raise CorruptObject(f"{where} is corrupt: {err}") from None
                try:
                    decomp.end()
                except ValueError as err:
                    raise CorruptObject(f"{where} is corrupt: {err}") from None
            finally:
                reader.close()
            if "sha256:" + stored_hash.hexdigest() != desc.digest or size != desc.size:
                raise CorruptObject(f"{where} is corrupt: stored bytes do not match digest {desc.digest}")

        diff_hash = hashlib.sha256()
        counted = {"uncompressed": 0}

        def hashed():
            for out in produce(decode, depth=4, name="dogestry-decode"):
                counted["uncompressed"] += len(out)
                if counted["uncompressed"] > desc.uncompressed_size:
                    raise CorruptObject(f"{where} is corrupt: expands beyond its recorded size")
                diff_hash.update(out)
                yield out

        def verify():
            if "sha256:" + diff_hash.hexdigest() != desc.diff_id or counted["uncompressed"] != desc.uncompressed_size:
                raise CorruptObject(f"{where} is corrupt: its content does not match its diffID")

        return _hold_last(hashed(), verify)

    def stored_chunks(self, desc):
        """Yield the layer's stored bytes as they are, verified against the descriptor."""
        key = layer_key(desc.diff_id)
        where = f"layer {desc.diff_id} ({key} in {self.location})"
        stored_hash = hashlib.sha256()
        counted = {"size": 0}

        def read():
            reader = self.backend.open(key)
            try:
                while data := reader.read(CHUNK):
                    counted["size"] += len(data)
                    stored_hash.update(data)
                    yield data
            finally:
                reader.close()

        def verify():
            if "sha256:" + stored_hash.hexdigest() != desc.digest or counted["size"] != desc.size:
                raise CorruptObject(f"{where} is corrupt: stored bytes do not match digest {desc.digest}")

        return _hold_last(read(), verify)

    def put_stored_layer(self, desc, chunks):
        """Publish a layer copied from another repository in its stored form."""
        self._prepare_write()
        sink = self.backend.writer(layer_key(desc.diff_id))
        try:
            for chunk in chunks:
                sink.write(chunk)
            sink.commit()
        except BaseException:
            sink.abort()
            raise
        self._put_descriptor(desc)

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
        self.check_format()
        key = config_key(image_id)
        try:
            data = self.backend.get(key)
        except NotFound:
            raise NotFound(f"config of image {image_id} ({key}) not found in {self.location}") from None
        if sha256_digest(data) != image_id:
            raise CorruptObject(f"config {image_id} ({key} in {self.location}) is corrupt: digest mismatch")
        return data

    def has_image(self, image_id):
        self.check_format()
        return self.backend.exists(image_key(image_id))

    def put_image(self, record):
        self._prepare_write()
        return self.backend.put(image_key(record.id), record.to_bytes())

    def get_image(self, image_id):
        self.check_format()
        key = image_key(image_id)
        try:
            data = self.backend.get(key)
        except NotFound:
            raise NotFound(f"image {image_id} not found in {self.location}") from None
        record = ImageRecord.from_bytes(data, f"{key} in {self.location}")
        if record.id != image_id:
            raise CorruptObject(f"{key} in {self.location} describes {record.id}")
        return record

    def image_ids(self):
        self.check_format()
        for key in self.backend.list("images/sha256/"):
            name = key.rsplit("/", 1)[-1]
            if name.endswith(".json"):
                yield "sha256:" + name[:-5]

    def missing_objects(self, record):
        """Keys an image record needs that this repository lacks (a complete image has none)."""
        missing = [config_key(record.id)] if not self.backend.exists(config_key(record.id)) else []
        missing += [layer_descriptor_key(d) for d in record.diff_ids if not self.backend.exists(layer_descriptor_key(d))]
        return missing

    # -- refs ---------------------------------------------------------------------------
    def get_ref(self, ref):
        self.check_format()
        try:
            data = self.backend.get(ref_key(ref)).decode("ascii", "replace").strip()
        except NotFound:
            raise NotFound(f"{ref} not found in {self.location}") from None
        if not is_digest(data):
            raise CorruptObject(f"ref {ref} in {self.location} is damaged ({ref_key(ref)})")
        return data

    def set_ref(self, ref, image_id):
        """Point ref at image_id, refusing an image this repository does not hold whole."""
        record = self.get_image(image_id)
        missing = self.missing_objects(record)
        if missing:
            raise DogestryError(f"refusing to point {ref} at {image_id}: {self.location} lacks {missing[0]}"
                                f"{f' and {len(missing) - 1} more objects' if len(missing) > 1 else ''}")
        self._prepare_write()
        self.backend.put(ref_key(ref), f"{image_id}\n".encode(), overwrite=True)

    def list_refs(self, pattern=None):
        """(image_id, Ref) for every ref, sorted by name:tag; pattern is a glob on name:tag."""
        self.check_format()
        out = []
        for key in self.backend.list("repositories/"):
            name, _, tag = key[len("repositories/"):].rpartition("/")
            try:
                ref = parse_ref(f"{name}:{tag}")
            except UsageError:
                continue  # not a ref this version can name; never produced by a writer
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


__all__ = ["Repository", "ImageRecord", "LayerDescriptor", "Ref"]
