"""What every command gets: configuration, streams, verbosity, the engine and repositories.

Library functions (transfer, ...) take a Context instead of printing or reading globals,
so tests drive them in-process with their own streams and a fake engine
(tests/test_transfer_plan.py), as dulwich's porcelain takes outstream/errstream.
"""

import sys

from .backends import open_backend
from .config import Config
from .engine import Engine
from .repo import Repository


class Context:
    def __init__(self, config=None, docker_host=None, verbosity=0, out=None, err=None, codec=None, inp=None,
                 engine=None):
        self.config = config or Config()
        self.docker_host = self.config.docker_host(docker_host)
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
            self._engine = Engine(self.docker_host)
        return self._engine

    def repo(self, remote, create=False):
        """A Repository for a REMOTE argument: config alias, path or URL. Reading one that
        cannot exist (a local path with no directory) is NotFound unless create is set, as
        for the commands that write (push, save-to-repo, update-ref, sync-objects' DST)."""
        url = self.config.remote_url(remote)
        backend = open_backend(url, temp_dir=self.config.temp_dir(), config=self.config)
        return Repository(backend, codec=self.codec, create=create)

    def start_progress(self, verb):
        """A Progress line on stderr: drawn only on a terminal and without -q."""
        from .progress import Progress

        isatty = getattr(self.err, "isatty", lambda: False)()
        self.progress = Progress(self.err, isatty and self.verbosity >= 0, verb)
        return self.progress

    def info(self, message):
        """Outcomes people read; silenced by -q."""
        if self.verbosity >= 0:
            if self.progress is not None:
                self.progress.clear()
            print(message, file=self.err, flush=True)

    def detail(self, message):
        """Each decision (skipped, stored, verified); shown with -v."""
        if self.verbosity > 0:
            if self.progress is not None:
                self.progress.clear()
            print(message, file=self.err, flush=True)
