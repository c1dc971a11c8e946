# PYTHON_ARGCOMPLETE_OK
"""The command line: one command table drives parsing, `dogestry help`, completion and
the man index.

Exit status: 0 success, 1 failure, 2 usage error. Errors are one line on stderr; a
traceback only with --debug. An unknown COMMAND runs `dogestry-COMMAND` from PATH.
"""

import argparse
import importlib
import os
import shutil
import sys

from . import __version__
from .errors import DogestryError, UsageError

PORCELAIN, PLUMBING = "porcelain", "plumbing"


class Command:
    def __init__(self, name, category, module):
        self.name, self.category, self.module_name = name, category, module

    @property
    def module(self):
        return importlib.import_module(f"dogestry.commands.{self.module_name}")

    @property
    def summary(self):
        return self.module.SUMMARY


COMMANDS = [
    Command("push", PORCELAIN, "push"),
    Command("pull", PORCELAIN, "pull"),
    Command("remote", PORCELAIN, "remote"),
    Command("share", PORCELAIN, "share"),
    Command("serve", PORCELAIN, "serve"),
    Command("help", PORCELAIN, "help"),
    Command("completion", PORCELAIN, "completion"),
    Command("save-to-repo", PLUMBING, "save_to_repo"),
    Command("resolve-ref", PLUMBING, "resolve_ref"),
    Command("walk-ancestry", PLUMBING, "walk_ancestry"),
    Command("sync-objects", PLUMBING, "sync_objects"),
    Command("build-load-tar", PLUMBING, "build_load_tar"),
    Command("update-ref", PLUMBING, "update_ref"),
    Command("show-ref", PLUMBING, "show_ref"),
]
BY_NAME = {c.name: c for c in COMMANDS}
GLOBAL_WITH_VALUE = {"--config", "--docker-host"}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def global_options(parser):
    parser.add_argument("--config", metavar="FILE", help="config file (default: $DOGESTRY_CONFIG or ./dogestry.cfg)")
    parser.add_argument("--docker-host", metavar="URL", help="Docker engine, e.g. unix:///var/run/docker.sock")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-q", "--quiet", action="store_true", help="print only results and errors")
    noise.add_argument("-v", "--verbose", action="store_true", help="report each decision on stderr")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")


def build_parser():
    parser = _Parser(prog="dogestry", description="Ship Docker images through dumb storage, without a registry.",
                     epilog="Run 'dogestry help' for the commands by category.")
    parser.add_argument("--version", action="version", version=f"dogestry {__version__}")
    global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        module = command.module
        p = sub.add_parser(command.name, help=module.SUMMARY, description=module.SUMMARY)
        module.add_arguments(p)
        _attach_completers(p)
        p.set_defaults(func=module.run)
    return parser


def _attach_completers(parser):
    """Completers by argument role, so every command that takes a REMOTE completes it alike."""
    from . import completion

    for action in parser._actions:
        if action.dest in ("remote", "repo", "src", "dst"):
            action.completer = completion.remotes
        elif parser.prog.endswith(("push", "save-to-repo")) and action.dest == "images":
            action.completer = completion.engine_images
        elif action.dest in ("images", "refs", "image_id", "image_ids", "ref"):
            action.completer = completion.remote_refs


def _command_word(argv):
    """The first word that is not a global option (or its value)."""
    skip = False
    for word in argv:
        if skip:
            skip = False
            continue
        if word in GLOBAL_WITH_VALUE:
            skip = True
            continue
        if word.startswith("-"):
            continue
        return word
    return None


def _run_external(argv, word):
    """git-style extension: `dogestry foo ARGS` runs `dogestry-foo ARGS` from PATH."""
    program = shutil.which(f"dogestry-{word}")
    if program is None:
        raise UsageError(f"'{word}' is not a dogestry command and no dogestry-{word} is on PATH; see 'dogestry help'")
    index = argv.index(word)
    os.execv(program, [program] + argv[index + 1:])


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        return _main(argv)
    except DogestryError as err:
        if debug:
            raise
        print(f"dogestry: {err}", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        print("dogestry: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`| head`): not our failure to report.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as err:  # anything unexpected is still one line unless --debug
        if debug:
            raise
        print(f"dogestry: internal error: {type(err).__name__}: {err} (rerun with --debug for details)", file=sys.stderr)
        return 1


def _main(argv):
    word = _command_word(argv)
    if word is not None and word not in BY_NAME:
        _run_external(argv, word)
    parser = build_parser()
    try:
        import argcomplete

        argcomplete.autocomplete(parser)
    except ImportError:
        pass
    args = parser.parse_args(argv)
    if not args.command:
        raise UsageError("no command given; see 'dogestry help'")
    from .config import Config
    from .context import Context

    ctx = Context(Config.load(args.config), docker_host=args.docker_host,
                  verbosity=-1 if args.quiet else (1 if args.verbose else 0))
    ctx.parser = parser
    return args.func(ctx, args) or 0


if __name__ == "__main__":
    sys.exit(main())
