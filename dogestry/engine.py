"""The narrow interface dogestry needs from a Docker engine.

Only these calls touch the docker SDK, which is imported on first use so commands that
never talk to an engine start fast. Images come back as image.EngineImage. The unit tests
of push and pull planning (tests/test_transfer_plan.py) use a fake of the methods those
paths call: uses_containerd_store, inspect, require, layer_chains, images_with_layers,
save, load, tag. The containerd store's pull (pull, remove_tag, lists, inspect_details,
is_local) is tested against real engines only.
"""

import json
import os

from .digests import chain_ids, is_digest
from .errors import EngineError, NotFound
from .image import EngineImage

DEFAULT_HOST = "unix:///var/run/docker.sock"


def _friendly(err, host):
    text = str(err)
    if "No such file or directory" in text or "Connection refused" in text or "ConnectionError" in type(err).__name__:
        return EngineError(f"cannot reach the Docker engine at {host}: is it running? (set --docker-host, "
                           "[docker] connection or DOCKER_HOST)")
    explanation = getattr(err, "explanation", None) or text
    return EngineError(f"Docker engine at {host}: {explanation}")


class Engine:
    def __init__(self, host):
        self.host = host or DEFAULT_HOST
        self._api = None
        self._info = None

    @property
    def api(self):
        if self._api is None:
            import docker
            from docker.utils import kwargs_from_env

            kwargs = {}
            try:
                kwargs = kwargs_from_env()  # TLS from DOCKER_TLS_VERIFY / DOCKER_CERT_PATH
            except Exception as err:  # a bad cert path is a user error, say so plainly
                raise EngineError(f"Docker TLS settings: {err}") from None
            kwargs["base_url"] = self.host
            # Saves and loads of large images run for minutes: no client-side timeout.
            kwargs["timeout"] = None
            try:
                self._api = docker.APIClient(version="auto", **kwargs)
            except Exception as err:
                raise _friendly(err, self.host) from None
        return self._api

    def _call(self, fn, *args, **kwargs):
        import docker.errors
        import requests.exceptions

        try:
            return fn(*args, **kwargs)
        except docker.errors.NotFound:
            raise
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as err:
            raise _friendly(err, self.host) from None

    def info(self):
        if self._info is None:
            self._info = self._call(self.api.info)
        return self._info

    def uses_containerd_store(self):
        """True when images live in containerd's content store (docker 24+ snapshotter)."""
        status = self.info().get("DriverStatus") or []
        return any(k == "driver-type" and "snapshotter" in v for k, v in status)

    def inspect(self, image):
        """The EngineImage `image` names (name:tag or id), or None when the engine has none."""
        import docker.errors

        try:
            return EngineImage.from_inspect(self._call(self.api.inspect_image, image))
        except docker.errors.NotFound:
            return None

    def require(self, image):
        found = self.inspect(image)
        if found is None:
            raise NotFound(f"image {image} not found in the Docker engine at {self.host}")
        return found

    def image_ids(self):
        return [img["Id"] for img in self._call(self.api.images, all=True)]

    def tagged_names(self):
        """name:tag of every tagged image (for completion)."""
        return [t for img in self._call(self.api.images) for t in img.get("RepoTags") or [] if t != "<none>:<none>"]

    def layer_chains(self):
        """Chain ids of every layer the engine holds with everything below it.

        One listing of the top-level images (an intermediate image's chains are all its
        child's too); each id's chains come from a cache kept across runs, since an image id
        is a content hash and its layers never change: only images this host has never shown
        us are inspected, so a pull costs the same on a host with 10 images or 1,000.
        """
        from concurrent.futures import ThreadPoolExecutor

        ids = [img["Id"] for img in self._call(self.api.images)]
        cache = _ChainCache.load()
        unknown = [i for i in ids if i not in cache.entries]
        with ThreadPoolExecutor(8) as pool:  # one inspect per new image: overlap the round trips
            for image_id, found in zip(unknown, pool.map(self.inspect, unknown)):
                if found is not None:  # removed since the listing: nothing to learn
                    cache.entries[image_id] = chain_ids(found.diff_ids)
        if unknown:
            cache.save(keep=ids)
        return {c for i in ids for c in cache.entries.get(i, ())}

    def save(self, names):
        """A raw binary stream of `docker save names...`."""
        api = self.api
        res = self._call(api._get, api._url("/images/get"), params={"names": list(names)}, stream=True)
        try:
            api._raise_for_status(res)
        except Exception as err:
            raise _friendly(err, self.host) from None
        res.raw.decode_content = True
        return res.raw

    def load(self, chunks):
        """Stream a tar into `docker load`; fail on any in-stream error the engine reports."""
        api = self.api
        res = self._call(api._post, api._url("/images/load"), data=chunks, params={"quiet": "1"},
                         headers={"Content-Type": "application/x-tar"}, stream=True)
        try:
            api._raise_for_status(res)
        except Exception as err:
            raise _friendly(err, self.host) from None
        loaded = []
        for line in res.iter_lines():
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                msg = {"stream": line.decode("utf-8", "replace")}
            if msg.get("errorDetail") or msg.get("error"):
                detail = (msg.get("errorDetail") or {}).get("message") or msg.get("error")
                raise EngineError(f"docker load failed: {detail.strip()}")
            text = msg.get("stream", "")
            if "Error unpacking image" in text:
                raise EngineError(f"docker load failed: {text.strip()}")
            loaded.append(text.strip())
        return loaded

    def tag(self, image_id, ref):
        self._call(self.api.tag, image_id, ref.name, ref.tag, force=True)

    # -- pulling from a registry (the containerd image store's pull-through path) ----------
    def is_local(self):
        """True when the engine shares this host's loopback: a unix socket, or tcp to
        127.0.0.0/8, ::1 or localhost. Only such an engine can reach a server dogestry
        starts on 127.0.0.1."""
        import ipaddress
        from urllib.parse import urlsplit

        if self.host.startswith("unix://"):
            return True
        parts = urlsplit(self.host)
        if parts.scheme not in ("tcp", "http", "https"):
            return False  # npipe:// and ssh:// reach another machine or VM
        host = parts.hostname or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def pull(self, repository, tag):
        """`docker pull repository:tag`; fail on any error line of the progress stream."""
        stream = self._call(self.api.pull, repository, tag=tag, stream=True, decode=True)
        try:
            for msg in stream:
                if msg.get("errorDetail") or msg.get("error"):
                    detail = (msg.get("errorDetail") or {}).get("message") or msg.get("error")
                    raise EngineError(f"docker pull {repository}:{tag} failed: {str(detail).strip()}")
        except EngineError:
            raise
        except Exception as err:
            raise _friendly(err, self.host) from None

    def remove_tag(self, name):
        """Remove the name `name` (name:tag); the image stays while another name holds it."""
        import docker.errors

        try:
            self._call(self.api.remove_image, name, force=False, noprune=True)
        except docker.errors.NotFound:
            pass

    def images_with_layers(self, diff_ids):
        """Ids of the engine's images whose layers are exactly diff_ids (the containerd store
        holds one image under several manifests: built here, and as dogestry loaded it)."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            found = [f for f in pool.map(self.inspect, self.image_ids()) if f is not None]
        return [f.id for f in found if f.diff_ids == list(diff_ids)]

    def inspect_details(self, image):
        """The engine's whole inspect of image (a dict), or None: for telling apart images
        that share every layer by their config."""
        import docker.errors

        try:
            return self._call(self.api.inspect_image, image)
        except docker.errors.NotFound:
            return None

    def lists(self, name):
        """True when `docker images` shows name: the containerd store hides an image whose
        content is incomplete (it runs, but cannot be saved)."""
        return bool(self._call(self.api.images, name=name))


CACHE_NAME = "engine-chains.json"
CACHE_LIMIT = 20000  # entries kept before those of images no longer listed are dropped


class _ChainCache:
    """{image id: [chain id, ...]} in $XDG_CACHE_HOME/dogestry (default ~/.cache/dogestry).

    Only a cache: unreadable, damaged or unwritable means asking the engine again, never a
    failure. Entries that are not well-formed digests are dropped on load.
    """

    def __init__(self, path, entries):
        self.path, self.entries = path, entries

    @classmethod
    def load(cls, environ=os.environ):
        base = os.path.join(environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                            "dogestry")
        path = os.path.join(base, CACHE_NAME)
        entries = {}
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
            if isinstance(raw, dict):
                entries = {k: v for k, v in raw.items() if _is_digest(k) and isinstance(v, list)
                           and all(_is_digest(c) for c in v)}
        except (OSError, ValueError, RecursionError):
            pass
        return cls(path, entries)

    def save(self, keep):
        entries = self.entries
        if len(entries) > CACHE_LIMIT:
            entries = {k: entries[k] for k in keep if k in entries}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(entries, f, separators=(",", ":"))
            os.replace(tmp, self.path)  # readers see the old file or the new, whole
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _is_digest(text):
    return isinstance(text, str) and is_digest(text)
