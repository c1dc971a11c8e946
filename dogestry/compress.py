"""Streaming codecs for stored layers.

A codec turns a stream of chunks into stored chunks and back. `lz4` is the lz4 frame
format (fast enough to keep up with `docker save`); `none` stores the layer tar as is.
The lz4 module is imported only when a codec is used, so commands that never touch
layer bytes start fast.
"""

from .errors import DogestryError

CODECS = ("lz4", "none")
# Decompressed pieces are at most this big: 1 MiB of lz4 can expand to hundreds of MiB
# (a layer of zeros), and memory must not depend on the data.
OUT_CHUNK = 1 << 20


class _Identity:
    def compress(self, data):
        return data

    def flush(self):
        return b""

    def decompress(self, data):
        """Yield the decoded bytes of data in pieces of at most OUT_CHUNK."""
        if data:
            yield data

    def end(self):
        return b""


class _Lz4Compressor:
    def __init__(self):
        import lz4.frame

        # Level 0 is lz4's fast mode: layers are mostly already-compressed files and
        # text, where higher levels cost far more CPU than they save in bytes.
        self._c = lz4.frame.LZ4FrameCompressor(compression_level=0, content_checksum=False)
        self._started = False

    def compress(self, data):
        if not self._started:
            self._started = True
            return self._c.begin() + self._c.compress(data)
        return self._c.compress(data)

    def flush(self):
        head = b"" if self._started else self._c.begin()
        self._started = True
        return head + self._c.flush()


class _Lz4Decompressor:
    """lz4 frames, one after another: lz4's own tools write and read concatenated frames (and
    skippable ones), and a writer that compresses in parallel may well store a layer so. The
    output never depends on where the chunks happen to break (python-lz4 alone drops the
    frames after the first when one chunk holds the end of one and the start of the next)."""

    def __init__(self):
        import lz4.frame

        self._new = lz4.frame.LZ4FrameDecompressor
        self._d = self._new()
        self._began = False  # bytes went into the current frame

    def decompress(self, data):
        """Yield the decoded bytes of data in pieces of at most OUT_CHUNK."""
        try:
            while data:
                if self._d.eof:
                    self._d = self._new()
                self._began = True
                out = self._d.decompress(data, max_length=OUT_CHUNK)
                if out:
                    yield out
                while not self._d.needs_input and not self._d.eof:
                    out = self._d.decompress(b"", max_length=OUT_CHUNK)
                    if not out:
                        break
                    yield out
                # What this chunk held beyond the end of a frame is the start of the next.
                data = (self._d.unused_data or b"") if self._d.eof else b""
        except RuntimeError as err:
            raise ValueError(f"lz4 frame is damaged: {err}") from None

    def end(self):
        if not (self._began and self._d.eof):
            raise ValueError("lz4 frame is truncated")
        return b""


LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"


def sniff_codec(head):
    """The codec of stored layer bytes, from their first four bytes (an lz4 frame's magic
    cannot begin a tar, whose first bytes are a file name)."""
    return "lz4" if head.startswith(LZ4_FRAME_MAGIC) else "none"


def compressor(codec):
    if codec == "lz4":
        return _Lz4Compressor()
    if codec == "none":
        return _Identity()
    raise DogestryError(f"unknown codec {codec!r}; this dogestry knows {', '.join(CODECS)}")


def decompressor(codec):
    if codec == "lz4":
        return _Lz4Decompressor()
    if codec == "none":
        return _Identity()
    raise DogestryError(f"unknown codec {codec!r}; this dogestry knows {', '.join(CODECS)}: upgrade dogestry")
