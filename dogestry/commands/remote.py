"""remote: describe a remote (kind, location, format version, refs and objects)."""

SUMMARY = "describe a remote: kind, location, format version, refs and objects"


def add_arguments(p):
    p.add_argument("remote", metavar="REMOTE", help="remote: config alias, path or URL")


def describe(repo):
    version = repo.format_version()
    backend = repo.backend
    counts = {"layers": 0, "configs": 0, "images": 0}
    for kind in counts:
        counts[kind] = sum(1 for key in backend.list(f"{kind}/") if kind != "layers" or not key.endswith(".json"))
    refs = sum(1 for _ in backend.list("repositories/"))
    return [("kind", backend.kind), ("location", repo.location),
            ("format", version if version is not None else "none (empty)"), ("refs", refs),
            ("images", counts["images"]), ("configs", counts["configs"]), ("layers", counts["layers"])]


def run(ctx, args):
    repo = ctx.repo(args.remote)
    if repo.format_version() is not None:
        repo.check_format()
    for key, value in describe(repo):
        ctx.out.write(f"{key}: {value}\n")
    return 0
