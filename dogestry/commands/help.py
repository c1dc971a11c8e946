"""help: list commands by category, or show one command's manual."""

import os
import shutil
import subprocess
import sys

from ..errors import UsageError

SUMMARY = "list the commands, or show a command's manual"


def add_arguments(p):
    p.add_argument("topic", metavar="COMMAND", nargs="?", help="a command name")


def man_page(name):
    """Path of a man page in this checkout, or where `pip install` put it (data_files)."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    section = "man" + name.rsplit(".", 1)[1]
    for candidate in (os.path.join(here, "man", name), os.path.join(sys.prefix, "share", "man", section, name)):
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
    if page and shutil.which("man"):
        if ctx.out.isatty():
            return subprocess.call(["man", "-l", page])
        text = subprocess.run(["man", "-l", page], capture_output=True, env=dict(os.environ, MANPAGER="cat",
                                                                                 MANWIDTH="80"))
        if text.returncode == 0:
            ctx.out.write(text.stdout.decode())
            return 0
    ctx.parser.parse_args([args.topic, "--help"])
    return 0
