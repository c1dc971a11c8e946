"""Share indexes: one pre-signed URL through which hosts pull images with no credentials.

A share index (shares/<sha256>.json in the remote) lists a pre-signed GET for every
object the images need, and the refs as they are now; backends/presigned.py reads it.
"""

import hashlib
import json
from datetime import datetime, timedelta, timezone

from .backends import PRESIGN
from .errors import DogestryError, UsageError
from .operations import before_refs, pending_lease
from .repo import FORMAT_KEY, image_keys

MAX_EXPIRES = 7 * 24 * 3600  # SigV4 pre-signed URLs live at most 7 days


def share(ctx, repo, names, expires):
    """Write a share index for the images `names` and return its pre-signed URL."""
    from .backends.presigned import SHARE_FORMAT, SHARE_VERSION  # its reader; urllib only for shares

    backend = repo.backend
    if PRESIGN not in backend.capabilities:
        raise UsageError(f"share needs an S3 remote; {repo.location} is {backend.kind}")
    repo.check_format()
    # A share index is a root for gc only once written, and a gc reads the indexes once, at
    # its start: so, like a tag, share names its images in a lease (a gc keeps what they need
    # while the lease lives) and waits for the gcs already running before it checks them.
    with pending_lease(repo, "share") as held:
        refs, keys, ids = {}, [FORMAT_KEY], []
        for name in names:
            image_id, ref = repo.resolve(name)
            if ref is not None:
                refs[repo.ref_key(ref)] = image_id
            ids.append(image_id)
        held.acquire()
        gone = before_refs(ctx, repo, held, [(image_id, None) for image_id in ids])
        if gone:
            raise DogestryError(f"image {gone[0]} in {repo.location} lost objects to a gc while it was being shared; "
                                "push it again, then share it")
        for image_id in dict.fromkeys(ids):
            keys += image_keys(repo.get_image(image_id))
        keys = list(dict.fromkeys(keys))
        until = datetime.now(timezone.utc) + timedelta(seconds=expires)
        index = {"format": SHARE_FORMAT, "version": SHARE_VERSION,
                 "expires": until.strftime("%Y-%m-%dT%H:%M:%SZ"), "refs": refs,
                 "objects": {key: backend.presign(key, expires) for key in keys}}
        data = (json.dumps(index, indent=1, sort_keys=True) + "\n").encode()
        index_key = f"shares/{hashlib.sha256(data).hexdigest()}.json"
        backend.put(index_key, data)
    ctx.detail(f"wrote share index {index_key} ({len(keys)} objects, {len(refs)} refs, expires {index['expires']})")
    return backend.presign(index_key, expires)
