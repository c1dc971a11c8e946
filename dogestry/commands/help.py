"""help: list commands by category, or show one command's manual."""

import os
import shutil
import subprocess

from ..errors import UsageError

SUMMARY = "list the commands, or show a command's manual"


def add_arguments(p):
    p.add_argument("topic", metavar="COMMAND", nargs="?", help="a command name")


def man_page(name):
    """Path of a man page shipped with this checkout or installed alongside the package."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for candidate in (os.path.join(here, "man", name),):
        if os.path.exists(candidate):
            return candidate
    return None


def run(ctx, args):
    from ..cli import BY_NAME, COMMANDS, PLUMBING, PORCELAIN

    if not args.topic:
        ctx.out.write("usage: dogestry [--config FILE] [--docker-host URL] [-q|-v] [--debug] COMMAND ...\n")
        for category, title in ((PORCELAIN, "Porcelain commands"), (PLUMBING, "Plumbing commands")):
            ctx.out.write(f"\n{title}:\n")
            for command in COMMANDS:
                if command.category == category:
                    ctx.out.write(f"  {command.name:<16}{command.summary}\n")
        ctx.out.write("\n'dogestry help COMMAND' shows a command's manual; man dogestry-repository for the storage format.\n")
        return 0
    if args.topic not in BY_NAME:
        raise UsageError(f"no such command {args.topic!r}; see 'dogestry help'")
    page = man_page(f"dogestry-{args.topic}.1")
    if page and shutil.which("man") and ctx.out.isatty():
        return subprocess.call(["man", "-l", page])
    ctx.parser.parse_args([args.topic, "--help"])
    return 0
