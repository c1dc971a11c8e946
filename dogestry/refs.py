"""Docker image references: parse and validate.

Every name and tag is checked against Docker's reference grammar (distribution/reference)
before repo.ref_key turns it into an object key, so a ref can never escape the
`repositories/` tree (no `..`, no absolute path, no empty component).
"""

import re

from .errors import UsageError

# distribution/reference grammar, familiar form (no digest references).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
# Matched with fullmatch (`$` also accepts a trailing newline) and ASCII-only `\w` (Docker's
# grammar is ASCII; `é` is a word character to Python): a ref becomes an object key.
_NAME_RE = re.compile(rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_ID_RE = re.compile(r"(?:sha256:)?[0-9a-f]{1,64}")
_MAX_NAME = 255

DEFAULT_TAG = "latest"


class Ref:
    """A validated name:tag, in Docker's familiar form (`app`, `host:5000/team/app`)."""

    __slots__ = ("name", "tag")

    def __init__(self, name, tag):
        self.name = name
        self.tag = tag

    def __str__(self):
        return f"{self.name}:{self.tag}"

    def __repr__(self):
        return f"Ref({str(self)!r})"

    def __eq__(self, other):
        return isinstance(other, Ref) and (self.name, self.tag) == (other.name, other.tag)

    def __hash__(self):
        return hash((self.name, self.tag))

    @property
    def full_name(self):
        """The fully qualified name containerd records (docker.io/library/app)."""
        first = self.name.split("/", 1)[0]
        if "/" in self.name and ("." in first or ":" in first or first == "localhost"):
            return self.name
        if "/" not in self.name:
            return f"docker.io/library/{self.name}"
        return f"docker.io/{self.name}"


def familiar_name(name):
    """docker.io/library/app -> app, docker.io/team/app -> team/app, as `docker images` shows."""
    for prefix in ("docker.io/library/", "index.docker.io/library/"):
        if name.startswith(prefix) and "/" not in name[len(prefix):]:
            return name[len(prefix):]
    for prefix in ("docker.io/", "index.docker.io/"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def docker_hub_twin(ref):
    """The other spelling of a Docker Hub official image's ref (app:1 <-> library/app:1),
    which docker takes as the same image; None for any other name. A ref pushed under one
    spelling is found under the other when it is read (repo.resolve)."""
    if "/" not in ref.name:
        return Ref(f"library/{ref.name}", ref.tag)
    if ref.name.startswith("library/") and ref.name.count("/") == 1:
        return Ref(ref.name[len("library/"):], ref.tag)
    return None


def parse_ref(text, default_tag=DEFAULT_TAG):
    """`name[:tag]` -> Ref, or UsageError saying what is wrong with it."""
    if "@" in text:
        raise UsageError(f"invalid reference {text[:300]!r}: digest references are not supported; use name:tag or an image id")
    name, tag = text, default_tag
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        name, tag = text[:colon], text[colon + 1:]
    name = familiar_name(name)
    if not name or len(name) > _MAX_NAME or not _NAME_RE.fullmatch(name):
        raise UsageError(f"invalid image name {name[:300]!r} in {text[:300]!r}: use lowercase letters, digits and separators (. _ -), "
                         "components joined by /, optionally after a registry host[:port]")
    if not _TAG_RE.fullmatch(tag):
        raise UsageError(f"invalid tag {tag[:300]!r} in {text[:300]!r}: a tag is up to 128 of [A-Za-z0-9_.-], not starting with . or -")
    return Ref(name, tag)


def looks_like_id(text):
    """True for a full or abbreviated image id (`sha256:abc...` or hex)."""
    return bool(_ID_RE.fullmatch(text))


def normalize_id(text):
    """`abc` or `sha256:abc` -> `sha256:abc` (still possibly a prefix)."""
    return text if text.startswith("sha256:") else f"sha256:{text}"
