"""Digests and chain ids: the one place that spells `sha256:<hex>`.

A diffID is the sha256 of an uncompressed layer tar; a chain id names a layer together
with everything below it (the OCI image spec's ChainID), which is what an engine's layer
store is keyed by.
"""

import hashlib
import re

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


def is_digest(text):
    # fullmatch: `$` would also accept a trailing newline, which then reaches key names
    return isinstance(text, str) and bool(_DIGEST_RE.fullmatch(text))


def sha256_digest(data):
    return of_hash(hashlib.sha256(data))


def of_hash(hasher):
    """`sha256:<hex>` of a finished hashlib.sha256 object."""
    return "sha256:" + hasher.hexdigest()


def from_hex(hex_part):
    """`abc...` (a file or key name) -> `sha256:abc...`, or None when it is not a digest."""
    digest = "sha256:" + hex_part
    return digest if is_digest(digest) else None


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
