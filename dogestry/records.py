"""The plumbing's record grammar: one record per line (or NUL-terminated with -z),
fields separated by a single space. Each command's man page gives its fields.

    ref record      <image-id> [<name>:<tag>]
    object record   <kind> <digest> [<more fields>...]     kind: image | config | layer
"""


def read_records(stream, nul=False):
    """Yield the records on a text stream as lists of fields, skipping blank ones."""
    data = stream.read()
    for record in data.split("\0" if nul else "\n"):
        record = record.strip("\r\n") if not nul else record
        if record.strip():
            yield record.split()


def write_ref_record(out, image_id, ref=None, nul=False):
    """`<image-id> [<name>:<tag>]`, the record push, pull, save-to-repo and resolve-ref print."""
    write_record(out, [image_id] + ([ref] if ref else []), nul)


def write_record(out, fields, nul=False):
    out.write(" ".join(str(f) for f in fields) + ("\0" if nul else "\n"))
    out.flush()
