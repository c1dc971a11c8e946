"""walk-ancestry: the objects an image needs, top layer first.

Output records (object records):
    image  <image-id>
    config <image-id>
    layer  <diff-id> <position> <chain-id>     position 1 is the base layer
With --missing-in-docker the walk stops at the first layer whose chain the engine has,
and prints nothing at all when the engine already has the image.
"""

from ..digests import chain_ids, sha256_digest
from ..dockertar import oci_manifest
from ..records import write_record

SUMMARY = "list the objects an image needs, top layer first"


def add_arguments(p):
    p.add_argument("repo", metavar="REPO", help="repository: config alias, path or URL")
    p.add_argument("image_id", metavar="IMAGE-ID", help="image id (or unique prefix, or name:tag)")
    p.add_argument("--missing-in-docker", action="store_true",
                   help="stop at the first chain the Docker engine already has")
    p.add_argument("-z", dest="nul", action="store_true", help="terminate output records with NUL")


def engine_image_id(engine, record):
    """The engine's id for this image if it has it: its config digest on a graphdriver
    engine; on the containerd store the digest of the manifest dogestry loads it with."""
    for candidate in (record.id, sha256_digest(oci_manifest(record.id, record.config_size, record.layers))):
        found = engine.inspect(candidate)
        if found is not None:
            return found["Id"]
    return None


def missing_layers(engine, record, chains=None):
    """The layers of record above the highest chain the engine already has, base first.

    The containerd image store cannot take a load tar that leaves out a layer: it records
    an image whose content is incomplete (hidden from `docker images`; a later save exports
    no layers). It keeps layers under their compressed digests, which the API does not
    reveal, so for that store every layer counts as missing.
    """
    if engine.uses_containerd_store():
        return list(record.layers)
    if chains is None:
        chains = engine.layer_chains()
    chain = chain_ids(record.diff_ids)
    have = -1
    for i in range(len(chain) - 1, -1, -1):
        if chain[i] in chains:
            have = i
            break
    return record.layers[have + 1:]


def walk(repo, image_id, engine=None):
    """Object records for image_id, top layer first; engine given -> only what it lacks."""
    record = repo.get_image(image_id)
    if engine is not None and engine_image_id(engine, record):
        return []
    layers = missing_layers(engine, record) if engine is not None else record.layers
    chains = chain_ids(record.diff_ids)
    out = [("image", record.id), ("config", record.id)]
    for position in range(len(record.layers), 0, -1):
        layer = record.layers[position - 1]
        if layer in layers:
            out.append(("layer", layer.diff_id, position, chains[position - 1]))
    return out


def run(ctx, args):
    repo = ctx.repo(args.repo)
    image_id, _ = repo.resolve(args.image_id)
    for record in walk(repo, image_id, ctx.engine if args.missing_in_docker else None):
        write_record(ctx.out, record, args.nul)
    return 0
