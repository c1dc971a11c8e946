"""The command table and the parser built from it.

One table gives every command its category, module and completers; it drives parsing,
`dogestry help`, completion and the man index (tests/test_docs.py). cli.py runs the
parser; commands/help.py reads the table. Each command module has SUMMARY,
add_arguments(parser) and run(ctx, args): it parses arguments and reads or writes
records, and calls the library (transfer, repo, ...) for everything else. No command
module imports another.
"""

import argparse
import importlib
import os
import re

from .. import __version__
from ..completion import engine_images, remote_refs, remotes
from ..errors import UsageError

PORCELAIN, PLUMBING = "porcelain", "plumbing"


class Command:
    def __init__(self, name, category, module, completers=None, aliases=()):
        self.name, self.category, self.module_name = name, category, module
        self.completers = completers or {}
        self.aliases = tuple(aliases)  # other words that run it (argparse aliases); its page is the name's

    @property
    def module(self):
        return importlib.import_module(f"dogestry.commands.{self.module_name}")

    @property
    def summary(self):
        # `dogestry help` lists every summary: read the one line from the module's source
        # rather than importing every command (and through them the transfer library).
        try:
            with open(os.path.join(os.path.dirname(__file__), f"{self.module_name}.py"), encoding="utf-8") as f:
                found = _SUMMARY_LINE.search(f.read())
        except OSError:  # a zipped or frozen install: importing still works
            found = None
        return found.group(1) if found else self.module.SUMMARY


_SUMMARY_LINE = re.compile(r'^SUMMARY = "([^"\\]*)"$', re.M)


def help_topics(prefix, **kwargs):
    """Commands and the section 5 topics, for `dogestry help <TAB>`."""
    return [name for name in [*BY_NAME, *TOPICS] if name.startswith(prefix)]


_REMOTE = {"remote": remotes}
_REFS = {"remote": remotes, "images": remote_refs}

COMMANDS = [
    Command("push", PORCELAIN, "push", {"remote": remotes, "images": engine_images}),
    Command("pull", PORCELAIN, "pull", _REFS),
    Command("remote", PORCELAIN, "remote", _REMOTE),
    Command("share", PORCELAIN, "share", _REFS),
    Command("serve", PORCELAIN, "serve", _REMOTE),
    Command("list", PORCELAIN, "list_tags", _REMOTE, aliases=["ls"]),
    Command("tag", PORCELAIN, "tag", {"remote": remotes, "source": remote_refs}),
    Command("untag", PORCELAIN, "untag", {"remote": remotes, "refs": remote_refs}, aliases=["rmtag"]),
    Command("gc", PORCELAIN, "gc", _REMOTE),
    Command("verify", PORCELAIN, "verify", _REFS, aliases=["fsck"]),
    Command("help", PORCELAIN, "help", {"topic": help_topics}),
    Command("completion", PORCELAIN, "completion"),
    Command("save-to-repo", PLUMBING, "save_to_repo", {"remote": remotes, "images": engine_images}),
    Command("resolve-ref", PLUMBING, "resolve_ref", _REFS),
    Command("walk-ancestry", PLUMBING, "walk_ancestry", _REFS),
    Command("sync-objects", PLUMBING, "sync_objects", {"src": remotes, "dst": remotes}),
    Command("build-load-tar", PLUMBING, "build_load_tar", _REFS),
    Command("update-ref", PLUMBING, "update_ref", _REFS),
    Command("show-ref", PLUMBING, "show_ref", _REMOTE),
]
BY_NAME = {name: c for c in COMMANDS for name in (c.name, *c.aliases)}
GLOBAL_WITH_VALUE = {"--config", "--docker-host"}
# Section 5 pages `dogestry help TOPIC` shows besides the commands.
TOPICS = {"repository": "dogestry-repository.5", "dogestry.cfg": "dogestry.cfg.5"}


class Parser(argparse.ArgumentParser):
    def error(self, message):
        # "pull: unrecognized arguments", printed by cli.main after its own "dogestry: ".
        where = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        raise UsageError(f"{where}{message}")


class _DockerHost(argparse.Action):
    """--docker-host URL: the last one given is the engine (docker_host), and every one is
    kept in order for a fleet pull. Given after the command, the hosts go to another list,
    because a subcommand's namespace replaces the main one's values: cli.py joins them."""

    def __init__(self, option_strings, dest, hosts_dest, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.hosts_dest = hosts_dest

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, self.hosts_dest, [*(getattr(namespace, self.hosts_dest, None) or []), values])


def docker_hosts(args):
    """Every --docker-host of a parsed command line, before and after the command, in order
    (each without the password of a `user:password@`, which messages would print)."""
    from ..config import without_password

    return [without_password(host) for host in (*(getattr(args, "docker_hosts", None) or []),
                                                 *(getattr(args, "docker_hosts_after", None) or []))]


def _global_options(parser, after_command=False):
    """--config, --docker-host, -q/-v, --debug: accepted before or after the command. After
    it they default to SUPPRESS, so a value given before the command is not overwritten."""
    default = argparse.SUPPRESS if after_command else None
    flag = argparse.SUPPRESS if after_command else False
    parser.add_argument("--config", metavar="FILE", default=default,
                        help="config file (default: $DOGESTRY_CONFIG or ./dogestry.cfg)")
    parser.add_argument("--docker-host", metavar="URL", default=default, action=_DockerHost,
                        hosts_dest="docker_hosts_after" if after_command else "docker_hosts",
                        help="Docker engine, e.g. unix:///var/run/docker.sock (pull: repeat it to pull into "
                             "several engines at once)")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-q", "--quiet", action="store_true", default=flag, help="print only results and errors")
    noise.add_argument("-v", "--verbose", action="store_true", default=flag, help="report each decision on stderr")
    parser.add_argument("--debug", action="store_true", default=flag, help="show tracebacks for errors")


def is_global_option(action):
    return action.dest in ("config", "docker_host", "quiet", "verbose", "debug")


def remote_argument(p, help_text="remote: config alias, path or URL"):
    p.add_argument("remote", metavar="REMOTE", help=help_text)


def nul_option(p, help_text="NUL-terminated records"):
    p.add_argument("-z", dest="nul", action="store_true", help=help_text)


def stdin_option(p, help_text):
    p.add_argument("--stdin", action="store_true", help=help_text)


def lock_options(p):
    """--lockfile and --lock-timeout, the same on every command that takes them (push, pull, untag, gc)."""
    p.add_argument("--lockfile", metavar="PATH",
                   help="run only while holding an exclusive lock on PATH (a local file): a second run waits")
    p.add_argument("--lock-timeout", metavar="DURATION",
                   help="give up waiting for --lockfile after DURATION: N[s|m|h|d] (default: wait)")


def held_lock(ctx, args):
    """The context manager that holds args.lockfile (nothing without one) for a command's run."""
    from ..durations import parse_duration
    from ..operations import lockfile

    timeout = None
    if args.lockfile == "":
        # As from --lockfile "$LOCK" with LOCK unset: running unlocked would be silent.
        raise UsageError("--lockfile needs a path; an empty one would lock nothing")
    if args.lock_timeout is not None:
        if not args.lockfile:
            raise UsageError("--lock-timeout needs --lockfile")
        timeout = parse_duration(args.lock_timeout, "--lock-timeout")
    return lockfile(ctx, args.lockfile, timeout)


def build_parser(only=None):
    """The parser; with only (command names), just those commands' subparsers, so a run
    imports the one command module it needs (cli) and `--version` none."""
    parser = Parser(prog="dogestry", description="Ship Docker images through dumb storage, without a registry.",
                    epilog="Run 'dogestry help' for the commands by category.")
    parser.add_argument("--version", action="version", version=f"dogestry {__version__}")
    _global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS if only is None else [BY_NAME[name] for name in only]:
        module = command.module
        p = sub.add_parser(command.name, aliases=list(command.aliases), help=module.SUMMARY,
                           description=module.SUMMARY)
        module.add_arguments(p)
        _global_options(p.add_argument_group("global options"), after_command=True)
        for action in p._actions:
            if action.dest in command.completers:
                action.completer = command.completers[action.dest]
        p.set_defaults(func=module.run)
    return parser
