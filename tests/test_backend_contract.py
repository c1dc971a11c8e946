"""The backend contract (dogestry/backends/__init__.py), run against every backend."""

import os
import threading
import uuid

import pytest

from dogestry.backends import PRESIGN, WRITE, open_backend
from dogestry.errors import CorruptObject, NotFound, StorageError, UsageError

from conftest import S3Server


@pytest.fixture(params=["local-path", "file-url", "s3-seaweed", "s3-moto"])
def backend(request, tmp_path, monkeypatch):
    if request.param.startswith("s3-"):
        server = S3Server(request.param[3:])
        for var, value in server.env().items():
            if var.startswith("AWS_"):
                monkeypatch.setenv(var, value)
        for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(var, raising=False)
        return open_backend(server.url(f"contract-{uuid.uuid4().hex[:12]}"))
    root = tmp_path / "repo"
    url = str(root) if request.param == "local-path" else f"file://{root}"
    return open_backend(url)


def test_missing_key_is_not_found(backend):
    with pytest.raises(NotFound):
        backend.get("layers/sha256/abc")
    with pytest.raises(NotFound):
        backend.open("layers/sha256/abc")
    assert not backend.exists("layers/sha256/abc")


def test_put_get_round_trip_and_write_once(backend):
    assert backend.put("configs/sha256/aa", b"first") is True
    assert backend.get("configs/sha256/aa") == b"first"
    assert backend.put("configs/sha256/aa", b"second") is False
    assert backend.get("configs/sha256/aa") == b"first"
    assert backend.put("repositories/app/1", b"x", overwrite=True) is True
    assert backend.put("repositories/app/1", b"y", overwrite=True) is True
    assert backend.get("repositories/app/1") == b"y"


def test_open_streams_the_bytes(backend):
    data = os.urandom(20 << 20)
    backend.put("layers/sha256/big", data)
    reader = backend.open("layers/sha256/big")
    got = b"".join(iter(lambda: reader.read(65536), b""))
    reader.close()
    assert got == data


@pytest.mark.parametrize("size", [0, 100, (8 << 20) * 2 + 12345])
def test_writer_streams_and_publishes_on_commit_only(backend, size):
    data = os.urandom(size)
    writer = backend.writer("layers/sha256/w")
    for i in range(0, size, 1 << 20):
        writer.write(data[i:i + (1 << 20)])
    assert not backend.exists("layers/sha256/w")
    assert writer.commit() is True
    assert backend.get("layers/sha256/w") == data
    again = backend.writer("layers/sha256/w")
    again.write(b"other")
    assert again.commit() is False
    assert backend.get("layers/sha256/w") == data


def test_aborted_writer_leaves_nothing(backend):
    writer = backend.writer("layers/sha256/a")
    writer.write(os.urandom((8 << 20) + 5))
    writer.abort()
    assert not backend.exists("layers/sha256/a")
    assert list(backend.list("layers/")) == []


def _spooled(backend, data):
    spool = backend.spool()
    spool.write(data)
    spool.close()
    return spool.name


def test_put_file_consumes_the_spool(backend):
    for data, published in ((b"spooled bytes", True), (b"other", False)):  # the second is write-once refused
        path = _spooled(backend, data)
        assert backend.put_file("layers/sha256/s", path) is published
        assert not os.path.exists(path)
        assert backend.get("layers/sha256/s") == b"spooled bytes"


def test_list_yields_complete_keys_only(backend):
    backend.put("repositories/host:5000/team/app/1.0", b"a", overwrite=True)
    backend.put("repositories/app/latest", b"b", overwrite=True)
    backend.put("layers/sha256/x", b"c")
    spool = backend.spool()  # a spool in progress is never listed
    spool.close()
    assert sorted(backend.list("repositories/")) == ["repositories/app/latest", "repositories/host:5000/team/app/1.0"]
    assert sorted(backend.list()) == ["layers/sha256/x", "repositories/app/latest",
                                      "repositories/host:5000/team/app/1.0"]
    assert list(backend.list("nothing/")) == []
    os.unlink(spool.name)


def test_delete(backend):
    backend.put("configs/sha256/d", b"x")
    backend.delete("configs/sha256/d")
    assert not backend.exists("configs/sha256/d")
    backend.delete("configs/sha256/d")  # deleting a missing key is not an error


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/./b", "a/../b", "", "a/.hidden"])
def test_keys_cannot_escape(backend, key):
    with pytest.raises(UsageError):
        backend.put(key, b"x")


def test_concurrent_write_once_has_one_winner(backend):
    results = []

    def write(i):
        results.append(backend.put("configs/sha256/race", f"v{i}".encode()))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert backend.get("configs/sha256/race") in {f"v{i}".encode() for i in range(8)}


def test_unknown_scheme_is_a_usage_error():
    with pytest.raises(UsageError, match="supported"):
        open_backend("gopher://host/repo")


# -- the read half, which every backend runs, the read-only pre-signed one included --------

OBJECTS = {
    "dogestry.json": b'{"format": "dogestry-repository", "version": 1}\n',
    "configs/sha256/c1": b"config bytes",
    "layers/sha256/l1": os.urandom((4 << 20) + 77),
    "layers/sha256/empty": b"",
}


@pytest.fixture(params=["local-path", "s3-seaweed", "presigned-seaweed"])
def readable(request, tmp_path, monkeypatch):
    """A backend that holds OBJECTS, written through a writable backend of its kind."""
    if request.param == "local-path":
        writer = reader = open_backend(str(tmp_path / "repo"))
    else:
        server = S3Server("seaweed")
        for var, value in server.env().items():
            if var.startswith("AWS_"):
                monkeypatch.setenv(var, value)
        writer = reader = open_backend(server.url(f"contract-{uuid.uuid4().hex[:12]}"))
    for key, data in OBJECTS.items():
        writer.put(key, data)
    if request.param.startswith("presigned-"):
        import json

        index = {"format": "dogestry-share", "version": 1, "expires": "2999-01-01T00:00:00Z",
                 "refs": {"repositories/app/1": "sha256:" + "a" * 64},
                 "objects": {key: writer.presign(key, 3600) for key in OBJECTS}}
        writer.put("shares/contract.json", json.dumps(index).encode())
        reader = open_backend(writer.presign("shares/contract.json", 3600))
        assert WRITE not in reader.capabilities
    return reader


def test_read_half_get_size_exists_and_missing(readable):
    for key, data in OBJECTS.items():
        assert readable.get(key) == data and readable.size(key) == len(data) and readable.exists(key)
    assert not readable.exists("configs/sha256/nope")
    for call in (readable.get, readable.open, readable.size):
        with pytest.raises(NotFound):
            call("configs/sha256/nope")


def test_read_half_open_streams_and_limit_bounds_get(readable):
    reader = readable.open("layers/sha256/l1")
    got = b"".join(iter(lambda: reader.read(65536), b""))
    reader.close()
    assert got == OBJECTS["layers/sha256/l1"]
    assert readable.get("configs/sha256/c1", limit=len(b"config bytes")) == b"config bytes"
    with pytest.raises(CorruptObject, match="configs/sha256/c1"):
        readable.get("configs/sha256/c1", limit=5)


def test_read_half_list(readable):
    assert sorted(readable.list("configs/")) == ["configs/sha256/c1"]
    assert sorted(readable.list("layers/")) == ["layers/sha256/empty", "layers/sha256/l1"]


def test_capabilities_are_declared_not_probed(readable):
    kind = readable.kind
    assert (PRESIGN in readable.capabilities) == (kind == "s3")
    if WRITE not in readable.capabilities:
        with pytest.raises(StorageError, match="read-only"):
            readable.put("configs/sha256/x", b"x")


def test_scan_gives_sizes_and_times_of_what_list_yields(backend):
    import time

    before = time.time() - 5
    backend.put("configs/sha256/s1", b"12345")
    backend.put("layers/sha256/s2", b"")
    infos = {i.key: i for i in backend.scan("")}
    assert sorted(infos) == sorted(backend.list(""))
    assert infos["configs/sha256/s1"].size == 5 and infos["layers/sha256/s2"].size == 0
    assert all(before <= i.mtime <= time.time() + 5 for i in infos.values())
