"""The plumbing's record grammar: one record per line (or NUL-terminated with -z),
fields separated by a single space. Each command's man page gives its fields.

    ref record      <image-id> [<name>:<tag>]
    object record   <kind> <digest> [<more fields>...]     kind: image | config | layer

Records stream: a consumer handles each record as soon as its terminator arrives, so a
pipeline's stages overlap.
"""

from .digests import is_digest
from .errors import UsageError

OBJECT_KINDS = ("image", "config", "layer")  # what an object record names first
MAX_RECORD = 64 << 10  # no record of ours comes near this; a longer one is not a record


def read_records(stream, nul=False):
    """Yield the records on a text stream as lists of fields, skipping blank ones.

    Input that is not UTF-8 is a UsageError: records are ids, digests and refs, all ASCII.
    """
    try:
        yield from _records(stream, nul)
    except UnicodeDecodeError as err:
        raise UsageError(f"an input record is not valid UTF-8 (byte 0x{err.object[err.start]:02x}); expected "
                         "'<image-id> [<name>:<tag>]' or '<kind> <digest> ...' records") from None


def read_ref_records(stream, nul=False):
    """Ref records `<image-id> [<name>:<tag>]`: a third field, or an object record (the
    output of the wrong command), is a UsageError rather than a record half taken."""
    for fields in read_records(stream, nul):
        if len(fields) > 2 or (len(fields) == 2 and fields[0] in OBJECT_KINDS and is_digest(fields[1])):
            raise UsageError(f"bad ref record {' '.join(fields)[:200]!r}; expected '<image-id> [<name>:<tag>]', "
                             "one per line (or NUL-terminated with -z)")
        yield fields


def _record(text, nul):
    # No field of ours holds a NUL or a line break: a record with one inside is the other
    # mode's input (a -z stream read by lines, newline records read with -z), and splitting
    # it on whitespace would silently take its first record and drop the rest.
    if not nul and "\0" in text:
        raise UsageError("an input record contains a NUL byte; for NUL-terminated records use -z")
    if nul and ("\n" in text.strip() or "\r" in text.strip()):
        raise UsageError("a NUL-terminated input record contains a line break; without -z, "
                         "records are one per line")
    return text.split()


def _records(stream, nul):
    if not nul:
        while line := stream.readline(MAX_RECORD + 1):
            if len(line) > MAX_RECORD:
                raise UsageError(f"an input record is longer than {MAX_RECORD} characters; expected "
                                 "'<image-id> [<name>:<tag>]' or '<kind> <digest> ...' records")
            if line.strip():
                yield _record(line, nul)
        return
    pending = ""
    for data in _pieces(stream):
        pending += data
        *records, pending = pending.split("\0")
        for record in records:
            if record.strip():
                yield _record(record, nul)
        if len(pending) > MAX_RECORD:
            raise UsageError(f"an input record is longer than {MAX_RECORD} characters")
    if pending.strip():
        yield _record(pending, nul)


def _pieces(stream):
    """Text as it arrives: read1 on the byte stream under a text one, so a NUL-terminated
    record is handled without waiting for a full buffer."""
    raw = getattr(stream, "buffer", None)
    if raw is None or not hasattr(raw, "read1"):
        while data := stream.read(4096):
            yield data
        return
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()  # strict, as in the line mode
    while data := raw.read1(4096):
        yield decoder.decode(data)
    yield decoder.decode(b"", final=True)


def write_ref_record(out, image_id, ref=None, nul=False):
    """`<image-id> [<name>:<tag>]`, the record push, pull, save-to-repo and resolve-ref print."""
    write_record(out, [image_id] + ([ref] if ref else []), nul)


def write_record(out, fields, nul=False):
    out.write(" ".join(str(f) for f in fields) + ("\0" if nul else "\n"))
    out.flush()
