"""remote: describe a remote (kind, location, format version, refs and objects)."""

from . import remote_argument

SUMMARY = "describe a remote: kind, location, format version, refs and objects"


def add_arguments(p):
    remote_argument(p)


def run(ctx, args):
    repo = ctx.repo(args.remote)
    version = repo.format_version()
    if version is not None:
        repo.check_format()
    counts = repo.count_objects()
    rows = [("kind", repo.backend.kind), ("location", repo.location),
            ("format", version if version is not None else "none (empty)"), ("refs", counts["refs"]),
            ("images", counts["images"]), ("configs", counts["configs"]), ("layers", counts["layers"])]
    for key, value in rows:
        ctx.out.write(f"{key}: {value}\n")
    return 0
