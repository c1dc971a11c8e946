"""dogestry.cfg: a git-config-like INI file (dogestry.cfg(5)).

    [remote "central"]
      url = /srv/images
    [docker]
      connection = unix:///var/run/docker.sock
    [compressor]
      lz4 = true
    [dogestry]
      temp-dir = /var/tmp

Looked up at --config FILE, else $DOGESTRY_CONFIG, else ./dogestry.cfg; no file is normal.
We parse it ourselves because configparser treats git-style indented keys as continuation
lines.
"""

import os
import re
import stat

from .errors import DogestryError, UsageError

_SECTION_RE = re.compile(r'^\[\s*([A-Za-z0-9_.-]+)(?:\s+"((?:[^"\\]|\\.)*)")?\s*\]$')
_KEY_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*)\s*(?:=\s*(.*))?$")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_TRUE = {"true", "yes", "on", "1"}
MAX_FILE = 1 << 20  # a config of remotes and a few options; a larger file is not one


def _show(line, limit=80):
    """A line quoted for an error message: one line, and short whatever the input."""
    return repr(line[:limit]) + ("..." if len(line) > limit else "")
_FALSE = {"false", "no", "off", "0"}


def _strip_comment(value):
    out, quoted = [], False
    for i, ch in enumerate(value):
        if ch == '"':
            quoted = not quoted
            continue
        if not quoted and ch in "#;" and (i == 0 or value[i - 1].isspace()):
            break
        out.append(ch)
    return "".join(out).strip()


def _read_regular_file(path, limit):
    """At most limit bytes of path, which must be a regular file: opened without blocking,
    so a FIFO or a device named as the config never hangs a run or is read without end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            null = os.stat(os.devnull)
            if (info.st_dev, info.st_ino) == (null.st_dev, null.st_ino):
                return b""  # --config /dev/null: "no config file", as with git
            raise UsageError(f"config file {path} is not a regular file")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit)
    finally:
        os.close(fd)


class Config:
    def __init__(self, values=None, path=None):
        self.values = values or {}   # {(section, subsection): {key: value}}
        self.path = path

    @classmethod
    def parse(cls, text, path="<config>"):
        values, current = {}, None
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if _CONTROL_RE.search(line):
                raise UsageError(f"{path}:{lineno}: control character in {_show(line)}; a config file is text")
            m = _SECTION_RE.match(line)
            if m:
                current = (m.group(1).lower(), m.group(2))
                values.setdefault(current, {})
                continue
            m = _KEY_RE.match(line)
            if not m or current is None:
                raise UsageError(f"{path}:{lineno}: cannot parse {_show(line)}; expected [section] or key = value")
            values[current][m.group(1).lower()] = _strip_comment(m.group(2) or "true")
        return cls(values, path)

    @classmethod
    def load(cls, explicit=None, environ=os.environ):
        path = explicit or environ.get("DOGESTRY_CONFIG")
        if not path:
            path = "dogestry.cfg"
            if not os.path.exists(path):
                return cls()
        try:
            data = _read_regular_file(path, MAX_FILE + 1)
        except FileNotFoundError:
            raise UsageError(f"config file {path} does not exist") from None
        except OSError as err:
            raise UsageError(f"cannot read config file {path}: {err.strerror}") from None
        if len(data) > MAX_FILE:
            raise UsageError(f"config file {path} is larger than {MAX_FILE} bytes; it is not a dogestry.cfg")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UsageError(f"config file {path} is not UTF-8 text (byte {err.start})") from None
        return cls.parse(text, path)

    def get(self, section, key, default=None, subsection=None):
        return self.values.get((section, subsection), {}).get(key, default)

    def get_bool(self, section, key, default):
        value = self.get(section, key)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise UsageError(f"{self.path}: [{section}] {key} = {_show(value)} is not a boolean (true/false)")

    def remotes(self):
        return {sub: vals.get("url") for (sec, sub), vals in self.values.items() if sec == "remote" and sub}

    def remote_url(self, name_or_url):
        """A REMOTE argument: a config alias, else the path or URL itself."""
        remotes = self.remotes()
        if name_or_url in remotes:
            url = remotes[name_or_url]
            if not url:
                raise UsageError(f"remote {name_or_url!r} in {self.path} has no url")
            _check_share_url(url)
            return url
        _check_share_url(name_or_url)
        # Like git, a bare word names a configured remote; a new local repository is
        # written as a path (./repo, /srv/repo) so a typo in an alias is not a new directory.
        if "://" not in name_or_url and "/" not in name_or_url and not os.path.exists(name_or_url):
            where = f" in {self.path}" if self.path else " (no config file found)"
            raise UsageError(f"unknown remote {name_or_url!r}: not a remote alias{where} nor an existing "
                             f"directory; write a new local repository as ./{name_or_url}")
        return name_or_url

    # Like the Docker and AWS CLIs: a flag beats the environment, which beats this file.
    def docker_host(self, flag=None, environ=os.environ):
        return without_password(flag or environ.get("DOCKER_HOST") or self.get("docker", "connection") or None)

    def codec(self):
        return "lz4" if self.get_bool("compressor", "lz4", True) else "none"

    def temp_dir(self, environ=os.environ):
        return environ.get("DOGESTRY_TEMP_DIR") or self.get("dogestry", "temp-dir")


def without_password(url):
    """An engine URL without the password of a `user:password@` authority. The engine
    client never sends one (Docker's tcp:// has no such login), but every message names the
    engine by its URL: `tcp://user:secret@host:2375` would print the secret."""
    if not url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}@{host}{slash}{path}"


def _check_share_url(url):
    """A share URL (http or https) names a host and never carries `user:password@` (it is
    pre-signed): without a host it was tried five times; with a password, the HTTP client
    took `password@host` for a port and quoted it."""
    scheme, sep, rest = url.partition("://")
    authority = rest.partition("/")[0].partition("?")[0].partition("#")[0]
    if sep and scheme.lower() in ("http", "https") and not authority:
        raise UsageError(f"share URL {url[:80]!r} names no host; use the URL 'dogestry share' printed")
    if sep and scheme.lower() in ("http", "https") and "@" in authority:
        # Exit 1, as when such a URL was fetched and refused (test_adversary): not a usage error.
        raise DogestryError(f"share URL {scheme}://<user>@{authority.rpartition('@')[2][:80]}/... carries a user "
                            "or password; a share URL (from 'dogestry share') needs none")
