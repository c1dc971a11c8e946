"""A layer of 8 GiB and more (ML images with model weights) goes in and comes back out.

USTAR's size field stops at 8 GiB; the load tar uses pax headers past it, which docker
load reads. The layer is streamed, never written to disk: a save tar is generated into
save-to-repo's stdin, and build-load-tar's output is read back by Python's own tarfile.
"""

import hashlib
import json
import subprocess
import sys
import tarfile
import threading

from conftest import BIN

from dogestry.dockertar import _header

SIZE = (8 << 30) + 4096  # one file of zeros just over USTAR's limit
ZERO = bytes(1 << 20)


def _zeros(write, size):
    while size:
        n = min(size, len(ZERO))
        write(ZERO[:n])
        size -= n


def _member(name, size):
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _save_tar(write):
    """A Docker 25+ save stream of one image whose one layer holds SIZE zero bytes."""
    inner = _member("zeros.bin", SIZE)
    pad = -SIZE % 512
    layer_size = len(inner) + SIZE + pad + 1024
    digest = hashlib.sha256(inner)
    _zeros(digest.update, SIZE + pad + 1024)
    diff_id = "sha256:" + digest.hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    write(_member(f"blobs/sha256/{diff_id[7:]}", layer_size))
    write(inner)
    _zeros(write, SIZE + pad + 1024)
    write(bytes(-layer_size % 512))
    manifest = json.dumps([{"Config": f"blobs/sha256/{config_hex}", "RepoTags": ["big:1"],
                            "Layers": [f"blobs/sha256/{diff_id[7:]}"]}]).encode()
    for name, data in ((f"blobs/sha256/{config_hex}", config), ("manifest.json", manifest)):
        write(_member(name, len(data)))
        write(data)
        write(bytes(-len(data) % 512))
    write(bytes(1024))
    return "sha256:" + config_hex, diff_id, layer_size


def test_a_layer_over_8_gib_is_stored_and_comes_back_in_a_load_tar(tmp_path):
    repo = str(tmp_path / "repo")
    save = subprocess.Popen([sys.executable, BIN, "save-to-repo", "--input", "-", repo],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    result = {}

    def feed():
        try:
            result["ids"] = _save_tar(save.stdin.write)
        finally:
            save.stdin.close()

    writer = threading.Thread(target=feed)
    writer.start()
    out = save.stdout.read()  # (communicate() would close stdin under the writer)
    err = save.stderr.read()
    writer.join()
    save.wait()
    image_id, diff_id, layer_size = result["ids"]
    assert save.returncode == 0, err
    assert out.decode().split() == [image_id, "big:1"]

    load = subprocess.Popen([sys.executable, BIN, "build-load-tar", repo, image_id], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    members = {}
    with tarfile.open(fileobj=load.stdout, mode="r|") as tar:
        for member in tar:
            members[member.name] = member.size
    assert load.wait() == 0, load.stderr.read()
    assert members[f"blobs/sha256/{diff_id[7:]}"] == layer_size > 8 << 30


def test_load_tar_headers_past_8_gib_are_pax_and_negative_sizes_are_refused():
    header = _header("blobs/sha256/x", 9 << 30)
    assert b"size=9663676416" in header  # a pax record carries it
    import pytest

    from dogestry.errors import DogestryError

    with pytest.raises(DogestryError, match="negative size"):
        _header("blobs/sha256/x", -1)
