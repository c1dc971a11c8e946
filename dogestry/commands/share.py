"""share: one pre-signed URL through which hosts pull images with no credentials.

Writes a share index (shares/<sha256>.json) that lists a pre-signed GET for every
object the images need, and the refs as they are now; prints a pre-signed URL of it.
"""

import hashlib
import json
import re
from datetime import datetime, timedelta, timezone

from ..errors import UsageError
from ..repo import FORMAT_KEY, config_key, image_key, layer_descriptor_key, layer_key, ref_key

SUMMARY = "print one pre-signed URL that lets hosts pull images with no credentials"
MAX_EXPIRES = 7 * 24 * 3600  # SigV4 pre-signed URLs live at most 7 days
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_arguments(p):
    p.add_argument("remote", metavar="REMOTE", help="an S3 remote: config alias or s3:// URL")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="name[:tag] or image id prefix")
    p.add_argument("--expires", metavar="DURATION", default="7d",
                   help="how long the URL works: N[s|m|h|d], at most 7d (default 7d)")


def parse_duration(text):
    m = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not m:
        raise UsageError(f"invalid duration {text!r}; use N followed by s, m, h or d (e.g. 12h, 7d)")
    seconds = int(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds <= 0:
        raise UsageError("--expires must be positive")
    if seconds > MAX_EXPIRES:
        raise UsageError(f"--expires {text} is longer than 7d, the most an S3 pre-signed URL (SigV4) allows")
    return seconds


def share(ctx, remote, names, expires):
    from ..backends.shared import SHARE_FORMAT, SHARE_VERSION  # urllib is only for shares

    repo = ctx.repo(remote)
    backend = repo.backend
    if not hasattr(backend, "presign"):
        raise UsageError(f"share needs an S3 remote; {repo.location} is {backend.kind}")
    repo.check_format()
    refs, keys = {}, [FORMAT_KEY]
    for name in names:
        image_id, ref = repo.resolve(name)
        record = repo.get_image(image_id)
        if ref is not None:
            refs[ref_key(ref)] = image_id
        keys += [image_key(image_id), config_key(image_id)]
        for layer in record.layers:
            keys += [layer_key(layer.diff_id), layer_descriptor_key(layer.diff_id)]
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


def run(ctx, args):
    url = share(ctx, args.remote, args.images, parse_duration(args.expires))
    ctx.out.write(url + "\n")
    return 0
