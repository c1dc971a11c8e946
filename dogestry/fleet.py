"""Fleet pulls: one remote, several engines, each object read from the remote once.

`dogestry pull --docker-host H1 --docker-host H2 REMOTE IMAGE...` plans each engine on its
own (transfer.plan_load: what that engine lacks), then carries every plan out at once, one
thread per engine, over one shared view of the repository:

- image records and configs are read once and handed to every engine;
- a layer that more than one engine needs is fetched once from the remote, verified, into
  a spool file in the temp dir, and each engine's load streams from that spool (its last
  chunk held until the fetch has verified the whole layer); a background fetcher fills
  the spools in load order, so the engines' loads overlap the remote reads of the layers
  after the current one;
- a layer only one engine needs streams straight from the remote, as a plain pull does.

Disk holds at most the shared layers of the images being pulled, uncompressed, and each
spool is deleted once every engine that planned it has read it; memory stays at a few
1 MiB chunks per stream whatever the layer size. Nothing is held whole in RAM.

The containerd image store pulls through a loopback registry (transfer's containerd
section), served from the same shared view: it asks only for the layers whose snapshots
it lacks, so its layers are fetched when it asks for them (from a spool when another
engine's load already brought them), not ahead of time.

One engine's failure (unreachable, a refused load) is its result, not the run's: the
others go on. Layer 3: it never prints; the pull command reports the HostResults.
"""

import copy
import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

from .errors import CorruptObject, DogestryError
from .layerstore import CHUNK, hold_last
from .pullthrough import pull_through_server
from .transfer import load, plan_load, resolve

PREFETCH = 2  # layers fetched from the remote at once ahead of the loads


class HostResult:
    """What one engine of a fleet pull did: its plan and the layers it was sent, or the error."""

    def __init__(self, host):
        self.host = host
        self.error = None
        self.plan = None
        self.sent = set()  # diffIDs whose bytes went to this engine

    @property
    def ok(self):
        return self.error is None

    def counts(self):
        """(layers loaded, layers the engine had, images it had whole) for the status line."""
        if self.plan is None:
            return 0, 0, 0
        layers = {layer.diff_id for image in self.plan.images for layer in image.layers}
        return len(self.sent), len(layers - self.sent), len(self.plan.to_tag)

    def status_line(self):
        if not self.ok:
            return f"{self.host}: failed: {self.error}"
        loaded, present, whole = self.counts()
        line = f"{self.host}: ok (loaded {loaded} layer(s), {present} present"
        if whole:
            line += f", {whole} image(s) already there"
        return line + ")"

    def to_json(self):
        loaded, present, whole = self.counts()
        return {"host": self.host, "status": "ok" if self.ok else "failed", "error": self.error,
                "loaded_layers": loaded, "present_layers": present, "present_images": whole}


def pull(ctx, repo, names, hosts):
    """Pull names from repo into every engine of hosts; return ([(image_id, Ref or None)],
    [HostResult] in the order of hosts). A name the remote cannot resolve fails the whole
    run (no engine could get it); anything an engine does wrong fails only that engine."""
    resolved = resolve(repo, names, ctx)
    items = [(image_id, [ref] if ref else []) for image_id, ref in resolved]
    runs = [_HostRun(ctx.for_engine(host)) for host in dict.fromkeys(hosts)]
    shared = SharedLayers(ctx, repo)
    try:
        with ThreadPoolExecutor(len(runs), thread_name_prefix="dogestry-fleet") as pool:
            list(pool.map(lambda run: run.plan(shared, items), runs))
            planned = [run for run in runs if run.result.ok]
            shared.expect([run.result.plan for run in planned if run.eager],
                          [run.result.plan for run in planned if not run.eager])
            list(pool.map(lambda run: run.load(), planned))
    finally:
        shared.close()
    return resolved, [run.result for run in runs]


class _HostRun:
    """One engine's part of a fleet pull, in its own thread; errors end up in its result."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.result = HostResult(ctx.engine.host)
        self.view = None
        self.eager = True  # its load reads every planned layer: worth fetching ahead

    def _guarded(self, step):
        try:
            step()
        except DogestryError as err:
            self.result.error = str(err)
        except Exception as err:  # a bug or an SDK surprise on one host must not stop the others
            self.result.error = f"internal error: {type(err).__name__}: {err}"

    def plan(self, shared, items):
        def step():
            self.view = _EngineView(shared, self.result.sent)
            self.result.plan = plan_load(self.ctx, self.view, items)
            # The containerd store pulls only the layers whose snapshots it lacks, which its
            # plan cannot tell: fetch those when it asks, not ahead.
            self.eager = not self.ctx.engine.uses_containerd_store()

        self._guarded(step)

    def load(self):
        def step():
            if not pull_through_server(self.ctx, self.view, self.result.plan):
                load(self.ctx, self.view, self.result.plan)

        self._guarded(step)


class _EngineView:
    """The repository as one engine's plan and load see it: records from the shared memo,
    layers through SharedLayers, and a note of every layer sent to this engine."""

    def __init__(self, shared, sent):
        self._shared, self._sent = shared, sent

    def __getattr__(self, name):
        return getattr(self._shared.repo, name)

    def load_image(self, image_id, tags=()):
        image = copy.copy(self._shared.image(image_id))
        image.tags = list(tags)
        return image

    def get_image(self, image_id):
        return copy.copy(self._shared.image(image_id))

    def get_config(self, image_id):
        return self._shared.image(image_id).config

    def layer_chunks(self, desc):
        self._sent.add(desc.diff_id)
        return self._shared.chunks(desc)


_FETCHING, _READY, _FAILED = "fetching", "ready", "failed"


class SharedLayers:
    """Layers and records read once from repo for all the engines of a fleet pull.

    A shared layer is fetched by one thread into a spool file; every engine's load follows
    that file as it grows (so the loads overlap the fetch, even of the same layer), and
    checks the diffID and size itself before the last chunk goes out. A layer's state:
    absent (nobody has asked), fetching (readers follow the bytes written so far), ready
    (complete and verified), failed (the error every reader gets). Readers are counted from
    the plans; a layer with one reader is never spooled, and a spool goes as soon as its
    last planned reader is done (close() removes whatever is left)."""

    def __init__(self, ctx, repo, prefetch=PREFETCH):
        self.ctx, self.repo = ctx, repo
        self._dir = tempfile.mkdtemp(prefix="dogestry-fleet-", dir=ctx.config.temp_dir())
        self._cond = threading.Condition()
        self._images = {}
        self._records_lock = threading.Lock()
        self._readers = {}  # diffID -> planned reads not yet done
        self._state, self._spools, self._written, self._errors = {}, {}, {}, {}
        self._closed = False
        self._prefetch = ThreadPoolExecutor(prefetch, thread_name_prefix="dogestry-fetch")
        self.fetched = []  # diffIDs read from the remote, in order (tests count them)

    # -- records --------------------------------------------------------------------
    def image(self, image_id):
        """The image with its config, read once (records are small: they stay in memory)."""
        with self._records_lock:
            if image_id not in self._images:
                self._images[image_id] = self.repo.load_image(image_id)
            return self._images[image_id]

    # -- layers ---------------------------------------------------------------------
    def expect(self, eager_plans, lazy_plans):
        """Count each layer's readers and start fetching, in load order, the layers that
        more than one engine will read and at least one eager load needs."""
        order = {}
        for plan in [*eager_plans, *lazy_plans]:
            for image in plan.images:
                for layer in image.layers:
                    if layer.diff_id in plan.include:
                        self._readers[layer.diff_id] = self._readers.get(layer.diff_id, 0) + 1
        for plan in eager_plans:
            for image in plan.images:
                for layer in image.layers:
                    if layer.diff_id in plan.include:
                        order.setdefault(layer.diff_id, layer)
        progress = self.ctx.progress
        if progress is not None:
            every = {layer.diff_id: layer for plan in [*eager_plans, *lazy_plans]
                     for image in plan.images for layer in image.layers}
            progress.set_total(sum(layer.uncompressed_size for d, layer in every.items() if d in self._readers))
            for diff_id, layer in every.items():
                if diff_id not in self._readers:
                    progress.skip(diff_id, layer.uncompressed_size)  # every engine has it
        for diff_id, layer in order.items():
            if self._readers[diff_id] > 1:
                self._prefetch.submit(self._spool, layer)

    def chunks(self, desc):
        """The layer's verified bytes for one engine (a generator: nothing happens until read)."""
        diff_id = desc.diff_id
        with self._cond:
            direct = diff_id not in self._state and self._readers.get(diff_id, 0) <= 1
        try:
            if direct:
                yield from self._fetch(desc)
                return
            if self._claim(desc):  # asked before the fetcher got to it: fetch it beside this load
                threading.Thread(target=self._fill, args=(desc,), name="dogestry-fetch", daemon=True).start()
            yield from _whole(self._follow(desc), desc)
        finally:
            self._done(diff_id)

    def _claim(self, desc):
        """Make this caller the layer's one fetcher, unless someone already is (or was)."""
        with self._cond:
            if self._closed or desc.diff_id in self._state:
                return False
            fd, path = tempfile.mkstemp(dir=self._dir, prefix=desc.diff_id[7:19] + "-")
            os.close(fd)
            self._state[desc.diff_id], self._spools[desc.diff_id], self._written[desc.diff_id] = _FETCHING, path, 0
            return True

    def _spool(self, desc):
        if self._claim(desc):
            self._fill(desc)

    def _fill(self, desc):
        """Fetch the layer into its spool, telling readers how far it got (state: fetching ->
        ready or failed). The spool is unbuffered: what readers are told is in the file."""
        diff_id = desc.diff_id
        error = None
        try:
            with open(self._spools[diff_id], "wb", buffering=0) as spool:
                source = self._fetch(desc)
                try:
                    for chunk in source:
                        if self._closed:
                            raise DogestryError("the fleet pull ended before the layer was fetched")
                        view = memoryview(chunk)
                        while view:
                            view = view[spool.write(view):]
                        with self._cond:
                            self._written[diff_id] += len(chunk)
                            self._cond.notify_all()
                finally:
                    source.close()
        except OSError as err:
            error = DogestryError(f"cannot spool layer {diff_id} in {self._dir}: {err.strerror or err}")
        except DogestryError as err:
            error = err
        except Exception as err:
            error = DogestryError(f"fetching layer {diff_id}: internal error: {type(err).__name__}: {err}")
        with self._cond:
            if error is None:
                self._state[diff_id] = _READY
            else:
                self._state[diff_id], self._errors[diff_id] = _FAILED, error
                _unlink(self._spools.pop(diff_id))
            self._cond.notify_all()

    def _fetch(self, desc):
        """The layer from the remote, verified as it streams (repo.layer_chunks), counted."""
        with self._cond:
            self.fetched.append(desc.diff_id)
        chunks = self.repo.layer_chunks(desc)
        progress = self.ctx.progress
        if progress is not None:
            chunks = progress.track(chunks, desc.diff_id, desc.uncompressed_size)
        yield from chunks
        self.ctx.detail(f"fetched layer {desc.diff_id} ({desc.uncompressed_size} bytes, verified)")

    def _follow(self, desc):
        """The spool's bytes as the fetcher writes them, until it is complete."""
        diff_id = desc.diff_id
        with self._cond:
            if self._state.get(diff_id) == _FAILED:
                raise self._errors[diff_id]
            # Opened under the lock: a spool unlinked later (its last reader done, or the
            # fetch failed) stays readable through this file object.
            spool = open(self._spools[diff_id], "rb")
        with spool:
            offset = 0
            while True:
                with self._cond:
                    # A state gone is a spool that was ready: its last planned reader is done.
                    # Wait for a whole chunk: the decoder hands out smaller pieces, and each
                    # piece would be its own write into the engine's load stream.
                    while (self._state.get(diff_id, _READY) == _FETCHING
                           and self._written[diff_id] - offset < CHUNK):
                        self._cond.wait()
                    if self._state.get(diff_id) == _FAILED:
                        raise self._errors[diff_id]
                    available = self._written[diff_id] - offset
                    if not available:
                        return  # ready, and every byte read
                while available:
                    data = spool.read(min(available, CHUNK))
                    if not data:
                        raise CorruptObject(f"the spooled copy of layer {diff_id} ({spool.name}) is shorter "
                                            "than what was written to it")
                    available -= len(data)
                    offset += len(data)
                    yield data

    def _done(self, diff_id):
        with self._cond:
            left = self._readers.get(diff_id, 0) - 1
            self._readers[diff_id] = left
            if left <= 0 and self._state.get(diff_id) == _READY:
                _unlink(self._spools.pop(diff_id))
                # Another (unplanned) reader fetches it again rather than find no spool.
                del self._state[diff_id]

    def close(self):
        with self._cond:
            self._closed = True
        self._prefetch.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self._dir, ignore_errors=True)


def _whole(chunks, desc):
    """A spool's bytes for one engine, its last chunk held back until the spool is whole.

    _follow ends only once the fetcher has marked the layer ready, which it does after
    repo.layer_chunks verified every byte from the remote against the stored digest and
    the diffID (holding back its own last chunk until then). So the last chunk goes to the
    engine only after that verification, and only when the count is the layer's size.
    Hashing the spool again for every engine cost a core-second per GB each, on the CPU
    the engines' loads compete for: the spool is a private file we just wrote.
    """
    where = f"the spooled copy of layer {desc.diff_id}"
    counted = {"size": 0}

    def read():
        for data in chunks:
            counted["size"] += len(data)
            if counted["size"] > desc.uncompressed_size:
                raise CorruptObject(f"{where} is corrupt: larger than the layer")
            yield data

    def complete():
        if counted["size"] != desc.uncompressed_size:
            raise CorruptObject(f"{where} is corrupt: {counted['size']} of {desc.uncompressed_size} bytes")

    return hold_last(read(), complete)


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
