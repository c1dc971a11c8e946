"""Digests, chain ids and a hashing reader.

A diffID is the sha256 of an uncompressed layer tar; a chain id names a layer together
with everything below it (the OCI image spec's ChainID), which is what an engine's layer
store is keyed by.
"""

import hashlib
import re

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def is_digest(text):
    return bool(_DIGEST_RE.match(text))


def sha256_digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hex_of(digest):
    """`sha256:abc` -> `abc`; the part that names files and keys."""
    if not is_digest(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return digest[7:]


def chain_ids(diff_ids):
    """ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    chains = []
    for diff_id in diff_ids:
        if not chains:
            chains.append(diff_id)
        else:
            chains.append(sha256_digest(f"{chains[-1]} {diff_id}".encode()))
    return chains
