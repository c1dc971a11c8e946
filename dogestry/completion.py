"""Shell completion: argcomplete completers for remotes, engine images and remote refs.

Completers that ask an engine or a remote run under a short time bound, so a slow or
unreachable one never hangs the shell; they then offer nothing.
"""

import threading

TIME_BOUND = 2.0  # seconds a completer may spend asking an engine or a remote


def _bounded(fn):
    result = []

    def run():
        try:
            result.extend(fn())
        except Exception:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(TIME_BOUND)
    return list(result) if not thread.is_alive() else []


def _config(parsed_args):
    from .config import Config

    try:
        return Config.load(getattr(parsed_args, "config", None))
    except Exception:
        return Config()


def remotes(prefix, parsed_args, **kwargs):
    """Remote aliases from dogestry.cfg, then local paths."""
    names = [n for n in _config(parsed_args).remotes() if n.startswith(prefix)]
    from argcomplete.completers import DirectoriesCompleter

    return names + [p for p in DirectoriesCompleter()(prefix) if p not in names]


def engine_images(prefix, parsed_args, **kwargs):
    """name:tag of the images in the Docker engine (for push)."""
    def ask():
        from .engine import Engine

        engine = Engine(_config(parsed_args).docker_host(getattr(parsed_args, "docker_host", None)))
        return [tag for tag in engine.tagged_names() if tag.startswith(prefix)]
    return _bounded(ask)


def remote_refs(prefix, parsed_args, **kwargs):
    """name:tag refs of the remote named earlier on the line (for pull and plumbing)."""
    remote = getattr(parsed_args, "remote", None)
    if not remote:
        return []

    def ask():
        from .context import Context

        ctx = Context(_config(parsed_args))
        return [str(ref) for _, ref in ctx.repo(remote).list_refs() if str(ref).startswith(prefix)]
    return _bounded(ask)

