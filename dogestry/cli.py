# PYTHON_ARGCOMPLETE_OK
"""The entry point: parse with the command table (dogestry.commands), run, report.

Exit status: 0 success, 1 failure, 2 usage error. Errors are one line on stderr; a
traceback only with --debug. An unknown COMMAND runs `dogestry-COMMAND` from PATH.
"""

import io
import os
import re
import shutil
import signal
import sys

from .commands import BY_NAME, GLOBAL_WITH_VALUE, build_parser, docker_hosts
from .errors import CONTROL_ESCAPES, DogestryError, UsageError


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


def _check_positionals(parser, args):
    """argparse before Python 3.12 takes a `--` given as a value out of the values it
    collects: `pull R -- --` gave pull no images, and `walk-ancestry R -- --` a list where
    one id belongs. Such an argument is missing, as argparse says of an absent one."""
    sub = next(a for a in parser._actions if a.dest == "command")
    command = sub.choices.get(args.command)
    for action in command._actions if command is not None else ():
        value = getattr(args, action.dest, None)
        if not action.option_strings and ((action.nargs is None and isinstance(value, list))
                                          or (action.nargs == "+" and value == [])):
            raise UsageError(f"{args.command}: the following arguments are required: {action.metavar or action.dest}")


def _intermix(parser, args, extra):
    """Words after an option that belong to the command's trailing `nargs="*"` positional
    (`dogestry list REMOTE --no-trunc 'app*'`), which argparse leaves over; anything else
    is an error naming the command."""
    command = next(a for a in parser._actions if a.dest == "command").choices[args.command]
    trailing = [a for a in command._actions if not a.option_strings and a.nargs in ("*", "+")]
    if trailing and not any(word.startswith("-") for word in extra):
        setattr(args, trailing[-1].dest, list(getattr(args, trailing[-1].dest) or []) + extra)
        return
    raise UsageError(f"{args.command}: unrecognized arguments: {' '.join(extra)}")


class _Stdout(io.RawIOBase):
    """fd 1 for sys.stdout: a write the system refuses (a full disk, /dev/full, EIO) is one
    line naming standard output, not an internal error; a reader gone stays BrokenPipeError."""

    def __init__(self, fd):
        super().__init__()
        self.fd = fd

    def writable(self):
        return True

    def fileno(self):
        return self.fd

    def isatty(self):
        return os.isatty(self.fd)

    def write(self, data):
        try:
            return os.write(self.fd, data)
        except BrokenPipeError:
            raise
        except OSError as err:
            # What is still buffered goes nowhere, so the flush at exit does not fail again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.fd)
            os.close(devnull)
            raise DogestryError(f"cannot write to standard output: {err.strerror or err}") from None


def _standard_streams():
    """Make fds 0-2 safe to use. One the caller closed (`>&-`, `<&-`) gets /dev/null, so no
    file opened later takes its number and output meant for it goes nowhere (stdin reads
    as empty); stdout's writes go through _Stdout."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)  # the lowest free fd: this one
    if sys.stdin is None:
        sys.stdin = open(0, "r", closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False, errors="backslashreplace")
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)
    old = sys.stdout
    if _fd(old) != 1 or isinstance(getattr(old, "buffer", None), io.BufferedWriter) and \
            isinstance(old.buffer.raw, _Stdout):
        return  # replaced by a caller (tests, an embedding program), or done already
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(_Stdout(1)), encoding=old.encoding, errors=old.errors,
                                  line_buffering=old.line_buffering)


def _fd(stream):
    try:
        return stream.fileno()
    except (OSError, ValueError, AttributeError):
        return None


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread like Ctrl-C's KeyboardInterrupt, so the
    same `finally` blocks remove spools, abort uploads and leave no ref to anything partial."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum, frame):
    raise Terminated(signum)


def _catch_termination():
    # Left alone when inherited ignored (nohup ignores SIGHUP) or set by an embedding program.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            if signal.getsignal(sig) == signal.SIG_DFL:
                signal.signal(sig, _terminate)
        except ValueError:  # not the main thread: the caller owns signals
            return


def _usable_umask():
    """Keep the owner's bits out of the umask. Objects are written 0644 whatever it is, but
    under umask 0777 the directories holding them, spools and lock files were made mode 000:
    the user's next step in a directory of its own failed with "permission denied". Set once,
    here, before any thread: the umask is the whole process's."""
    old = os.umask(0o022)
    os.umask(old & ~0o700)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        _catch_termination()
        _standard_streams()
        _usable_umask()
        status = _main(argv)
        sys.stdout.flush()  # here, where a failure is still one line, not at interpreter exit
        return status
    except DogestryError as err:
        if debug:
            raise
        print(f"dogestry: {_one_line(str(err))}", file=sys.stderr)
        return err.exit_status
    except Terminated as err:
        print(f"dogestry: terminated by {signal.Signals(err.signum).name}", file=sys.stderr)
        return 128 + err.signum
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
        print(f"dogestry: internal error: {type(err).__name__}: {_one_line(str(err))} (rerun with --debug for details)",
              file=sys.stderr)
        return 1


_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*):[^/@\s]*@")


def _one_line(text, limit=1000):
    """An error as the one line the rule promises, whatever it quotes: a newline or other
    control character (a path or name typed with one) is shown escaped, the password of any
    `scheme://user:password@` left in it is dropped, and one that quotes something huge (a
    4,000-character --lockfile path) is cut in the middle."""
    text = _PASSWORD.sub(r"\1@", text).translate(CONTROL_ESCAPES)
    return text if len(text) <= limit else f"{text[:limit // 2]} ... {text[-limit // 2:]}"


def _subparsers_needed(argv, word):
    """Which commands' subparsers this run needs: building one imports its module (and the
    library under it), so `--version` and a command's run import only what they use.
    Completion and a top-level --help list every command."""
    if "_ARGCOMPLETE" in os.environ or (word is None and ("-h" in argv or "--help" in argv)):
        return None
    return [word] if word is not None else []


def _check_completion_environment(environ):
    """The variables a shell sets for completion: argcomplete reads them with int() and
    environ[...], so one missing or not a number was an internal error."""
    for name in ("_ARGCOMPLETE", "COMP_POINT"):
        value = environ.get(name, "")
        if not re.fullmatch(r"-?[0-9]{1,18}", value):
            raise UsageError(f"shell completion: {name} {value[:80]!r} is not a number")
    if "COMP_LINE" not in environ:
        raise UsageError("shell completion: COMP_LINE is not set")


def _main(argv):
    word = _command_word(argv)
    if word is not None and word not in BY_NAME:
        _run_external(argv, word)
    parser = build_parser(_subparsers_needed(argv, word))
    if "_ARGCOMPLETE" in os.environ:
        _check_completion_environment(os.environ)
        import argcomplete

        argcomplete.autocomplete(parser)
    args, extra = parser.parse_known_args(argv)
    if not args.command:
        raise UsageError("no command given; see 'dogestry help'")
    if extra:
        _intermix(parser, args, extra)
    _check_positionals(parser, args)
    if args.quiet and args.verbose:
        raise UsageError("-q and -v contradict each other")
    from .config import Config
    from .context import Context

    ctx = Context(Config.load(args.config), docker_host=args.docker_host, docker_hosts=docker_hosts(args),
                  verbosity=-1 if args.quiet else (1 if args.verbose else 0))
    return args.func(ctx, args) or 0


if __name__ == "__main__":
    sys.exit(main())
