"""Operating a repository over time: list, tag, untag and retention, gc, verify, leases, locks.

Commands call these; they never print (results go back as values or through ctx.out for
verify's problem lines, and decisions through ctx.detail). repo.py knows the keys.

The gc protocol (dogestry-repository(5) is the normative text):
  - a writer that stores objects holds a *lease*, leases/<random>.json, written before its
    first object, overwritten every LEASE_RENEW seconds while it runs, deleted at the end;
  - gc reads "now" from the storage itself (the last-write time of a lease of its own), so
    every age it compares is on one clock, whatever the hosts' clocks say;
  - an object is kept when a ref or an unexpired share index reaches it, when it is younger
    than the grace period, or when it was written since (the start of the oldest live lease
    minus LEASE_SLACK); a lease is live while its last write is younger than LEASE_TIMEOUT;
  - refs are read again after the candidates are chosen, and leases right before each
    delete batch; gc holds (and renews) a lease of its own throughout, and stops when it
    could not renew it for LEASE_TIMEOUT/2;
  - deletes run in the reverse of publish order: image records, configs, layer
    descriptors, layer data, so an interrupted gc never leaves a record without a layer;
  - before it writes a ref a push (or tag) names the image in its lease, waits for every
    gc whose lease is already there to end, then checks that every object of the image is
    present, storing again what a gc removed; it keeps its lease until the ref is written.
    gc keeps what the images named in live leases need. Either gc read the lease after
    the naming (it keeps the image), or its lease was there before the push looked (the
    push waits for it to end, then checks): with a store that reads its own writes (a
    directory, S3), no gc deletes between the check and the ref. What remains is a
    process stopped longer than LEASE_TIMEOUT between two steps (dogestry-repository(5)).
Why "younger than the oldest live lease" and not "no gc while any lease is live": a
repository pushed to all day would never be collected; the lease only has to cover what
the running pushes write, and that is all written after their lease began.
"""

import fcntl
import hashlib
import json
import os
import socket
import stat
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from .digests import is_digest
from .errors import CorruptObject, DogestryError, NotFound, UsageError
from .jsontext import too_many_values
from .refs import docker_hub_twin, parse_ref
from .repo import image_key, image_keys, layer_descriptor_key, layer_key, lease_key, object_of_key, ref_body

LEASE_RENEW = 30       # seconds between a lease's rewrites
LEASE_TIMEOUT = 300    # a lease not rewritten for this long belongs to a dead writer
LEASE_SLACK = 2        # one storage clock, but S3 keeps whole seconds (and a multipart object its start)
ETAG_LOOKUP_MIN = 16   # distinct ref etags from which a listing of image records is cheaper than GETs
PARALLEL = 16          # reads in flight for list and gc (the S3 backend pools 16 connections)
MAX_SHARE_INDEX = 64 << 20


def _map(fn, items, parallel=PARALLEL):
    items = list(items)
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(min(parallel, len(items))) as pool:
        return list(pool.map(fn, items))


# -- list ---------------------------------------------------------------------------

class Row:
    """One line of `dogestry list`: a ref, its image, the image's stored bytes, its last push."""

    __slots__ = ("ref", "image_id", "size", "pushed")

    def __init__(self, ref, image_id, size, pushed):
        self.ref, self.image_id, self.size, self.pushed = ref, image_id, size, pushed

    def to_json(self):
        return {"repository": self.ref.name, "tag": self.ref.tag, "image_id": self.image_id, "size": self.size,
                "pushed": self.pushed}


def _matches(ref, patterns):
    import fnmatch

    return not patterns or any(fnmatch.fnmatchcase(str(ref), p) or fnmatch.fnmatchcase(ref.name, p)
                               for p in patterns)


def _read_ref(repo, ref):
    """The image id of ref, or None when it is damaged or gone since it was listed."""
    try:
        return repo.get_ref(ref)
    except (NotFound, CorruptObject):
        return None


def _read_refs(repo, refs):
    """The image id (or None) of each (Ref, ObjectInfo) in refs, reading each content once.

    Refs whose listing gave one etag hold the same bytes (see ObjectInfo), so one read
    answers for all of them: on S3 a thousand tags of one image cost one GET, not a
    thousand; a thousand tags of different images cost one listing of image records. A
    ref gone since the listing does not speak for the rest of its group: they are then
    read one by one.
    """
    groups = {}
    for i, (_, info) in enumerate(refs):
        groups.setdefault(info.etag or i, []).append(i)
    ids = [None] * len(refs)
    if sum(isinstance(etag, str) for etag in groups) > ETAG_LOOKUP_MIN:
        # Most refs point at different images (a tag per build): one listing of the image
        # records instead of a GET per ref, since a ref's etag (S3's MD5 of its body) is the
        # MD5 of the ref_body of the image it names. A ref written otherwise is still read.
        known = {hashlib.md5(ref_body(image_id), usedforsecurity=False).hexdigest(): image_id
                 for image_id in repo.image_ids()}
        for etag in [etag for etag in groups if etag in known]:
            for i in groups.pop(etag):
                ids[i] = known[etag]
    members = list(groups.values())
    for group, image_id in zip(members, _map(lambda group: _read_ref(repo, refs[group[0]][0]), members)):
        for i in group:
            ids[i] = image_id
    unsure = [i for group in members if len(group) > 1 and ids[group[0]] is None for i in group[1:]]
    for i, image_id in zip(unsure, _map(lambda i: _read_ref(repo, refs[i][0]), unsure)):
        ids[i] = image_id
    return ids


def list_tags(repo, patterns=()):
    """[Row] for every ref matching a glob (name:tag or name), by name then newest push first.

    Refs come from one listing (with their last-write times); refs and image records are
    then read PARALLEL at a time, each image record once and each ref content once
    (_read_refs). SIZE is the stored bytes of the image's layers and config as its record
    gives them; None for a ref whose image is missing.
    """
    refs = [(ref, info) for ref, info in repo.ref_infos() if _matches(ref, patterns)]
    ids = _read_refs(repo, refs)

    def size_of(image_id):
        try:
            image = repo.get_image(image_id)
        except (NotFound, CorruptObject):
            return None
        return image.stored_size  # layers as stored, and the config

    unique = sorted({i for i in ids if i})
    sizes = dict(zip(unique, _map(size_of, unique)))
    rows = [Row(ref, image_id, sizes.get(image_id), info.mtime) for (ref, info), image_id in zip(refs, ids)]
    rows.sort(key=lambda r: (r.ref.name, -(r.pushed or 0), r.ref.tag))
    return rows


# -- tag and untag ------------------------------------------------------------------

def tag(repo, source, target, ctx=None):
    """Point the ref `target` at the image `source` names; no data moves. Returns (image_id, Ref).

    Like a push it names the image in a lease and lets a running gc finish before it checks
    the image and writes the ref (before_refs), so a gc cannot remove an unreferenced image
    between that check and the new ref."""
    image_id, _ = repo.resolve(source)
    ref = parse_ref(target)
    with pending_lease(repo, "tag") as held:
        before_refs(ctx, repo, held, [(image_id, ref)])
        repo.set_ref(ref, image_id)  # refuses an image that is not whole
    return image_id, ref


def untag(repo, names, dry_run=False):
    """Remove the refs `names` (every one must exist, or nothing is removed); [(image_id, Ref)].

    app:1 and library/app:1 are one image to docker: a ref stored under either spelling is
    found by both (as repo.resolve finds it), and the stored spelling is the one removed."""
    refs = list(dict.fromkeys(parse_ref(name) for name in names))
    found = []
    for ref in refs:
        image_id = repo.find_ref(ref)
        twin = docker_hub_twin(ref) if image_id is None else None
        if twin is not None and (image_id := repo.find_ref(twin)) is not None:
            ref = twin
        if image_id is None:
            raise NotFound(f"{ref} not found in {repo.location}")
        if (image_id, ref) not in found:
            found.append((image_id, ref))
    if not dry_run:
        for _, ref in found:
            repo.delete_ref(ref)
    return found


def retention(repo, keep_last, patterns, dry_run=False):
    """Untag all but the keep_last most recently pushed tags of each name matching patterns.

    "Most recently pushed" is the ref's last write as the storage records it; ties go to
    the tag that sorts last. Returns the [(image_id, Ref)] removed (or that would be).
    """
    if keep_last < 0:
        raise UsageError("--keep-last must be 0 or more")
    by_name = {}
    for ref, info in repo.ref_infos():
        if _matches(ref, patterns):
            by_name.setdefault(ref.name, []).append((info.mtime or 0, ref.tag, ref, info))
    doomed = []
    for name in sorted(by_name):
        newest_first = sorted(by_name[name], key=lambda item: (item[0], item[1]), reverse=True)
        doomed += [(ref, info) for _, _, ref, info in newest_first[keep_last:]]
    ids = _read_refs(repo, doomed)
    if not dry_run and doomed:
        # A push may have moved a doomed tag since the listing (re-pushing `app:latest` makes
        # it the newest): one more listing right before the deletes spares every ref written
        # meanwhile, which would otherwise be lost to a decision taken on its old write.
        now = {info.key: (info.mtime, info.etag, info.size) for _, info in repo.ref_infos()}
        kept = [(image_id, (ref, info)) for image_id, (ref, info) in zip(ids, doomed)
                if now.get(info.key) == (info.mtime, info.etag, info.size)]
        ids, doomed = [i for i, _ in kept], [d for _, d in kept]
    doomed = [ref for ref, _ in doomed]
    if not dry_run:
        _map(repo.delete_ref, doomed)
    return [(image_id, ref) for image_id, ref in zip(ids, doomed)]


# -- leases -------------------------------------------------------------------------

class Lease:
    """leases/<random>.json, rewritten every LEASE_RENEW seconds by a thread until released.

    The record says who holds it (host, pid, what), from its first rewrite on `since` (the
    storage's time of its first write, so a rewrite does not move the start gc counts from),
    and once the writer knows them `images`: the images it is about to point refs at (see
    before_refs). `renewed` is this host's monotonic time just before the last write that
    succeeded: the storage stamped it later, so others see the lease live at least until
    renewed + LEASE_TIMEOUT.
    """

    def __init__(self, repo, what):
        self.repo, self.what = repo, what
        self.name = f"{what}-{uuid.uuid4().hex}"
        self.key = lease_key(self.name)
        self.since = None
        self.images = None
        self.renewed = None
        self._stop = threading.Event()
        self._thread = None
        self._write_lock = threading.Lock()

    @property
    def acquired(self):
        return self._thread is not None

    def _record(self):
        record = {"host": socket.gethostname(), "pid": os.getpid(), "boot": _boot_id(), "what": self.what,
                  "since": self.since, "written": time.time()}
        if self.images is not None:
            record["images"] = self.images
        return (json.dumps(record, sort_keys=True) + "\n").encode()

    def write(self):
        """Write the record now (the renewal thread's write, or an announcement's)."""
        with self._write_lock:
            started = time.monotonic()
            self.repo.put_lease(self.name, self._record())
            self.renewed = started

    def fresh(self, limit):
        """True when the last successful write began less than `limit` seconds ago."""
        return self.renewed is not None and time.monotonic() - self.renewed < limit

    def write_time(self):
        """The storage's time of this lease's last write (its clock, not this host's)."""
        for info in self.repo.lease_infos():
            if info.key == self.key and info.mtime is not None:
                return info.mtime
        raise DogestryError(f"lease {self.key} vanished from {self.repo.location} right after it was written")

    def acquire(self):
        if self._thread is None:
            self.write()
            self._thread = threading.Thread(target=self._renew, name="dogestry-lease", daemon=True)
            self._thread.start()
        return self

    def announce(self, image_ids):
        """Name in the lease the images whose refs the writer is about to write: from this
        write on, a gc that reads the lease keeps everything those images need."""
        self.images = sorted(set(image_ids))
        if self.acquired:
            self.write()
        else:
            self.acquire()

    def _renew(self):
        while not self._stop.wait(LEASE_RENEW):
            try:
                if self.since is None:
                    self.since = self.write_time()
                self.write()
            except DogestryError:
                pass  # the next round tries again; gc only drops a lease after LEASE_TIMEOUT

    def release(self):
        self._stop.set()
        if self._thread is None:
            return  # never written
        self._thread.join()
        try:
            self.repo.delete_key(self.key)
        except DogestryError:
            pass  # it expires by itself after LEASE_TIMEOUT, and gc removes it


def _boot_id():
    """This machine's boot and pid namespace: with the host name, what tells that a lease's pid
    is a process this host can see (a container may share the host name, not the namespace)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def _dead_here(record):
    """True when the lease record's writer ran in this very pid namespace and is gone."""
    if not isinstance(record, dict) or record.get("host") != socket.gethostname():
        return False
    boot, pid = _boot_id(), record.get("pid")
    if boot is None or record.get("boot") != boot or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass  # alive, another user's
    except OverflowError:
        pass  # beyond a C pid_t: a damaged record, which tells nothing
    return False


@contextmanager
def lease(repo, what="push"):
    """Hold a lease on repo for the block; nested uses on one Repository share the outer
    one (and write it, when the outer one is still pending)."""
    outer = getattr(repo, "_dogestry_lease", None)
    if outer is not None:
        yield outer.acquire()
        return
    with pending_lease(repo, what) as held:
        yield held.acquire()


@contextmanager
def pending_lease(repo, what="push"):
    """A lease written only when first needed (an inner lease(), or before_refs), released
    at the end of the block: a push that writes nothing writes no lease either."""
    if getattr(repo, "_dogestry_lease", None) is not None:
        yield repo._dogestry_lease
        return
    held = Lease(repo, what)
    repo._dogestry_lease = held
    try:
        yield held
    finally:
        repo._dogestry_lease = None
        held.release()


GC_POLL = 1.0  # seconds between looks at a running gc's lease, while a push waits for it
LEASE_REWRITES = 5  # times a push writes its lease again when a listing does not show it


def before_refs(ctx, repo, held, results):
    """The last step of a push (or tag) before it writes refs: the image ids among
    [(image_id, Ref or None)] whose objects are not all present (store those again).

    When a ref is about to change, this closes the race with a gc deleting after the check
    but before the ref is written (dogestry-repository(5)): the images are first named in
    our lease; then we wait for every gc whose lease is already there (it may have read
    the leases before ours named them) to finish; only then are the objects checked. A gc
    that starts later reads our lease after its own is written, hence after the naming,
    and keeps what the images need until our lease ends, after the refs are written.
    """
    changing = held.acquired or any(ref is not None and repo.find_ref(ref) != image_id
                                    for image_id, ref in results)
    if changing:
        while True:
            held.announce([image_id for image_id, _ in results])
            _wait_for_running_gcs(ctx, repo, held)
            if held.fresh(LEASE_TIMEOUT / 2):
                break
            # The lease thread failed to renew while we waited: a gc may now think us dead.
            _detail(ctx, f"lease {held.key} was not renewed for a while; announcing the images again")
    return incomplete(repo, results)


def _wait_for_running_gcs(ctx, repo, held):
    """Return once every gc lease present now has gone (finished), expired or is known dead.

    Expired is judged twice: by the storage's clock (older than our own lease's write by
    LEASE_TIMEOUT), and by watching (not rewritten for LEASE_TIMEOUT while we waited). The
    second bounds the wait whatever a lease's date says: one dated in the future, by a skewed
    clock or by hand, would otherwise hold every push until that date."""
    waiting, told, records, rewrites, watched = None, set(), {}, 0, {}
    while True:
        infos = repo.lease_infos()
        now = next((i.mtime for i in infos if i.key == held.key and i.mtime is not None), None)
        if now is None:
            # Removed under us (a gc judged it stale): write it again. A storage that does not
            # list what it stores would have us rewrite it for ever: a few tries, then say so.
            rewrites += 1
            if rewrites > LEASE_REWRITES:
                raise DogestryError(f"lease {held.key} was written to {repo.location} but its listing never shows "
                                    "it; gc could not see this push there, so no ref is written")
            held.write()
            time.sleep(min(GC_POLL, 0.1 * rewrites))
            continue
        running = set()
        for info in infos:
            if not _is_gc_lease(info.key) or info.mtime is None or now - info.mtime >= LEASE_TIMEOUT:
                continue
            if watched.get(info.key, (None,))[0] != info.mtime:
                watched[info.key] = (info.mtime, time.monotonic())
            elif time.monotonic() - watched[info.key][1] >= LEASE_TIMEOUT:
                continue  # a live gc rewrites its lease every LEASE_RENEW seconds
            if info.key not in records:
                try:
                    records[info.key] = json.loads(repo.get_small(info.key))
                except (NotFound, ValueError, RecursionError, DogestryError):  # unread: a gc that may run
                    records[info.key] = None
            if not _dead_here(records[info.key]):
                running.add(info.key)
        waiting = running if waiting is None else waiting & running
        if not waiting:
            return
        for key in sorted(waiting - told):
            record = records.get(key) if isinstance(records.get(key), dict) else {}
            _detail(ctx, f"waiting for the gc holding {key} ({record.get('host', '?')} pid {record.get('pid', '?')}) "
                       "to finish before writing refs")
            told.add(key)
        time.sleep(GC_POLL)


def _detail(ctx, text):
    if ctx is not None:
        ctx.detail(text)


def _is_gc_lease(key):
    return key.startswith(lease_key("gc-")[:-len(".json")])


def incomplete(repo, results):
    """The image ids among [(image_id, Ref or None)] whose objects are not all present: the
    final check of a push, which a gc running beside it may have made fail.

    A layer descriptor whose data is gone is removed on the way (gc removes the descriptor
    first, so this is a gc cut short, or damage), so that storing the image again, which
    trusts descriptors, writes that layer again.
    """
    gone = []
    for image_id in dict.fromkeys(i for i, _ in results):
        if not repo.has_image(image_id):
            gone.append(image_id)
            continue
        absent = repo.absent_keys(repo.get_image(image_id))
        for key in absent:
            found = object_of_key(key)
            if found and found[0] == "layer" and layer_descriptor_key(found[1]) not in absent:
                repo.delete_key(layer_descriptor_key(found[1]))
        if absent:
            gone.append(image_id)
    return gone


def _live_leases(repo, now):
    """[(key, since, images)] of the writers' leases written within LEASE_TIMEOUT of now, and
    {key: mtime} of the stale ones. `images`: the image ids the writer announced (a tuple).

    A gc's own lease only tells it the storage's time: it writes no objects, so it protects none.
    """
    live, stale = [], {}
    for info in repo.lease_infos():
        if info.mtime is None or now - info.mtime >= LEASE_TIMEOUT:
            stale[info.key] = info.mtime
            continue
        if _is_gc_lease(info.key):
            continue
        since, images = info.mtime, ()
        try:
            record = json.loads(repo.get_small(info.key))
            recorded = record.get("since")
            if isinstance(recorded, (int, float)) and not isinstance(recorded, bool):
                since = min(since, recorded)
            if isinstance(record.get("images"), list):
                # Only image ids name keys: anything else is damage, and no image of ours.
                images = tuple(i for i in record["images"] if is_digest(i))
        except (NotFound, ValueError, RecursionError, AttributeError, DogestryError):
            pass  # gone, or being rewritten: its last write is a start late enough
        live.append((info.key, since, images))
    return live, stale


# -- gc -----------------------------------------------------------------------------

class GcReport:
    def __init__(self):
        self.removed, self.bytes, self.kept_young, self.kept_leased = [], 0, 0, 0
        self.leases_removed = 0


def _share_roots(repo, now):
    """Keys an unexpired share index hands out (its pre-signed URLs must keep working)."""
    from datetime import datetime, timezone

    keys = set()
    for info in repo.share_infos():
        try:
            data = repo.get_small(info.key, MAX_SHARE_INDEX)
            if too_many_values(data):
                raise ValueError
            index = json.loads(data)
            until = datetime.strptime(index["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
            objects = index["objects"]
            if not isinstance(objects, dict):  # sharing.py writes {key: url}
                raise TypeError
        except NotFound:
            continue
        except (ValueError, RecursionError, KeyError, TypeError, AttributeError, CorruptObject):
            raise DogestryError(f"share index {info.key} in {repo.location} is damaged; gc cannot tell what it "
                                "hands out: remove it first") from None
        if until.timestamp() > now:
            keys.update(k for k in objects if isinstance(k, str))
    return keys


class _Reach:
    """What refs reach: image records read once each, in parallel."""

    def __init__(self, repo):
        self.repo = repo
        self.images = {}

    def _image(self, image_id, strict=True):
        try:
            return self.repo.get_image(image_id)
        except NotFound:
            return None  # a dangling ref reaches nothing (verify reports it)
        except CorruptObject as err:
            if not strict:
                return None  # an unreferenced record kept for its age: what it names is garbage anyway
            raise DogestryError(f"gc cannot tell what image {image_id} needs ({err}); "
                                "run 'dogestry verify' and repair or untag it first") from None

    def keys_of(self, image_ids, strict=True, reread_missing=False):
        new = [i for i in dict.fromkeys(image_ids)
               if i not in self.images or (reread_missing and self.images[i] is None)]
        for image_id, image in zip(new, _map(lambda i: self._image(i, strict), new)):
            self.images[image_id] = image
        keys = set()
        for image_id in image_ids:
            image = self.images[image_id]
            keys.update(image_keys(image) if image is not None else [image_key(image_id)])
        return keys

    def of_refs(self):
        refs = [ref for ref, _ in self.repo.ref_infos()]
        odd = self.repo.unreadable_refs()
        if odd:
            # Left out of the listing, it would count as absent and its image be deleted.
            raise DogestryError(f"gc cannot tell what ref {odd[0]} in {self.repo.location} is: not a regular file; "
                                "remove it or write the ref again first")

        def read(ref):
            try:
                return self.repo.get_ref(ref)
            except NotFound:
                return None  # removed since it was listed
            except CorruptObject as err:
                raise DogestryError(f"gc cannot tell what {err}; fix or untag it first") from None

        return self.keys_of([i for i in _map(read, refs) if i])


def _protected(infos, now, grace, leases):
    """Keys an age rule keeps: younger than grace, or written since the oldest live lease began."""
    oldest = min((since for _, since, _ in leases), default=None)
    young, leased = set(), set()
    for key, info in infos.items():
        if info.mtime is None or now - info.mtime < grace:
            young.add(key)
        elif oldest is not None and info.mtime >= oldest - LEASE_SLACK:
            leased.add(key)
    return young, leased


def _announced(reach, leases):
    """Every key the images named in live leases need (a push about to write their refs)."""
    return reach.keys_of([i for _, _, images in leases for i in images], strict=False, reread_missing=True)


def _pairs(keys):
    """A layer's data and descriptor are kept together: a kept one keeps the other."""
    out = set(keys)
    for key in keys:
        found = object_of_key(key)
        if found and found[0] in ("layer", "descriptor"):
            out.update((layer_key(found[1]), layer_descriptor_key(found[1])))
    return out


DELETE_ORDER = ("image", "config", "descriptor", "layer")  # publish order, reversed


def gc(ctx, repo, grace, dry_run=False, parallel=8):
    """Delete every object nothing keeps (see the module docstring); return a GcReport."""
    report = GcReport()
    if repo.format_version() is None:
        return report  # an empty location: nothing to collect, and nothing to create
    repo.check_format()
    own = None
    if dry_run:
        now = time.time()  # a dry run writes nothing, so it reads this host's clock
    else:
        # Written first and renewed throughout: a push that sees it waits for this gc to end
        # before its final check (before_refs); it also gives the storage's time.
        own = Lease(repo, "gc").acquire()
        now = own.write_time()
    try:
        infos = {info.key: (kind, info) for kind, _, info in repo.object_infos()}
        reach = _Reach(repo)
        rooted = reach.of_refs() | _share_roots(repo, now)
        leases, stale = _live_leases(repo, now)
        objects = {key: info for key, (_, info) in infos.items()}
        young, leased = _protected(objects, now, grace, leases)
        report.kept_young, report.kept_leased = len(young - rooted), len(leased - rooted)
        # What a kept image record needs stays too, or keeping the record would be pointless.
        kept_records = [object_of_key(k)[1] for k in young | leased if infos[k][0] == "image"]
        keep = rooted | young | leased | reach.keys_of(kept_records, strict=False) | _announced(reach, leases)
        candidates = set(objects) - _pairs(keep)
        # A ref written meanwhile by a writer without a lease (update-ref) keeps its objects;
        # so does a share index written meanwhile (its writer's lease may be gone already:
        # it ends once the index is written).
        candidates -= _pairs(reach.of_refs() | _share_roots(repo, now))
        for kind in DELETE_ORDER:
            # Right before each batch: a push may have started, or announced the images it is
            # about to point refs at, since the last look (the protocol needs one look after
            # our lease was written; each batch looking again costs one listing).
            leases_now, _ = _live_leases(repo, now)
            if leases_now != leases:
                leases = leases_now
                _, leased_now = _protected({k: objects[k] for k in candidates}, now, grace, leases)
                held = leased_now | _announced(reach, leases)
                report.kept_leased += len(held & candidates)
                candidates -= _pairs(held)
            batch = sorted(k for k in candidates if infos[k][0] == kind)
            if not dry_run:
                _fence(own, kind)

                def remove(key):
                    repo.delete_key(key)
                    ctx.detail(f"removed {key} ({objects[key].size} bytes)")
                _map(remove, batch, parallel)
            else:
                for key in batch:
                    ctx.detail(f"would remove {key} ({objects[key].size} bytes)")
            report.removed += batch
            report.bytes += sum(objects[k].size for k in batch)
        if not dry_run:
            # Only a lease not rewritten since it was judged stale: a writer that was slow,
            # not dead, has rewritten it meanwhile and keeps it.
            still = {info.key: info.mtime for info in repo.lease_infos()}
            for key in sorted(k for k, mtime in stale.items() if k in still and still[k] == mtime):
                repo.delete_key(key)
                ctx.detail(f"removed stale lease {key}")
                report.leases_removed += 1
    finally:
        if own is not None:
            own.release()
    return report


def _fence(own, kind):
    """Stop before deleting when our lease may look dead to a push (renewals failed for half
    the timeout): that push would no longer wait for us before its final check."""
    if not own.fresh(LEASE_TIMEOUT / 2):
        raise DogestryError(f"gc stopped before deleting {kind} objects: its lease {own.key} in "
                            f"{own.repo.location} could not be renewed for {LEASE_TIMEOUT // 2}s; run gc again")


# -- verify -------------------------------------------------------------------------

class Verifier:
    """Checks objects and says what is wrong with each, one line per problem (to `say`)."""

    def __init__(self, repo, say, parallel=None):
        self.repo, self.say = repo, say
        self.parallel = parallel or max(2, os.cpu_count() or 2)
        self.problems = 0
        self.lock = threading.Lock()
        self.sizes = {}
        self.checked_images, self.checked_configs, self.layers = set(), set(), {}
        self.layer_bytes = 0

    def problem(self, text):
        with self.lock:
            self.problems += 1
            self.say(text)

    def scan(self):
        for kind, digest, info in self.repo.object_infos():
            self.sizes[info.key] = info.size

    def present(self, key):
        return key in self.sizes

    def check_refs(self):
        """Every ref points at a complete image; returns the image ids to check."""
        ids = []
        for ref, _ in sorted(self.repo.ref_infos(), key=lambda item: str(item[0])):
            try:
                image_id = self.repo.get_ref(ref)
            except NotFound:
                continue  # removed since it was listed
            except CorruptObject as err:
                self.problem(str(err))
                continue
            if not self.present(image_key(image_id)):
                self.problem(f"ref {ref}: points at image {image_id}, which {self.repo.location} lacks "
                             f"({image_key(image_id)})")
                continue
            ids.append(image_id)
        for key in self.repo.unreadable_refs():
            self.problem(f"{key} in {self.repo.location} is where a ref would be, but is not a regular file")
        return ids

    def check_config(self, image_id, size=None):
        if image_id in self.checked_configs:
            return
        self.checked_configs.add(image_id)
        try:
            data = self.repo.get_config(image_id)
        except (NotFound, CorruptObject) as err:
            self.problem(str(err))
            return None
        if size is not None and len(data) != size:
            self.problem(f"config {image_id}: {len(data)} bytes, its image record says {size}")
        return data

    def check_image(self, image_id):
        """The record, its config, and that every layer descriptor matches; layers queued."""
        if image_id in self.checked_images:
            return
        self.checked_images.add(image_id)
        try:
            image = self.repo.get_image(image_id)
        except (NotFound, CorruptObject) as err:
            self.problem(f"image record: {err}")
            return
        data = self.check_config(image_id, image.config_size)
        if data is not None:
            try:
                if too_many_values(data):
                    raise ValueError  # more than any config dockertar lets a push store
                diff_ids = json.loads(data)["rootfs"]["diff_ids"]
            except (ValueError, RecursionError, KeyError, TypeError):
                diff_ids = None
            if diff_ids != image.diff_ids:
                self.problem(f"image {image_id}: its record's layers differ from its config's rootfs.diff_ids")
        for desc in image.layers:
            self.queue_layer(desc.diff_id, expected=desc, by=image_id)

    def queue_layer(self, diff_id, expected=None, by=None):
        if diff_id in self.layers:
            return
        whose = f" (a layer of image {by})" if by else ""
        data_key, desc_key = layer_key(diff_id), layer_descriptor_key(diff_id)
        if not self.present(desc_key) and not self.present(data_key):
            self.layers[diff_id] = None
            self.problem(f"layer {diff_id}{whose}: missing ({data_key} and its descriptor)")
            return
        try:
            desc = self.repo.layer_descriptor(diff_id)
        except (NotFound, CorruptObject) as err:
            self.layers[diff_id] = None
            self.problem(f"layer {diff_id}{whose}: descriptor {desc_key}: {err}")
            return
        if expected is not None and desc != expected:
            self.problem(f"layer {diff_id}{whose}: descriptor {desc_key} differs from the image record's")
        if not self.present(data_key):
            self.layers[diff_id] = None
            self.problem(f"layer {diff_id}{whose}: missing ({data_key}; its descriptor is there)")
            return
        if self.sizes[data_key] != desc.size:
            self.layers[diff_id] = None
            how = "truncated" if self.sizes[data_key] < desc.size else "too long"
            self.problem(f"layer {diff_id}{whose}: {data_key} is {how}: {self.sizes[data_key]} bytes stored, "
                         f"its descriptor says {desc.size}")
            return
        self.layers[diff_id] = desc

    def _read_layer(self, desc):
        try:
            for chunk in self.repo.layer_chunks(desc):
                pass
        except (NotFound, CorruptObject) as err:
            self.problem(str(err))
        except DogestryError as err:
            self.problem(f"layer {desc.diff_id}: {err}")
        return desc.size

    def read_layers(self):
        """Read every queued layer whole, PARALLEL across layers: stored digest, diffID, sizes."""
        todo = [d for d in self.layers.values() if d is not None]
        self.layers = {k: None for k in self.layers}  # read once
        self.layer_bytes += sum(_map(self._read_layer, todo, self.parallel))
        return len(todo)

    def check_unreferenced(self):
        """--all: every object, whether a ref reaches it or not (records first: they read their configs)."""
        order = {"image": 0, "config": 1, "descriptor": 2, "layer": 3}
        for kind, digest, info in sorted(self.repo.object_infos(), key=lambda item: order[item[0]]):
            if kind == "image":
                self.check_image(digest)
            elif kind == "config":
                self.check_config(digest)
            elif kind in ("layer", "descriptor"):
                if kind == "layer" and not self.present(layer_descriptor_key(digest)):
                    if digest not in self.layers:
                        self.layers[digest] = None
                        self.problem(f"layer {digest}: {info.key} has no descriptor (left by an interrupted "
                                     "push; gc removes it)")
                    continue
                self.queue_layer(digest)


def verify(repo, names=(), everything=False, say=print):
    """Check what the refs (or the images `names`) reach, and with everything every object.

    Returns the Verifier (problems, counts). A name that resolves to nothing is a problem.
    """
    repo.check_format()
    v = Verifier(repo, say)
    v.scan()
    if names:
        ids = []
        for name in names:
            try:
                ids.append(repo.resolve(name)[0])
            except (NotFound, CorruptObject) as err:
                v.problem(str(err))
    else:
        ids = v.check_refs()
    for image_id in ids:
        v.check_image(image_id)
    layers = v.read_layers()
    if everything:
        v.check_unreferenced()
        layers += v.read_layers()
    v.layers_read = layers
    return v


# -- lockfile -----------------------------------------------------------------------

@contextmanager
def lockfile(ctx, path, timeout=None):
    """Hold an exclusive flock on path for the block; wait for it at most timeout seconds
    (None: as long as it takes). No path: no lock. Runs on one lock never interleave."""
    if not path:
        yield
        return
    try:
        # O_NONBLOCK: a FIFO must not hang the open. Only a regular file is ever written:
        # --lockfile /dev/sda must never get a pid written over its first bytes.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
    except OSError as err:
        raise DogestryError(f"cannot open lock file {path}: {err.strerror or err}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DogestryError(f"lock file {path} is not a regular file")
    try:
        started = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            except OSError as err:
                raise DogestryError(f"cannot lock {path}: {err.strerror or err}") from None
            waited = time.monotonic() - started
            if timeout is not None and waited >= timeout:
                raise DogestryError(f"lock file {path} is still held by another run after {timeout}s "
                                    f"(--lock-timeout){_holder(fd)}")
            if not told:
                ctx.detail(f"waiting for lock file {path}{_holder(fd)}")
                told = True
            time.sleep(0.1 if timeout is None else min(0.1, max(0.01, timeout - waited)))
        try:  # who holds it, for a waiter's message only: a full disk (a gc run to free it) or a
            os.ftruncate(fd, 0)  # file that refuses writes (EIO) must not stop the run
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError:
            pass
        if told:
            ctx.detail(f"took lock file {path} after {time.monotonic() - started:.1f}s")
        yield
    finally:
        os.close(fd)  # releases the flock


def _holder(fd):
    try:
        text = os.pread(fd, 200, 0).decode("ascii", "replace").split()
    except OSError:
        return ""
    return f": pid {text[0]} on {text[1]}" if len(text) >= 2 else ""


__all__ = ["list_tags", "tag", "untag", "retention", "lease", "pending_lease", "before_refs", "incomplete", "gc",
           "verify", "lockfile", "Lease"]
