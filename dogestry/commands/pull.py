"""pull: bring images from a remote into the engine, fetching only what it lacks.

Equivalent plumbing pipeline:
    dogestry resolve-ref REMOTE IMAGE... | dogestry build-load-tar --stdin --missing-in-docker --load REMOTE

Several engines (--docker-host repeated, or --pullhosts H1,H2) make a fleet pull
(dogestry.fleet): each object is read from the remote once and loaded into every engine at
once; one status line per engine on stderr, or with --json one JSON object per engine on
stdout.
"""

import json

from ..config import without_password
from ..errors import UsageError
from ..records import write_ref_record
from ..transfer import pull
from . import held_lock, lock_options, remote_argument

SUMMARY = "pull images (and their tags) from a remote into the engine"


def add_arguments(p):
    remote_argument(p)
    p.add_argument("images", metavar="IMAGE", nargs="+", help="name[:tag] (tag defaults to latest) or image id prefix")
    p.add_argument("--pullhosts", metavar="H1,H2", action="append", default=[],
                   help="pull into each of these Docker engines (comma-separated URLs; as --docker-host repeated)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per engine on stdout (host, status, error, ...) instead of ref records")
    lock_options(p)


def _hosts(ctx, args):
    """The engines to pull into: every --docker-host and --pullhosts engine, else the one
    configured engine."""
    named = list(ctx.docker_hosts)
    for text in args.pullhosts:
        hosts = [h.strip() for h in text.split(",")]
        if not all(hosts):
            raise UsageError(f"--pullhosts {text!r}: an empty engine URL")
        named += [without_password(host) for host in hosts]  # messages name each engine by its URL
    return list(dict.fromkeys(named)) or [ctx.docker_host]


def run(ctx, args):
    hosts = _hosts(ctx, args)
    repo = ctx.repo(args.remote)
    progress = ctx.start_progress("pull")
    if len(hosts) == 1 and not args.json:
        if hosts[0] != ctx.docker_host:  # named by --pullhosts: the same plain pull, on that engine
            ctx = ctx.for_engine(hosts[0])
            ctx.prefix, ctx.progress = "", progress
        with held_lock(ctx, args):
            resolved, plan = pull(ctx, repo, args.images)
        ctx.info(f"pulled {len(resolved)} image(s) from {repo.location} ({len(plan.to_tag)} already present): "
                 f"{progress.summary('loaded')}")
        for image_id, ref in resolved:
            write_ref_record(ctx.out, image_id, ref)
        return 0
    from ..fleet import pull as fleet_pull

    with held_lock(ctx, args):
        resolved, results = fleet_pull(ctx, repo, args.images, hosts)
    progress.clear()
    for result in results:
        if args.json:
            ctx.out.write(json.dumps(result.to_json(), sort_keys=True) + "\n")
        elif result.ok:
            ctx.info(result.status_line())
        else:
            ctx.error(result.status_line())
    ok = sum(result.ok for result in results)
    ctx.info(f"pulled {len(resolved)} image(s) from {repo.location} into {ok} of {len(results)} engine(s): "
             f"{progress.summary('fetched')}")
    if not args.json and ok:
        for image_id, ref in resolved:
            write_ref_record(ctx.out, image_id, ref)
    ctx.out.flush()
    return 0 if ok == len(results) else 1
