"""help: list commands by category, or show a command's (or a topic's) manual."""

import os
import shutil
import site
import subprocess
import sys

from ..errors import UsageError
from . import BY_NAME, COMMANDS, PLUMBING, PORCELAIN, TOPICS, build_parser

SUMMARY = "list the commands, or show a command's manual"


def add_arguments(p):
    p.add_argument("topic", metavar="COMMAND", nargs="?",
                   help=f"a command name, or a topic: {', '.join(TOPICS)}")


def man_page(name):
    """Path of a man page: this checkout's man/, else where an install put it (data_files
    under the environment's prefix: a venv, pipx's venv, /usr/local; or pip --user's base)."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    section = "man" + name.rsplit(".", 1)[1]
    prefixes = [sys.prefix, sys.base_prefix, site.getuserbase(), "/usr/local", "/usr"]
    candidates = [os.path.join(here, "man", name)] + [os.path.join(p, "share", "man", section, name) for p in prefixes]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    return None


def packaged_page(name):
    """The text of the copy of a page built into the package (setup.py puts man/ there as
    dogestry/man/), or None: the fallback where no share/man exists, as in dogestry.pyz,
    which may run from inside a zip file."""
    from importlib.resources import files

    try:
        return (files("dogestry") / "man" / name).read_text(encoding="utf-8")
    except (OSError, ValueError):  # not built in (a checkout), or not readable
        return None


def _overview(out):
    out.write("usage: dogestry [--config FILE] [--docker-host URL] [-q|-v] [--debug] COMMAND ...\n")
    for category, title in ((PORCELAIN, "Porcelain commands"), (PLUMBING, "Plumbing commands")):
        out.write(f"\n{title}:\n")
        for command in COMMANDS:
            if command.category == category:
                also = f" (also: {', '.join(command.aliases)})" if command.aliases else ""
                out.write(f"  {command.name:<16}{command.summary}{also}\n")
    out.write("\n'dogestry help COMMAND' shows a command's manual; 'dogestry help repository' the storage "
              "format, 'dogestry help dogestry.cfg' the config file.\n")


def run(ctx, args):
    if not args.topic:
        _overview(ctx.out)
        return 0
    if args.topic in TOPICS:
        name = TOPICS[args.topic]
    elif args.topic in BY_NAME:
        name = f"dogestry-{BY_NAME[args.topic].name}.1"  # an alias shows its command's page
    else:
        raise UsageError(f"no such command or topic {args.topic!r}; see 'dogestry help'")
    page = man_page(name)
    source = packaged_page(name) if page is None else None
    if (page or source) and shutil.which("man"):
        # man -l - reads the page from stdin: the packaged copy may live inside a zip.
        cmd, given = (["man", "-l", page], None) if page else (["man", "-l", "-"], source.encode())
        if ctx.out.isatty():
            return subprocess.run(cmd, input=given).returncode
        text = subprocess.run(cmd, input=given, capture_output=True,
                              env=dict(os.environ, MANPAGER="cat", MANWIDTH="80"))
        if text.returncode == 0:
            ctx.out.write(text.stdout.decode())
            return 0
    if page or source:  # no man(1) here: the page's source is still readable
        if source is None:
            with open(page, encoding="utf-8") as f:
                source = f.read()
        ctx.out.write(source)
        return 0
    if args.topic in TOPICS:
        raise UsageError(f"the manual page {TOPICS[args.topic]} is not installed here")
    build_parser().parse_args([args.topic, "--help"])
    return 0
