"""The errors dogestry reports. Each becomes one line on stderr and an exit status.

Exit status follows the contract in dogestry(1): 1 for a failure (not found, verification,
engine or storage), 2 for a usage error.
"""

# A newline, or any other control character, in something a message quotes (a path or
# name typed with one) is shown escaped: an error stays the one line it promises.
CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7f]} | {0x0a: "\\n", 0x0d: "\\r", 0x09: "\\t"}


class DogestryError(Exception):
    """A failure the user can act on; str(err) is the one line we print."""

    exit_status = 1


class UsageError(DogestryError):
    """The command line or an argument is wrong."""

    exit_status = 2


class NotFound(DogestryError):
    """A ref, image or object does not exist where it was looked for."""


class CorruptObject(DogestryError):
    """Stored bytes do not match the digest or size recorded for them."""


class StorageError(DogestryError):
    """The remote storage failed (permission, network, full disk...)."""


class EngineError(DogestryError):
    """The Docker engine refused or failed a request."""
