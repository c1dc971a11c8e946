"""serve: a remote as a read-only OCI registry on loopback, for docker pull, skopeo, ctr."""

SUMMARY = "serve a remote as a read-only OCI registry (docker pull, skopeo, ctr)"


def add_arguments(p):
    p.add_argument("remote", metavar="REMOTE", help="remote: config alias, path or URL")
    p.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:5000",
                   help="address to listen on (default 127.0.0.1:5000; port 0 picks a free one)")


def run(ctx, args):
    from ..serve import serve  # http.server only for this command

    return serve(ctx, args.remote, args.listen)
