"""Moving one layer's bytes in and out of a backend key, hashed and verified on the way.

Writing: the uncompressed tar is hashed (its diffID) and encoded with a codec while it is
read, each in its own thread. Reading: the stored bytes are checked against the descriptor's
digest and size, decoded in a thread ahead of the consumer, and the result checked against
the diffID, before the last chunk is handed on, so a `docker load` or an HTTP client fed
from here never completes with damaged content. repo.py decides the keys; this module
never does.
"""

import hashlib

from . import compress
from .digests import of_hash
from .errors import CorruptObject, DogestryError
from .image import LayerDescriptor
from .pipeline import Stage, produce

CHUNK = 1 << 20


def hold_last(chunks, verify):
    """Yield chunks one behind and run verify() before the last goes out."""
    pending = None
    for chunk in chunks:
        if pending is not None:
            yield pending
        pending = chunk
    verify()
    if pending is not None:
        yield pending


def encode(chunks, codec, write):
    """Encode an uncompressed layer, passing stored bytes to write(); return its descriptor.

    Reading (this thread), hashing and compressing+writing overlap.
    """
    comp = compress.compressor(codec)
    # Stored as is, the stored bytes are the tar: their digest is the diffID, hashed once.
    identity = codec == "none"
    diff_hash = hashlib.sha256()
    stored_hash = diff_hash if identity else hashlib.sha256()
    sizes = {"stored": 0, "uncompressed": 0}

    def encode_chunk(chunk):
        out = comp.compress(chunk) if chunk is not None else comp.flush()
        if out:
            if not identity:
                stored_hash.update(out)
            sizes["stored"] += len(out)
            write(out)

    hasher, encoder = Stage(diff_hash.update, name="dogestry-hash"), Stage(encode_chunk, name="dogestry-encode")
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
    return LayerDescriptor(of_hash(diff_hash), codec, of_hash(stored_hash),
                           sizes["stored"], sizes["uncompressed"])


def _stored_bytes(backend, key):
    reader = backend.open(key)
    try:
        while data := reader.read(CHUNK):
            yield data
    finally:
        reader.close()


def read_uncompressed(backend, key, desc, where):
    """Yield the layer's uncompressed bytes, verifying digests and sizes as they stream.

    CorruptObject is raised as soon as the bytes exceed their recorded sizes, and at the
    end when a digest differs, before the last chunk is handed on.
    """
    # Stored as is with digest == diffID, the one hash of the uncompressed bytes below
    # checks the stored digest too: hashing them twice would prove nothing more.
    identity = desc.codec == "none" and desc.digest == desc.diff_id and desc.size == desc.uncompressed_size

    def decode():
        try:
            decomp = compress.decompressor(desc.codec)
        except DogestryError:
            # A repository another dogestry wrote (zstd, gzip...): name the layer and the codec.
            raise DogestryError(f"{where} is stored with the codec {str(desc.codec)[:40]!r}, which this dogestry "
                                f"cannot decode (it knows {', '.join(compress.CODECS)}): upgrade dogestry") from None
        stored_hash = hashlib.sha256()
        size = 0
        for data in _stored_bytes(backend, key):
            size += len(data)
            if size > desc.size:
                raise CorruptObject(f"{where} is corrupt: larger than its recorded {desc.size} bytes")
            if not identity:
                stored_hash.update(data)
            try:
                yield from decomp.decompress(data)
            except ValueError as err:
                raise CorruptObject(f"{where} is corrupt: {err}") from None
        try:
            decomp.end()
        except ValueError as err:
            raise CorruptObject(f"{where} is corrupt: {err}") from None
        if (not identity and of_hash(stored_hash) != desc.digest) or size != desc.size:
            raise CorruptObject(f"{where} is corrupt: stored bytes do not match digest {desc.digest}")

    return _verified(produce(decode, depth=4, name="dogestry-decode"), desc.uncompressed_size, desc.diff_id,
                     where, "expands beyond its recorded size", "its content does not match its diffID")


def read_stored(backend, key, desc, where):
    """Yield the layer's stored bytes as they are, verified against the descriptor."""
    return _verified(_stored_bytes(backend, key), desc.size, desc.digest, where,
                     f"larger than its recorded {desc.size} bytes", f"stored bytes do not match digest {desc.digest}")


def _verified(chunks, size, digest, where, grown, differs):
    """chunks, counted and hashed as they pass: CorruptObject as soon as they exceed size,
    and before the last chunk goes out when their digest or total size differs."""
    hasher = hashlib.sha256()
    counted = {"size": 0}

    def passing():
        for chunk in chunks:
            counted["size"] += len(chunk)
            if counted["size"] > size:
                raise CorruptObject(f"{where} is corrupt: {grown}")
            hasher.update(chunk)
            yield chunk

    def verify():
        if of_hash(hasher) != digest or counted["size"] != size:
            raise CorruptObject(f"{where} is corrupt: {differs}")

    return hold_last(passing(), verify)


def describe_stored(backend, key, diff_id, where):
    """The descriptor of the bytes already stored at key, worked out by reading them back.

    Used when another writer published the data first (write-once), or a crash left data
    without its descriptor: the descriptor must describe what is stored, whichever codec
    that writer used, never the bytes we would have written.
    """
    head = b""
    reader = backend.open(key)
    try:
        head = reader.read(4)
    finally:
        reader.close()
    codec = compress.sniff_codec(head)
    decomp = compress.decompressor(codec)
    diff_hash, stored_hash = hashlib.sha256(), hashlib.sha256()
    size = uncompressed = 0
    try:
        for data in _stored_bytes(backend, key):
            size += len(data)
            stored_hash.update(data)
            for out in decomp.decompress(data):
                uncompressed += len(out)
                diff_hash.update(out)
        decomp.end()
    except ValueError as err:
        raise CorruptObject(f"{where} is corrupt: {err}") from None
    found = of_hash(diff_hash)
    if found != diff_id:
        raise CorruptObject(f"{where} is corrupt: its content has diffID {found}; delete it and push again")
    return LayerDescriptor(diff_id, codec, of_hash(stored_hash), size, uncompressed)
