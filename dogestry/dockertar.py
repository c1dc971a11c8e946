"""Streaming `docker save` reading and `docker load` tar writing, for every engine generation.

Reading never holds a layer in memory: each entry is handed on as a stream of chunks.
The save formats we meet:

- Docker 1.10-24: `<v1id>/layer.tar` (a duplicate is a symlink to the first copy),
  `<image-id>.json` configs, `manifest.json`, `repositories`;
- Docker 25+ (graphdriver): an OCI layout, `blobs/sha256/<digest>` where a layer blob's
  digest is its diffID, plus `manifest.json`;
- the containerd image store: the same layout, but layer blobs are compressed as stored
  (gzip, or zstd), so their names are not diffIDs; we decompress them and the caller
  checks the result against the config's `rootfs.diff_ids`.

The load tar we write (`load_tar_chunks`) carries `manifest.json` for graphdriver engines
and `oci-layout` + `index.json` for the containerd store, with layers as uncompressed
`blobs/sha256/<diffid>`. The metadata comes last, so an aborted stream loads nothing.
"""

import json
import re
import tarfile
import zlib

from .digests import from_hex, is_digest, sha256_digest
from .errors import CorruptObject, DogestryError, UsageError
from .jsontext import too_many_values
from .refs import parse_ref

BLOCK = 512
CHUNK = 1 << 20
# A save stream is input: these caps keep a hostile one (a pipe that never ends, a JSON
# bomb) from making us allocate without bound. Real configs are kilobytes, a save of a
# whole host a few thousand layers.
MAX_METADATA = 16 << 20   # one config or manifest held in memory
MAX_HELD = 64 << 20       # all of them together (each entry counts a block at least)
MAX_ENTRIES = 100000      # links, and layers, remembered
MAX_PAX = 1 << 20         # one pax or GNU long-name header
MAX_IMAGES = 10000        # images in one manifest.json
MAX_LAYER_REFS = 1 << 17  # layer paths in one manifest.json, all images together

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class NotATar(DogestryError):
    pass


def _show(name, limit=200):
    """A name from the stream, quoted for a message: one line and short whatever it holds."""
    return repr(name[:limit]) + ("..." if len(name) > limit else "")


class TarEntry:
    __slots__ = ("name", "size", "type", "linkname", "_reader", "_left")

    def __init__(self, name, size, type_, linkname, reader):
        self.name, self.size, self.type, self.linkname = name, size, type_, linkname
        self._reader = reader
        self._left = size

    @property
    def is_file(self):
        return self.type in (b"0", b"\0", b"7")

    @property
    def is_link(self):
        return self.type in (b"1", b"2")

    def read(self, n=CHUNK):
        if self._left <= 0:
            return b""
        data = self._reader.read_exact(min(n, self._left))
        self._left -= len(data)
        return data

    def chunks(self, first=b""):
        if first:
            yield first
        while data := self.read(CHUNK):
            yield data

    def drain(self):
        while self.read(CHUNK):
            pass


class _Reader:
    def __init__(self, fileobj):
        self._f = fileobj
        self.offset = 0

    def read_exact(self, n):
        if n < 0:  # read(-1) would be the whole, maybe endless, stream
            raise NotATar("the tar stream has a negative size")
        data = self._f.read(n)
        while len(data) < n:
            more = self._f.read(n - len(data))
            if not more:
                raise NotATar("the tar stream ended early (truncated input?)")
            data += more
        self.offset += n
        return data


def _field(block, start, length):
    return block[start:start + length].split(b"\0", 1)[0]


def _number(block, start, length):
    raw = block[start:start + length]
    if raw[0] & 0x80:  # GNU base-256 for large sizes
        if raw[0] != 0x80:
            raise NotATar("the tar stream has a negative or oversized number field")
        return int.from_bytes(raw[1:], "big")
    text = raw.split(b"\0", 1)[0].strip(b" ")
    if text.strip(b"01234567"):  # int() would also take a sign, 0o, _ and inner spaces
        raise NotATar("the tar stream has a damaged number field")
    return int(text or b"0", 8)


def _pax_records(data):
    """`<length> <key>=<value>\n` records; damage is NotATar, never another error."""
    records, pos = {}, 0
    try:
        while pos < len(data):
            space = data.index(b" ", pos)
            length = int(data[pos:space])
            if length <= space - pos or pos + length > len(data):
                raise ValueError
            key, _, value = data[space + 1:pos + length - 1].partition(b"=")
            records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
            pos += length
    except ValueError:
        raise NotATar("the tar stream has a damaged pax header") from None
    # ASCII digits, and few: str.isdigit() takes '²', and int() refuses over 4300 digits
    if "size" in records and not re.fullmatch(r"[0-9]{1,20}", records["size"]):
        raise NotATar("the tar stream has a damaged pax size")
    return records


def iter_tar(fileobj):
    """Yield TarEntry for each member of a tar stream; read each before asking for the next."""
    reader = _Reader(fileobj)
    pax, longname, longlink = {}, None, None
    first = True
    entry = None
    while True:
        if entry is not None:
            entry.drain()
            pad = -entry.size % BLOCK
            if pad:
                reader.read_exact(pad)
        entry = None
        block = fileobj.read(BLOCK)
        while block and len(block) < BLOCK:
            more = fileobj.read(BLOCK - len(block))
            if not more:
                break
            block += more
        if not block:
            if first:
                raise NotATar("the input is empty, not a tar stream")
            return
        if len(block) < BLOCK:
            raise NotATar("the tar stream ended early (truncated input?)")
        reader.offset += BLOCK
        if block == b"\0" * BLOCK:
            return
        checksum_ok = False
        try:
            checksum_ok = _checksum_ok(block)
        except NotATar:
            pass
        if not checksum_ok:
            raise NotATar("the input is not a tar stream (bad header checksum)" if first
                          else f"the tar stream is damaged at byte {reader.offset - BLOCK}")
        first = False
        type_ = block[156:157]
        size = _number(block, 124, 12)
        name = _field(block, 0, 100).decode("utf-8", "surrogateescape")
        prefix = _field(block, 345, 155).decode("utf-8", "surrogateescape")
        if prefix and block[257:262] == b"ustar":
            name = f"{prefix}/{name}"
        linkname = _field(block, 157, 100).decode("utf-8", "surrogateescape")
        if type_ in (b"x", b"g", b"L", b"K"):
            if size > MAX_PAX:
                raise NotATar(f"the tar stream has an implausibly large extended header ({size} bytes)")
            data = reader.read_exact(size)
            reader.read_exact(-size % BLOCK)
            if type_ == b"x":
                pax.update(_pax_records(data))
            elif type_ == b"L":
                longname = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif type_ == b"K":
                longlink = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        if longname:
            name = longname
        if longlink:
            linkname = longlink
        name = pax.get("path", name)
        linkname = pax.get("linkpath", linkname)
        if "size" in pax:
            size = int(pax["size"])
        pax, longname, longlink = {}, None, None
        if type_ not in (b"0", b"\0", b"7"):
            size = size if type_ not in (b"1", b"2", b"5") else 0
        entry = TarEntry(name[2:] if name.startswith("./") else name, size, type_, linkname, reader)
        yield entry


def _gunzip_chunks(chunks, what):
    """Decompress gzip (concatenated members too) in pieces of at most CHUNK bytes."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    fed = False  # bytes went into the current member
    try:
        for chunk in chunks:
            data = chunk
            while data:
                fed = True
                out = d.decompress(data, CHUNK)
                if out:
                    yield out
                if d.eof:  # a member ended: what follows it is the next one
                    data = d.unused_data
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    fed = False
                else:
                    data = d.unconsumed_tail
        out = d.flush()
    except zlib.error as err:
        raise CorruptObject(f"{what} in the save stream is damaged gzip ({err})") from None
    if fed and not d.eof:  # a member began and never ended: the layer would be silently short
        raise CorruptObject(f"{what} in the save stream is truncated gzip")
    if out:
        yield out


def _unzstd_chunks(chunks, what):
    try:
        import zstandard
    except ImportError:
        raise DogestryError("this image has zstd-compressed layers: install the 'zstandard' Python package "
                            "(pip install zstandard) to read them") from None
    reader = zstandard.ZstdDecompressor().stream_reader(_ChunkReader(chunks), read_across_frames=True)
    try:
        while out := reader.read(CHUNK):  # bounded pieces, whatever the ratio
            yield out
    except zstandard.ZstdError as err:
        raise CorruptObject(f"{what} in the save stream is damaged zstd ({err})") from None


class _ChunkReader:
    """A file-like read() over an iterator of chunks."""

    def __init__(self, chunks):
        self._chunks, self._buf = iter(chunks), b""

    def read(self, n=-1):
        while (n < 0 or len(self._buf) < n) and (more := next(self._chunks, None)) is not None:
            self._buf += more
        if n < 0:
            n = len(self._buf)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


def uncompressed_chunks(first, chunks, what="a layer"):
    """Undo a registry/containerd compression, recognised by its magic bytes; damage is a
    CorruptObject naming `what`."""
    if first.startswith(GZIP_MAGIC):
        return _gunzip_chunks(chunks, what)
    if first.startswith(ZSTD_MAGIC):
        return _unzstd_chunks(chunks, what)
    return chunks


class SavedImage:
    """One image read from a save stream: its config bytes, tags, and one result per layer
    (whatever the layer sink returned for it), base first."""

    def __init__(self, config, diff_ids, layer_results, repo_tags):
        self.config = config
        self.id = sha256_digest(config)
        self.diff_ids = diff_ids
        self.layer_results = layer_results
        self.repo_tags = repo_tags


class _Contents:
    """What one pass over a save stream found: small files, layer results, links."""

    def __init__(self):
        self.metadata = {}   # path -> bytes: manifest.json, configs, other small JSON
        self.layers = {}     # path -> the sink's result
        self.links = {}      # path -> target path
        self.held = 0        # bytes in metadata


def read_save_stream(fileobj, sink, progress=None):
    """Read a `docker save` stream once, storing layers as they pass; return [SavedImage].

    sink.store(chunks, expect_diff_id, path, size) stores an uncompressed layer and
    returns a result with `.diff_id`; sink.known(diff_id, size) returns a result for a
    layer the destination already holds (a blob named by its diffID is then skipped
    unread), or None. progress (a progress.Progress) sees each layer's bytes.
    """
    contents = _scan(fileobj, sink, progress)
    return _join(contents, sink)


def _scan(fileobj, sink, progress):
    def tracked(entry, first):
        chunks = entry.chunks(first)
        label = entry.name.split("/")[-2 if entry.name.endswith("layer.tar") else -1]
        return progress.track(chunks, label, entry.size) if progress else chunks

    found = _Contents()
    for entry in iter_tar(fileobj):
        name = entry.name
        if entry.is_link:
            _count(found)
            target = entry.linkname
            if entry.type == b"2" and "/" in name and not target.startswith("/"):
                target = _join_path(name.rsplit("/", 1)[0], target)
            found.links[name] = target
            continue
        if not entry.is_file:
            continue
        if name.endswith("/layer.tar") and name.count("/") == 1:
            first = entry.read(CHUNK)
            _count(found)
            found.layers[name] = sink.store(uncompressed_chunks(first, tracked(entry, first), f"layer {_show(name)}"),
                                            None, name, entry.size)
        elif name.startswith("blobs/sha256/") and name.count("/") == 2 and from_hex(name[13:]):
            _scan_blob(entry, from_hex(name[13:]), found, sink, progress, tracked)
        elif "/" not in name and (name.endswith(".json") or name in ("repositories", "oci-layout")):
            _hold(found, name, entry)
        else:
            entry.drain()
    return found


def _scan_blob(entry, digest, found, sink, progress, tracked):
    """A blob is a layer or metadata by what its bytes are (the manifest naming it comes
    last in the stream): gzip or zstd is a compressed layer, a tar header an uncompressed
    one; anything else (configs of any size, Docker's legacy v1 JSON) is held as metadata
    and never stored as a layer."""
    first = entry.read(CHUNK)
    name = entry.name
    if first.startswith(GZIP_MAGIC) or first.startswith(ZSTD_MAGIC):
        _count(found)
        found.layers[name] = sink.store(uncompressed_chunks(first, tracked(entry, first), f"layer {_show(name)}"),
                                        None, name, entry.size)
    elif _is_tar_start(first):
        _count(found)
        known = sink.known(digest, entry.size)
        if known is not None:
            entry.drain()
            if progress:
                progress.skip(digest, entry.size)
            found.layers[name] = known
        else:
            found.layers[name] = sink.store(tracked(entry, first), digest, name, entry.size)
    else:
        _hold(found, name, entry, first)


def _is_tar_start(data):
    """True when data begins with a valid tar header, or the zero block of an empty tar."""
    if len(data) < BLOCK:
        return False
    block = data[:BLOCK]
    if block == b"\0" * BLOCK:
        return True
    try:
        return _checksum_ok(block)
    except NotATar:
        return False


def _checksum_ok(block):
    """The header checksum summed over unsigned bytes (POSIX) or signed ones, as old tar
    writers did: Go's archive/tar, hence every engine, takes either, so a layer whose first
    name is not ASCII may carry the signed one and must still be recognised as a tar."""
    stored = _number(block, 148, 8)
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    high = sum(1 for b in block[:148] if b > 127) + sum(1 for b in block[156:] if b > 127)
    return stored in (unsigned, unsigned - 256 * high)


def _count(found):
    if len(found.links) + len(found.layers) >= MAX_ENTRIES:
        raise DogestryError(f"the save stream has more than {MAX_ENTRIES} layers and links; it is not an image export")


def _hold(found, name, entry, first=b""):
    if entry.size > MAX_METADATA:
        raise DogestryError(f"{_show(name)} in the save stream is implausibly large ({entry.size} bytes) for an "
                            "image config or manifest")
    # a block at least per entry: endless empty files are bounded too
    if found.held + max(entry.size, BLOCK) > MAX_HELD:
        raise DogestryError(f"the save stream holds more than {MAX_HELD >> 20} MiB of configs and manifests "
                            f"(at {_show(name)}); it is not an image export")
    data = first + entry.read(entry.size - len(first)) if entry.size > len(first) else first
    found.metadata[name] = data
    found.held += max(len(data), BLOCK)


def _load_json(data, what):
    if too_many_values(data):
        raise DogestryError(f"{what} in the save stream has implausibly many JSON values")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise DogestryError(f"{what} in the save stream is not valid JSON") from None


def _manifest_items(found):
    if "manifest.json" not in found.metadata:
        raise DogestryError("the input has no manifest.json: it is not a `docker save` tar")
    manifest = _load_json(found.metadata["manifest.json"], "manifest.json")
    if not isinstance(manifest, list):
        raise DogestryError("manifest.json in the save stream is not a list of images")
    if len(manifest) > MAX_IMAGES:
        raise DogestryError(f"manifest.json in the save stream lists {len(manifest)} images; more than {MAX_IMAGES} "
                            "is not an image export")
    layer_refs = 0
    for item in manifest:
        if not (isinstance(item, dict) and isinstance(item.get("Config"), str)
                and isinstance(item.get("Layers") or [], list)
                and all(isinstance(p, str) for p in item.get("Layers") or [])
                and isinstance(item.get("RepoTags") or [], list)
                and all(isinstance(t, str) for t in item.get("RepoTags") or [])):
            raise DogestryError("manifest.json in the save stream has an entry that is not "
                                "{Config, Layers, RepoTags}")
        layer_refs += len(item.get("Layers") or [])
        if layer_refs > MAX_LAYER_REFS:
            raise DogestryError(f"manifest.json in the save stream names more than {MAX_LAYER_REFS} layers")
        for tag in item.get("RepoTags") or []:
            try:
                parse_ref(tag)
            except UsageError:  # a damaged export, not a wrong command line
                raise DogestryError(f"manifest.json in the save stream has an invalid tag {_show(tag)}") from None
        yield item["Config"], item.get("Layers") or [], item.get("RepoTags") or []


def _config_diff_ids(config, path):
    obj = _load_json(config, f"config {_show(path)}")
    try:
        diff_ids = obj["rootfs"]["diff_ids"]
        if diff_ids is None:
            diff_ids = []  # an image with no layers (FROM scratch, only metadata)
        if not isinstance(diff_ids, list) or not all(isinstance(d, str) and is_digest(d) for d in diff_ids):
            raise TypeError
    except (KeyError, TypeError):
        raise DogestryError(f"config {_show(path)} in the save stream has no valid rootfs.diff_ids") from None
    return diff_ids


def _join(found, sink):
    """Join the manifest's images to what the scan stored."""
    images, parsed = [], {}  # each config parsed once, however often the manifest names it
    for config_path, layer_paths, repo_tags in _manifest_items(found):
        config_path = _resolve(config_path, found.links)
        config = found.metadata.get(config_path)
        if config is None:
            raise DogestryError(f"the save stream lacks the config {_show(config_path)} named by manifest.json")
        if config_path not in parsed:
            parsed[config_path] = _config_diff_ids(config, config_path)
        diff_ids = parsed[config_path]
        if len(layer_paths) != len(diff_ids):
            raise DogestryError(f"manifest.json lists {len(layer_paths)} layers but config {_show(config_path)} "
                                f"has {len(diff_ids)}")
        results = []
        for path, diff_id in zip(layer_paths, diff_ids):
            path = _resolve(path, found.links)
            result = found.layers.get(path)
            if result is None and path in found.metadata:  # a layer too odd to recognise: try it
                data = found.metadata[path]
                result = found.layers[path] = sink.store(uncompressed_chunks(data, iter([data]), f"layer {_show(path)}"),
                                                         None, path, len(data))
            if result is None:
                raise DogestryError(f"the save stream lacks layer {_show(path)} named by manifest.json")
            if result.diff_id != diff_id:
                raise DogestryError(f"layer {_show(path)} in the save stream has diffID {result.diff_id}, "
                                    f"but the image config expects {diff_id}")
            results.append(result)
        images.append(SavedImage(config, diff_ids, results, repo_tags))
    return images


def _join_path(base, rel):
    parts = base.split("/") if base else []
    for piece in rel.split("/"):
        if piece == "..":
            if parts:
                parts.pop()
        elif piece not in ("", "."):
            parts.append(piece)
    return "/".join(parts)


def _resolve(path, links):
    start = path
    for _ in range(16):
        if path not in links:
            return path
        path = links[path]
    raise DogestryError(f"the save stream's link {_show(start)} is part of a loop or a chain of more than 16 links")


# -- writing load tars ----------------------------------------------------------------

def _header(name, size):
    # PAX: a layer of 8 GiB or more does not fit USTAR's size field; `docker load` reads pax.
    if size < 0:
        raise DogestryError(f"{name} has a negative size ({size}); the image record is damaged")
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _file(name, data):
    yield _header(name, len(data))
    yield data
    pad = -len(data) % BLOCK
    if pad:
        yield b"\0" * pad


def load_tar_chunks(images, layer_chunks, include=None):
    """Yield a `docker load` tar of images (image.Image with config and tags).

    layer_chunks(desc) yields a layer's uncompressed bytes; include is the set of diffIDs
    whose bytes go into the tar (None: all). Each layer goes in once.
    """
    written = set()
    for image in images:
        for layer in image.layers:
            if (include is not None and layer.diff_id not in include) or layer.diff_id in written:
                continue
            written.add(layer.diff_id)
            yield _header(f"blobs/sha256/{layer.diff_id[7:]}", layer.uncompressed_size)
            sent = 0
            for chunk in layer_chunks(layer):
                sent += len(chunk)
                yield chunk
            if sent != layer.uncompressed_size:
                raise DogestryError(f"layer {layer.diff_id} produced {sent} bytes, expected {layer.uncompressed_size}")
            pad = -sent % BLOCK
            if pad:
                yield b"\0" * pad
    manifests, index = [], []
    for image in images:
        if image.id not in written:
            written.add(image.id)
            yield from _file(f"blobs/sha256/{image.id[7:]}", image.config)
        oci = image.manifest()
        oci_digest = sha256_digest(oci)
        if oci_digest not in written:
            written.add(oci_digest)
            yield from _file(f"blobs/sha256/{oci_digest[7:]}", oci)
        manifests.append({"Config": f"blobs/sha256/{image.id[7:]}",
                          "RepoTags": [str(t) for t in image.tags] or None,
                          "Layers": [f"blobs/sha256/{layer.diff_id[7:]}" for layer in image.layers]})
        descriptor = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "digest": oci_digest, "size": len(oci)}
        if not image.tags:
            index.append(descriptor)
        for tag in image.tags:
            index.append(dict(descriptor, annotations={"io.containerd.image.name": f"{tag.full_name}:{tag.tag}",
                                                        "org.opencontainers.image.ref.name": tag.tag}))
    yield from _file("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    yield from _file("index.json", json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                                               "manifests": index}, separators=(",", ":")).encode())
    yield from _file("manifest.json", json.dumps(manifests, separators=(",", ":")).encode())
    yield b"\0" * (2 * BLOCK)
