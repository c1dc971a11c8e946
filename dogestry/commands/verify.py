"""verify (fsck): read back what the refs reach and say what is wrong, one line per problem."""

from ..operations import verify
from ..progress import human
from . import remote_argument

SUMMARY = "check that what the tags (or named images) reach is present and intact"


def add_arguments(p):
    remote_argument(p)
    p.add_argument("images", metavar="IMAGE", nargs="*", help="check only these: name[:tag] or image id prefix")
    p.add_argument("--all", dest="everything", action="store_true",
                   help="also check the objects no ref reaches")


def run(ctx, args):
    repo = ctx.repo(args.remote)

    def say(line):
        ctx.out.write(line + "\n")
        ctx.out.flush()

    result = verify(repo, args.images, args.everything, say)
    ctx.info(f"verified {len(result.checked_images)} image(s), {result.layers_read} layer(s) "
             f"({human(result.layer_bytes)} stored) in {repo.location}: "
             f"{result.problems or 'no'} problem(s)")
    return 1 if result.problems else 0
