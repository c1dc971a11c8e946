"""remote: describe a remote (kind, location, format version, refs and objects)."""

from . import remote_argument

SUMMARY = "describe a remote: kind, location, format version, refs and objects"


def add_arguments(p):
    remote_argument(p)


def run(ctx, args):
    from ..progress import human

    repo = ctx.repo(args.remote)
    version = repo.format_version()
    repo.check_format()
    counts = repo.count_objects()
    rows = [("kind", repo.backend.kind), ("location", repo.location),
            ("format", version if version is not None else "none (empty)"), ("refs", counts["refs"]),
            ("images", counts["images"]), ("configs", counts["configs"]), ("layers", counts["layers"])]
    leftovers = list(repo.backend.leftovers())
    known = [size for _, size, _ in leftovers if size is not None]
    rows.append(("leftovers", f"{len(leftovers)} ({human(sum(known))}); a write removes those over an hour old"
                 if leftovers else "0"))
    for key, value in rows:
        ctx.out.write(f"{key}: {value}\n")
    for what, size, age in leftovers:
        ctx.out.write(f"  {what}  {human(size) if size is not None else '?'}  {age / 3600:.1f} h old\n")
    return 0
