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
import tarfile
import zlib

from .digests import sha256_digest
from .errors import DogestryError

BLOCK = 512
CHUNK = 1 << 20
SMALL_BLOB = 1 << 20  # blobs up to this size are kept in memory until the manifest says what they are
MAX_METADATA = 64 << 20

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class NotATar(DogestryError):
    pass


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
        return int.from_bytes(raw[1:], "big")
    text = raw.split(b"\0", 1)[0].strip(b" ")
    return int(text or b"0", 8)


def _pax_records(data):
    records, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        records[key.decode()] = value.decode("utf-8", "surrogateescape")
        pos += length
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
            stored = _number(block, 148, 8)
            computed = sum(block[:148]) + 8 * 32 + sum(block[156:])
            checksum_ok = stored == computed
        except ValueError:
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


def _gunzip_chunks(chunks):
    """Decompress gzip (concatenated members too) in pieces of at most CHUNK bytes."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    for chunk in chunks:
        data = chunk
        while data:
            out = d.decompress(data, CHUNK)
            if out:
                yield out
            if d.eof:  # a member ended: what follows it is the next one
                data = d.unused_data
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            else:
                data = d.unconsumed_tail
    out = d.flush()
    if out:
        yield out


def _unzstd_chunks(chunks):
    try:
        import zstandard
    except ImportError:
        raise DogestryError("this image has zstd-compressed layers: install the 'zstandard' Python package "
                            "(pip install zstandard) to read them") from None
    reader = zstandard.ZstdDecompressor().stream_reader(_ChunkReader(chunks), read_across_frames=True)
    while out := reader.read(CHUNK):  # bounded pieces, whatever the ratio
        yield out


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


def uncompressed_chunks(first, chunks):
    """Undo a registry/containerd compression, recognised by its magic bytes."""
    if first.startswith(GZIP_MAGIC):
        return _gunzip_chunks(chunks)
    if first.startswith(ZSTD_MAGIC):
        return _unzstd_chunks(chunks)
    return chunks


class SavedImage:
    """One image from a save stream, after scanning: config bytes and per-layer results."""

    def __init__(self, config, diff_ids, layer_results, repo_tags):
        self.config = config
        self.id = sha256_digest(config)
        self.diff_ids = diff_ids
        self.layer_results = layer_results
        self.repo_tags = repo_tags


def scan_save_stream(fileobj, store_layer, have_layer, progress=None):
    """Read a `docker save` stream once, storing layers as they pass.

    store_layer(chunks, expect_diff_id, path, size) stores an uncompressed layer (the
    entry at `path`, `size` bytes in the tar) and returns a result with `.diff_id`; have_layer(diff_id) says the destination already holds it, so a blob
    named by its diffID can be skipped unread. progress (a progress.Progress) sees each
    layer's bytes. Returns [SavedImage].
    """
    def tracked(entry, first):
        chunks = entry.chunks(first)
        return progress.track(chunks, entry.name.split("/")[-2 if entry.name.endswith("layer.tar") else -1],
                              entry.size) if progress else chunks

    small = {}       # path -> bytes: configs, manifests, small blobs
    stored = {}      # path -> store_layer result
    links = {}       # path -> target path
    seen_manifest = False
    for entry in iter_tar(fileobj):
        name = entry.name
        if entry.is_link:
            target = entry.linkname
            if entry.type == b"2" and "/" in name and not target.startswith("/"):
                target = _join(name.rsplit("/", 1)[0], target)
            links[name] = target
            continue
        if not entry.is_file:
            continue
        if name == "manifest.json":
            seen_manifest = True
        if name.endswith("/layer.tar") and name.count("/") == 1:
            first = entry.read(CHUNK)
            stored[name] = store_layer(uncompressed_chunks(first, tracked(entry, first)), None, name, entry.size)
        elif name.startswith("blobs/sha256/") and name.count("/") == 2:
            digest = "sha256:" + name.rsplit("/", 1)[1]
            if entry.size <= SMALL_BLOB:
                small[name] = entry.read(entry.size) if entry.size else b""
            elif have_layer(digest):
                entry.drain()
                if progress:
                    progress.skip(digest, entry.size)
                stored[name] = _Known(digest)
            else:
                first = entry.read(CHUNK)
                chunks = tracked(entry, first)
                compressed = first.startswith(GZIP_MAGIC) or first.startswith(ZSTD_MAGIC)
                stored[name] = store_layer(uncompressed_chunks(first, chunks), None if compressed else digest,
                                           name, entry.size)
        elif "/" not in name and (name.endswith(".json") or name in ("repositories", "oci-layout")):
            if entry.size > MAX_METADATA:
                raise DogestryError(f"{name} in the save stream is implausibly large ({entry.size} bytes)")
            small[name] = entry.read(entry.size)
        else:
            entry.drain()
    if not seen_manifest:
        raise DogestryError("the input has no manifest.json: it is not a `docker save` tar")
    try:
        manifest = json.loads(small["manifest.json"])
        if not isinstance(manifest, list):
            raise ValueError
    except ValueError:
        raise DogestryError("manifest.json in the save stream is not valid") from None

    images = []
    for item in manifest:
        config_path = _resolve(item.get("Config", ""), links)
        if config_path not in small:
            raise DogestryError(f"the save stream lacks the config {item.get('Config')!r} named by manifest.json")
        config = small[config_path]
        try:
            diff_ids = json.loads(config)["rootfs"]["diff_ids"]
        except (ValueError, KeyError, TypeError):
            raise DogestryError(f"config {config_path} in the save stream has no rootfs.diff_ids") from None
        layer_paths = item.get("Layers") or []
        if len(layer_paths) != len(diff_ids):
            raise DogestryError(f"manifest.json lists {len(layer_paths)} layers but config {config_path} has {len(diff_ids)}")
        results = []
        for path, diff_id in zip(layer_paths, diff_ids):
            path = _resolve(path, links)
            result = stored.get(path)
            if result is None and path in small:
                data = small[path]
                result = store_layer(uncompressed_chunks(data, iter([data])), None, path, len(data))
                stored[path] = result
            if result is None:
                raise DogestryError(f"the save stream lacks layer {path} named by manifest.json")
            if result.diff_id != diff_id:
                raise DogestryError(f"layer {path} in the save stream has diffID {result.diff_id}, "
                                    f"but the image config expects {diff_id}")
            results.append(result)
        images.append(SavedImage(config, diff_ids, results, item.get("RepoTags") or []))
    return images


class _Known:
    """A layer the destination already holds, skipped unread."""

    def __init__(self, diff_id):
        self.diff_id = diff_id


def _join(base, rel):
    parts = base.split("/") if base else []
    for piece in rel.split("/"):
        if piece == "..":
            if parts:
                parts.pop()
        elif piece not in ("", "."):
            parts.append(piece)
    return "/".join(parts)


def _resolve(path, links):
    for _ in range(16):
        if path not in links:
            return path
        path = links[path]
    return path


# -- writing load tars ----------------------------------------------------------------

def _header(name, size):
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _file(name, data):
    yield _header(name, len(data))
    yield data
    pad = -len(data) % BLOCK
    if pad:
        yield b"\0" * pad


class LoadImage:
    """One image to load: its config, all its layers (base first), and which to include."""

    def __init__(self, config, layers, include, tags):
        self.config = config
        self.id = sha256_digest(config)
        self.layers = layers          # LayerDescriptor, base first
        self.include = include        # set of diff_ids whose bytes go into the tar
        self.tags = tags              # [Ref]

    def oci_manifest(self):
        return oci_manifest(self.id, len(self.config), self.layers)


def oci_manifest(image_id, config_size, layers):
    """The OCI manifest we load an image with. It is deterministic, so the containerd
    store, which names images by manifest digest, gives a pulled image a predictable id."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": image_id, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer.diff_id, "size": layer.uncompressed_size} for layer in layers],
    }
    return json.dumps(manifest, separators=(",", ":")).encode()


def load_tar_chunks(images, layer_chunks):
    """Yield a `docker load` tar for images; layer_chunks(desc) yields a layer's bytes."""
    written = set()
    for image in images:
        for layer in image.layers:
            if layer.diff_id not in image.include or layer.diff_id in written:
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
        oci = image.oci_manifest()
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
