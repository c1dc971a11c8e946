"""What every command gets: configuration, streams, verbosity, the engine and repositories.

Library functions (transfer, ...) take a Context instead of printing or reading globals,
so tests drive them in-process with their own streams and a fake engine
(tests/test_transfer_plan.py), as dulwich's porcelain takes outstream/errstream.
"""

import copy
import sys
import threading

from .config import Config


_PRINT = threading.Lock()  # the engines of a fleet pull report from their own threads


class Context:
    def __init__(self, config=None, docker_host=None, verbosity=0, out=None, err=None, codec=None, inp=None,
                 engine=None, docker_hosts=None):
        self.config = config or Config()
        self.docker_host = self.config.docker_host(docker_host)
        # Every --docker-host given, in order: a pull into several is a fleet pull.
        self.docker_hosts = list(dict.fromkeys(docker_hosts or []))
        self.prefix = ""
        self.verbosity = verbosity
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.inp = inp or sys.stdin
        self.codec = codec or self.config.codec()
        self._engine = engine
        self.progress = None

    @property
    def engine(self):
        if self._engine is None:
            from .engine import Engine  # not imported by commands that never use one (help)

            from .backends.retry import stall_timeout

            self._engine = Engine(self.docker_host, stall=stall_timeout(self.config))
        return self._engine

    def for_engine(self, host):
        """The Context for one engine of a fleet pull: the same config and streams, its own
        engine, no progress line (the loads run at once), and messages led by the host."""
        child = copy.copy(self)
        child.docker_host, child.docker_hosts, child._engine, child.progress = host, [host], None, None
        child.prefix = f"{child.engine.host}: "  # the engine names the default socket when host is None
        return child

    def repo(self, remote, create=False):
        """A Repository for a REMOTE argument: config alias, path or URL. Reading one that
        cannot exist (a local path with no directory) is NotFound unless create is set, as
        for the commands that write (push, save-to-repo, update-ref, sync-objects' DST)."""
        url = self.config.remote_url(remote)
        from .backends import open_backend
        from .repo import Repository

        backend = open_backend(url, temp_dir=self.config.temp_dir(), config=self.config)
        return Repository(backend, codec=self.codec, create=create)

    def _say(self, message):
        with _PRINT:
            if self.progress is not None:
                self.progress.clear()
            self.err.write(f"{self.prefix}{message}\n")
            self.err.flush()

    def start_progress(self, verb):
        """A Progress line on stderr: drawn only on a terminal and without -q."""
        from .progress import Progress

        isatty = getattr(self.err, "isatty", lambda: False)()
        self.progress = Progress(self.err, isatty and self.verbosity >= 0, verb)
        return self.progress

    def info(self, message):
        """Outcomes people read; silenced by -q."""
        if self.verbosity >= 0:
            self._say(message)

    def error(self, message):
        """A failure that does not end the command (one engine of a fleet pull); never silenced."""
        self._say(message)

    def detail(self, message):
        """Each decision (skipped, stored, verified); shown with -v."""
        if self.verbosity > 0:
            self._say(message)
