"""dogestry serve against real clients: docker pull on every test engine, skopeo, ctr with a
containerd of our own, and raw HTTP for what clients never send (traversal, bad digests,
writes). Every server is `bin/dogestry serve --listen 127.0.0.1:0`, as a user runs it."""

import contextlib
import hashlib
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import uuid

import pytest

from conftest import BIN, dogestry



def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(1 << 20):
            digest.update(data)
    return "sha256:" + digest.hexdigest()


# -- repositories made from local files, through the plumbing a user would pipe ----------
def _layer_tar(path, files):
    """A layer tar at path; files maps a name to bytes, or to an int: that many random bytes."""
    with tarfile.open(path, "w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, int):
                info.size = content
                with open(f"{path}.data", "wb") as f:
                    left = content
                    while left:
                        f.write(os.urandom(min(left, 1 << 20)))
                        left -= min(left, 1 << 20)
                with open(f"{path}.data", "rb") as f:
                    tar.addfile(info, f)
                os.unlink(f"{path}.data")
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return sha256_file(path)


def make_repo(tmp_path, images, codec_lz4=True):
    """A repository holding images {name:tag: [layer files, base first]}, written by
    `save-to-repo --input` (a Docker <= 24 save tar made here) | `update-ref --stdin`."""
    work = tmp_path / f"save-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    layer_paths, manifest = {}, []
    save = work / "save.tar"
    with tarfile.open(save, "w") as tar:
        for ref, layers in images.items():
            diff_ids, paths = [], []
            for files in layers:
                key = json.dumps({k: (v if isinstance(v, int) else sha256(v)) for k, v in files.items()}, sort_keys=True)
                if key not in layer_paths:
                    path = work / f"layer{len(layer_paths)}.tar"
                    layer_paths[key] = (path, _layer_tar(path, files))
                    tar.add(path, arcname=f"l{len(layer_paths)}/layer.tar")
                    layer_paths[key] += (f"l{len(layer_paths)}/layer.tar",)
                diff_ids.append(layer_paths[key][1])
                paths.append(layer_paths[key][2])
            config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                                 "rootfs": {"type": "layers", "diff_ids": diff_ids},
                                 "history": [{"created_by": ref}]}, sort_keys=True).encode()
            info = tarfile.TarInfo(f"{sha256(config)[7:]}.json")
            info.size = len(config)
            tar.addfile(info, io.BytesIO(config))
            manifest.append({"Config": info.name, "RepoTags": [ref], "Layers": paths})
        data = json.dumps(manifest).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    repo = str(tmp_path / f"repo-{uuid.uuid4().hex[:8]}")
    env = None
    if not codec_lz4:
        cfg = work / "dogestry.cfg"
        cfg.write_text("[compressor]\n  lz4 = false\n")
        env = dict(os.environ, DOGESTRY_CONFIG=str(cfg))
    records = dogestry("save-to-repo", "--input", str(save), repo, env=env).stdout
    dogestry("update-ref", "--stdin", repo, input=records)
    for path, _, _ in layer_paths.values():
        os.unlink(path)
    os.unlink(save)
    return repo


def repo_image(repo, ref):
    """(image record, config bytes, OCI manifest bytes) as the repository API gives them."""
    from dogestry.backends import open_backend
    from dogestry.refs import parse_ref
    from dogestry.repo import Repository

    r = Repository(open_backend(repo))
    record = r.get_image(r.get_ref(parse_ref(ref)))
    return record, r.get_config(record.id), record.manifest()


# -- the server, as a user runs it -------------------------------------------------------
class Served:
    def __init__(self, proc, port, log):
        self.proc, self.port, self.log_path = proc, port, log
        self.host = f"127.0.0.1:{port}"

    def request(self, method, path, headers=None, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            # http.client sends the path as given: nothing is normalised or decoded.
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    def json(self, path, status=200, headers=None):
        got, response_headers, body = self.request("GET", path, headers)
        assert got == status, (path, got, body)
        return json.loads(body), response_headers

    def error_code(self, method, path, status):
        got, headers, body = self.request(method, path)
        assert got == status, (method, path, got, body)
        if method == "HEAD":
            return None
        return json.loads(body)["errors"][0]["code"]

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)


def start_serving(remote, tmp_path, *extra, env=None, listen="127.0.0.1:0"):
    log = tmp_path / f"serve-{uuid.uuid4().hex[:8]}.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, BIN, "-v", "serve", remote, "--listen", listen, *extra],
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text())
        if m:
            return Served(proc, int(m.group(1)), log)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"dogestry serve did not start: {log.read_text()}")


@contextlib.contextmanager
def serving(remote, tmp_path, env=None):
    served = start_serving(remote, tmp_path, env=env)
    try:
        yield served
    finally:
        assert served.stop() == 0, served.log()


# -- the API over a repository of plain files --------------------------------------------
BASE = {"etc/base.txt": b"base\n"}


@pytest.fixture
def small_repo(tmp_path):
    return make_repo(tmp_path, {
        "team/app:1": [BASE, {"app.bin": 3 << 20}],
        "team/app:2": [BASE, {"app.txt": b"two\n"}],
        "team/app:latest": [BASE, {"app.txt": b"two\n"}],
        "team/app:rc": [BASE, {"app.txt": b"rc\n"}],
        "other:1": [BASE],
    })


def test_manifests_configs_and_layers_are_the_repository_s_own(small_repo, tmp_path):
    record, config, manifest = repo_image(small_repo, "team/app:1")
    with serving(small_repo, tmp_path) as srv:
        assert srv.json("/v2/")[0] == {}
        status, headers, body = srv.request("GET", "/v2/team/app/manifests/1")
        assert status == 200 and body == manifest
        assert headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
        assert headers["Docker-Content-Digest"] == sha256(manifest)
        status, headers, body = srv.request("HEAD", "/v2/team/app/manifests/1")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(manifest)
        assert headers["Docker-Content-Digest"] == sha256(manifest)
        assert srv.request("GET", f"/v2/team/app/manifests/{sha256(manifest)}")[2] == manifest

        status, headers, body = srv.request("GET", f"/v2/team/app/blobs/{record.id}")
        assert status == 200 and body == config and headers["Docker-Content-Digest"] == record.id
        for layer in record.layers:
            status, headers, body = srv.request("GET", f"/v2/team/app/blobs/{layer.diff_id}")
            assert status == 200 and sha256(body) == layer.diff_id and len(body) == layer.uncompressed_size
            status, headers, body = srv.request("HEAD", f"/v2/team/app/blobs/{layer.diff_id}")
            assert status == 200 and body == b"" and int(headers["Content-Length"]) == layer.uncompressed_size
        assert len(record.layers) == 2 and record.layers[1].uncompressed_size > 3 << 20


def test_docker_schema_2_for_clients_that_accept_nothing_newer(small_repo, tmp_path):
    record, _, manifest = repo_image(small_repo, "team/app:2")
    docker_v2 = "application/vnd.docker.distribution.manifest.v2+json"
    with serving(small_repo, tmp_path) as srv:
        status, headers, body = srv.request("GET", "/v2/team/app/manifests/2", {"Accept": docker_v2})
        assert status == 200 and headers["Content-Type"] == docker_v2
        assert headers["Docker-Content-Digest"] == sha256(body) != sha256(manifest)
        described = json.loads(body)
        assert described["mediaType"] == docker_v2 and described["config"]["digest"] == record.id
        assert [layer["digest"] for layer in described["layers"]] == record.diff_ids
        # A digest names bytes: asked for by digest, that form comes back whatever Accept says.
        assert srv.request("GET", f"/v2/team/app/manifests/{sha256(body)}")[2] == body
        both = f"{docker_v2}, application/vnd.oci.image.manifest.v1+json"
        assert srv.request("GET", "/v2/team/app/manifests/2", {"Accept": both})[2] == manifest


def test_tags_and_catalog_in_lexical_order_with_pagination(small_repo, tmp_path):
    with serving(small_repo, tmp_path) as srv:
        assert srv.json("/v2/_catalog")[0] == {"repositories": ["other", "team/app"]}
        page, headers = srv.json("/v2/_catalog?n=1")
        assert page == {"repositories": ["other"]} and headers["Link"] == '</v2/_catalog?n=1&last=other>; rel="next"'
        assert srv.json("/v2/_catalog?n=1&last=other")[0] == {"repositories": ["team/app"]}
        assert srv.json("/v2/team/app/tags/list")[0] == {"name": "team/app", "tags": ["1", "2", "latest", "rc"]}
        page, headers = srv.json("/v2/team/app/tags/list?n=2")
        assert page["tags"] == ["1", "2"] and headers["Link"] == '</v2/team/app/tags/list?n=2&last=2>; rel="next"'
        page, headers = srv.json("/v2/team/app/tags/list?n=2&last=2")
        assert page["tags"] == ["latest", "rc"] and "Link" not in headers
        assert srv.json("/v2/team/app/tags/list?n=0")[0]["tags"] == []
        assert srv.json("/v2/team/app/tags/list?n=x", 400)[0]["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"
        # A tag pushed while serving is visible at once: refs are read on every request.
        dogestry("update-ref", small_repo, "team/app:new", repo_image(small_repo, "team/app:1")[0].id)
        assert "new" in srv.json("/v2/team/app/tags/list")[0]["tags"]


def test_range_requests_on_layers_and_configs(small_repo, tmp_path):
    record, config, _ = repo_image(small_repo, "team/app:1")
    big = record.layers[1]
    with serving(small_repo, tmp_path) as srv:
        whole = srv.request("GET", f"/v2/team/app/blobs/{big.diff_id}")[2]
        size = len(whole)
        for header, start, end in [("bytes=0-99", 0, 99), ("bytes=1500000-2600000", 1500000, 2600000),
                                   (f"bytes={size - 10}-", size - 10, size - 1), ("bytes=-4096", size - 4096, size - 1),
                                   (f"bytes=5-{size + 1000}", 5, size - 1)]:
            status, headers, body = srv.request("GET", f"/v2/team/app/blobs/{big.diff_id}", {"Range": header})
            assert status == 206, header
            assert body == whole[start:end + 1], header
            assert headers["Content-Range"] == f"bytes {start}-{end}/{size}"
        status, headers, _ = srv.request("GET", f"/v2/team/app/blobs/{big.diff_id}", {"Range": f"bytes={size}-"})
        assert status == 416 and headers["Content-Range"] == f"bytes */{size}"
        status, _, body = srv.request("GET", f"/v2/team/app/blobs/{record.id}", {"Range": "bytes=2-9"})
        assert status == 206 and body == config[2:10]
        # Several ranges are not supported: the whole blob, as RFC 9110 allows.
        status, _, body = srv.request("GET", f"/v2/team/app/blobs/{record.id}", {"Range": "bytes=0-1,4-5"})
        assert status == 200 and body == config


def test_unknown_malformed_and_traversing_requests_are_refused(small_repo, tmp_path):
    (tmp_path / "secret").write_text("do not serve\n")
    record, _, _ = repo_image(small_repo, "team/app:1")
    layer = record.layers[0].diff_id
    unknown = "sha256:" + "0" * 64
    with serving(small_repo, tmp_path) as srv:
        assert srv.error_code("GET", "/v2/nobody/tags/list", 404) == "NAME_UNKNOWN"
        assert srv.error_code("GET", "/v2/nobody/manifests/1", 404) == "NAME_UNKNOWN"
        assert srv.error_code("GET", f"/v2/nobody/blobs/{layer}", 404) == "NAME_UNKNOWN"
        assert srv.error_code("GET", "/v2/team/app/manifests/9", 404) == "MANIFEST_UNKNOWN"
        assert srv.error_code("HEAD", "/v2/team/app/manifests/9", 404) is None
        assert srv.error_code("GET", f"/v2/team/app/manifests/{unknown}", 404) == "MANIFEST_UNKNOWN"
        assert srv.error_code("GET", f"/v2/team/app/blobs/{unknown}", 404) == "BLOB_UNKNOWN"
        for digest in ("sha256:abc", "sha256:" + "G" * 64, "md5:" + "0" * 32, "sha256:" + "0" * 63 + "%2e"):
            assert srv.error_code("GET", f"/v2/team/app/blobs/{digest}", 400) == "DIGEST_INVALID", digest
            assert srv.error_code("GET", f"/v2/team/app/manifests/{digest}", 400) == "DIGEST_INVALID", digest
        assert srv.error_code("GET", "/v2/team/app/manifests/.hidden", 400) == "TAG_INVALID"
        traversals = [
            "/v2/../../secret/manifests/1", "/v2/team/../app/manifests/1", "/v2/%2e%2e/%2e%2e/secret/tags/list",
            "/v2/team%2fapp/manifests/1", "/v2/team/app%2f..%2f..%2fsecret/manifests/1",
            "/v2/team/app/manifests/..%2f..%2f..%2fsecret", "/v2/team/app/manifests/%2e%2e",
            "/v2/team/app/blobs/..%2f..%2fsecret", "/v2/team/app/blobs/sha256:..%2f..%2f..%2fsecret",
            "/v2/team//app/manifests/1", "/v2/Team/app/manifests/1", "/v2/team/app/../../manifests/1",
            "/v2/team/app/manifests/1/..", "/v2/team/app/manifests/%31",
        ]
        for path in traversals:
            status, _, body = srv.request("GET", path)
            assert status in (400, 404), (path, status)
            assert b"do not serve" not in body
            assert json.loads(body)["errors"][0]["code"] in (
                "NAME_INVALID", "TAG_INVALID", "DIGEST_INVALID", "UNSUPPORTED"), (path, body)
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            for path in ("/v2/team/app/blobs/uploads/", "/v2/team/app/manifests/1", f"/v2/team/app/blobs/{layer}"):
                status, headers, body = srv.request(method, path, body=b"{}")
                assert status == 405 and json.loads(body)["errors"][0]["code"] == "UNSUPPORTED", (method, path)
                assert headers["Allow"] == "GET, HEAD"
        # The repository is untouched and the server still serves.
        assert srv.request("GET", "/v2/team/app/manifests/1")[0] == 200
        assert srv.json("/v2/team/app/tags/list")[0]["tags"] == ["1", "2", "latest", "rc"]
        log = srv.log()
    assert log.count("\n") > len(traversals)  # -v: one line per request
    assert re.search(r'127\.0\.0\.1 "GET /v2/team/app/manifests/1 HTTP/1\.1" 200 \d+', log)


def _corrupt_middle(repo, diff_id):
    path = os.path.join(repo, "layers", "sha256", diff_id[7:])
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("codec_lz4", [True, False], ids=["lz4", "none"])
def test_a_corrupted_layer_is_cut_off_and_the_server_carries_on(tmp_path, codec_lz4):
    repo = make_repo(tmp_path, {"bad:1": [BASE, {"big.bin": 5 << 20}], "bad:small": [{"small.txt": b"small\n" * 100}],
                                "good:1": [BASE]}, codec_lz4=codec_lz4)
    big = repo_image(repo, "bad:1")[0].layers[1]
    small = repo_image(repo, "bad:small")[0].layers[0]
    _corrupt_middle(repo, big.diff_id)
    _corrupt_middle(repo, small.diff_id)
    with serving(repo, tmp_path) as srv:
        # Several chunks: the headers are out when the digest fails, so the body stops short.
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        conn.request("GET", f"/v2/bad/blobs/{big.diff_id}")
        response = conn.getresponse()
        assert response.status == 200 and int(response.headers["Content-Length"]) == big.uncompressed_size
        with pytest.raises(http.client.IncompleteRead) as cut:
            response.read()
        conn.close()
        assert len(cut.value.partial) < big.uncompressed_size
        # One chunk: the verdict comes before the headers, so it is an error status.
        status, _, body = srv.request("GET", f"/v2/bad/blobs/{small.diff_id}")
        assert status == 500 and small.diff_id in json.loads(body)["errors"][0]["message"]
        # A client pulling the image fails; everything else is still served.
        dest = tmp_path / "skopeo-bad"
        copy = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{srv.host}/bad:1", f"dir:{dest}"],
                              capture_output=True, timeout=300)
        assert copy.returncode != 0
        good = repo_image(repo, "good:1")[2]
        assert srv.request("GET", "/v2/good/manifests/1")[2] == good
        assert srv.request("GET", f"/v2/bad/blobs/{big.diff_id}", {"Range": "bytes=0-9"})[0] == 206
        log = srv.log()
    assert f"layer {big.diff_id}" in log and "corrupt" in log


def test_memory_stays_bounded_while_eight_clients_pull_a_large_layer(tmp_path):
    size = 256 << 20
    repo = make_repo(tmp_path, {"large:1": [{"large.bin": size}]})
    layer = repo_image(repo, "large:1")[0].layers[0]
    results = []

    def pull():
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=300)
        conn.request("GET", f"/v2/large/blobs/{layer.diff_id}")
        response = conn.getresponse()
        digest, count = hashlib.sha256(), 0
        while data := response.read(1 << 20):
            digest.update(data)
            count += len(data)
        conn.close()
        results.append(("sha256:" + digest.hexdigest(), count))

    with serving(repo, tmp_path) as srv:
        clients = [threading.Thread(target=pull) for _ in range(8)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        with open(f"/proc/{srv.proc.pid}/status") as f:
            peak_kib = int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1))
    assert results == [(layer.diff_id, layer.uncompressed_size)] * 8
    assert peak_kib < 150 * 1024, f"peak RSS {peak_kib} KiB while streaming {8 * size >> 20} MiB"



def _get_all(port, path, clients):
    """GET path from `clients` connections at once: [(status, declared length, bytes read, complete?)]."""
    results = []

    def get():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            length = int(response.headers.get("Content-Length", -1))
            try:
                body, complete = response.read(), True
            except http.client.IncompleteRead as cut:
                body, complete = cut.partial, False
            results.append((response.status, length, body, complete))
        finally:
            conn.close()

    threads = [threading.Thread(target=get) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.parametrize("codec_lz4", [True, False], ids=["lz4", "none"])
def test_clients_sharing_a_cached_layer_are_all_cut_off_when_it_fails(tmp_path, codec_lz4):
    """The layer cache's fill is shared by every client of the layer: a damaged layer (a
    codec-none one too: stored bytes that are the tar itself) reaches none of them whole,
    neither those that asked together nor one that asks after."""
    repo = make_repo(tmp_path, {"bad:1": [{"big.bin": 6 << 20}]}, codec_lz4=codec_lz4)
    big = repo_image(repo, "bad:1")[0].layers[0]
    _corrupt_middle(repo, big.diff_id)
    with serving(repo, tmp_path) as srv:
        for round_ in (_get_all(srv.port, f"/v2/bad/blobs/{big.diff_id}", 4),
                       _get_all(srv.port, f"/v2/bad/blobs/{big.diff_id}", 1)):
            for status, length, body, complete in round_:
                assert status == 200 and length == big.uncompressed_size
                assert not complete and len(body) < big.uncompressed_size
        assert srv.request("GET", "/v2/")[0] == 200
        log = srv.log()
    assert log.count(f"layer {big.diff_id}") >= 2 and "corrupt" in log


def test_a_layer_is_decoded_once_and_its_cache_is_removed_on_exit(tmp_path):
    repo = make_repo(tmp_path, {"app:1": [BASE, {"app.bin": 3 << 20}]})
    record = repo_image(repo, "app:1")[0]
    layer = record.layers[1]
    temp = tmp_path / "temp"
    temp.mkdir()
    env = dict(os.environ, DOGESTRY_TEMP_DIR=str(temp))
    srv = start_serving(repo, tmp_path, env=env)
    try:
        path = f"/v2/app/blobs/{layer.diff_id}"
        assert all(sha256(body) == layer.diff_id and complete for _, _, body, complete in _get_all(srv.port, path, 3))
        (cache,) = temp.iterdir()
        assert cache.name.startswith("dogestry-serve-") and (cache.stat().st_mode & 0o777) == 0o700
        assert [f.name for f in cache.iterdir()] == [layer.diff_id[7:]]
        # Verified once, served from the cache since: the repository's file is no longer read.
        os.unlink(os.path.join(repo, "layers", "sha256", layer.diff_id[7:]))
        status, _, body = srv.request("GET", path)
        assert status == 200 and sha256(body) == layer.diff_id
        status, headers, body = srv.request("GET", path, {"Range": "bytes=100-199"})
        assert status == 206 and len(body) == 100 and headers["Content-Range"].startswith("bytes 100-199/")
    finally:
        assert srv.stop() == 0, srv.log()
    assert list(temp.iterdir()) == []


def test_the_layer_cache_stays_within_its_bound(tmp_path):
    """A layer larger than the bound is streamed, uncached; the least recently used layer
    nobody reads makes room for a new one."""
    from dogestry.backends import open_backend
    from dogestry.repo import Repository
    from dogestry.serve import LayerCache, Server

    repo_path = make_repo(tmp_path, {"app:1": [{"a.bin": 2 << 20}], "app:2": [{"b.bin": 2 << 20}],
                                     "app:3": [{"c.bin": 5 << 20}]})
    a, b, c = (repo_image(repo_path, f"app:{n}")[0].layers[0] for n in (1, 2, 3))
    repo = Repository(open_backend(repo_path))
    warnings = []
    cache = LayerCache.create(repo, str(tmp_path), warnings.append, limit=3 << 20)
    server = Server(repo, cache=cache, warn=warnings.append)
    port = server.start()
    try:
        def fetch(layer):
            ((status, _, body, complete),) = _get_all(port, f"/v2/app/blobs/{layer.diff_id}", 1)
            assert status == 200 and complete and sha256(body) == layer.diff_id
            return sorted(f.name for f in os.scandir(cache.dir))

        assert fetch(a) == [a.diff_id[7:]]
        assert fetch(b) == [b.diff_id[7:]]   # a evicted: both do not fit in 3 MiB
        assert fetch(c) == [b.diff_id[7:]]   # c is larger than the bound: streamed
    finally:
        server.stop()
    assert not os.path.exists(cache.dir) and warnings == []



def test_a_full_cache_disk_cuts_off_that_layer_and_later_ones_stream(tmp_path):
    """A small tmpfs as the temp dir, filled up by someone else after the server started:
    the layer being written is cut off for its client, the server warns once and streams
    every layer from the repository from then on."""
    from dogestry.backends import open_backend
    from dogestry.repo import Repository
    from dogestry.serve import LayerCache, Server

    repo_path = make_repo(tmp_path, {"app:1": [{"a.bin": 3 << 20}]})
    layer = repo_image(repo_path, "app:1")[0].layers[0]
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], check=True)
    try:
        warnings = []
        repo = Repository(open_backend(repo_path))
        cache = LayerCache.create(repo, str(small), warnings.append)
        assert cache.limit >= layer.uncompressed_size   # it fits, as far as the server knows
        with open(small / "filler", "wb") as f:       # ... until the disk fills up
            f.write(b"\0" * (7 << 20))
        server = Server(repo, cache=cache, warn=warnings.append)
        port = server.start()
        try:
            path = f"/v2/app/blobs/{layer.diff_id}"
            ((status, length, body, complete),) = _get_all(port, path, 1)
            assert status == 200 and length == layer.uncompressed_size and not complete
            for _ in range(2):
                ((status, _, body, complete),) = _get_all(port, path, 1)
                assert status == 200 and complete and sha256(body) == layer.diff_id
        finally:
            server.stop()
        # The failed request, and once that the cache is given up.
        given_up = [w for w in warnings if w.endswith("layers are streamed from the repository from now on")]
        assert len(warnings) == 2 and len(given_up) == 1, warnings
        assert all("No space left on device" in w for w in warnings)
    finally:
        subprocess.run(["umount", str(small)], check=True)


# -- the command ---------------------------------------------------------------------------
def test_sigterm_stops_it_cleanly_and_listen_is_checked(small_repo, tmp_path):
    srv = start_serving(small_repo, tmp_path)
    assert srv.request("GET", "/v2/")[0] == 200
    assert srv.stop() == 0 and srv.log().rstrip().endswith("stopped")
    # Another process already has the port: one line naming the address.
    srv = start_serving(small_repo, tmp_path)
    try:
        taken = dogestry("serve", small_repo, "--listen", srv.host, check=False)
        assert taken.returncode == 1
        assert taken.stderr.decode().strip() == (f"dogestry: cannot listen on {srv.host}: Address already in use")
    finally:
        assert srv.stop() == 0
    for listen in ("127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000", "[::1:0"):
        bad = dogestry("serve", small_repo, "--listen", listen, check=False)
        assert bad.returncode == 2 and bad.stderr.decode().count("\n") == 1 and "--listen" in bad.stderr.decode()
    (tmp_path / "empty").mkdir()
    empty = dogestry("serve", str(tmp_path / "empty"), "--listen", "127.0.0.1:0", check=False)
    assert empty.returncode == 1 and "holds no dogestry repository" in empty.stderr.decode()


def test_a_non_loopback_address_is_served_with_a_warning(small_repo, tmp_path):
    log = tmp_path / "wide.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, BIN, "serve", small_repo, "--listen", "0.0.0.0:0"], stderr=err)
    try:
        deadline = time.monotonic() + 30
        while "listening on" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        text = log.read_text()
        assert "warning: listening on 0.0.0.0, not a loopback address" in text
        port = int(re.search(r"listening on http://0\.0\.0\.0:(\d+)", text).group(1))
        assert Served(proc, port, log).request("GET", "/v2/")[0] == 200
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(20) == 0


def test_the_library_serves_from_a_background_thread(small_repo):
    from dogestry.backends import open_backend
    from dogestry.repo import Repository
    from dogestry.serve import Server

    lines = []
    server = Server(Repository(open_backend(small_repo)), log=lines.append)
    port = server.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/v2/team/app/manifests/1")
        assert conn.getresponse().read() == repo_image(small_repo, "team/app:1")[2]
        conn.close()
    finally:
        server.stop()
    assert any('"GET /v2/team/app/manifests/1 HTTP/1.1" 200' in line for line in lines)
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=5).request("GET", "/v2/")



def test_connections_beyond_the_cap_are_told_to_retry_and_idle_ones_do_not_block_others(small_repo, monkeypatch):
    """A client that opens connections and never finishes a request holds a thread each:
    past MAX_CONNECTIONS the server answers 429 at once instead of growing without bound."""
    from dogestry import serve
    from dogestry.backends import open_backend
    from dogestry.repo import Repository

    monkeypatch.setattr(serve, "MAX_CONNECTIONS", 3)
    server = serve.Server(Repository(open_backend(small_repo)), log=lambda line: None)
    port = server.start()
    idle = []
    try:
        for _ in range(3):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            idle[-1].sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")  # never ends its headers
        time.sleep(0.3)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/v2/team/app/manifests/1")
        refused = conn.getresponse()
        assert refused.status == 429 and json.loads(refused.read())["errors"][0]["code"] == "TOOMANYREQUESTS"
        conn.close()
        idle.pop().close()
        deadline = time.monotonic() + 10
        while True:  # the freed slot is taken back once its thread sees the close
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/v2/team/app/manifests/1")
            answer = conn.getresponse()
            body = answer.read()
            conn.close()
            if answer.status != 429 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert answer.status == 200 and body == repo_image(small_repo, "team/app:1")[2]
    finally:
        for sock in idle:
            sock.close()
        server.stop()

def test_serves_an_s3_remote_and_a_shared_url(seaweed, tmp_path, small_repo):
    prefix = f"serve-{uuid.uuid4().hex[:8]}"
    url = seaweed.url(prefix)
    env = seaweed.env()
    walk = dogestry("walk-ancestry", small_repo, "team/app:1").stdout
    dogestry("sync-objects", "--stdin", small_repo, url, input=walk, env=env)
    record, config, manifest = repo_image(small_repo, "team/app:1")
    dogestry("update-ref", url, "team/app:1", record.id, env=env)
    shared = dogestry("share", url, "team/app:1", "--expires", "1h", env=env).stdout.decode().strip()
    for remote in (url, shared):
        with serving(remote, tmp_path, env=env) as srv:
            assert srv.request("GET", "/v2/team/app/manifests/1")[2] == manifest
            assert srv.request("GET", f"/v2/team/app/blobs/{record.id}")[2] == config
            for layer in record.layers:
                assert sha256(srv.request("GET", f"/v2/team/app/blobs/{layer.diff_id}")[2]) == layer.diff_id
            assert "X-Amz-Signature" not in srv.log()


# -- real clients ------------------------------------------------------------------------
def test_docker_pull_from_serve(engine, unique, tmp_path):
    repo = str(tmp_path / "repo")
    engine.import_base(f"t{unique}/base:1")
    engine.build(f"t{unique}/app:1", f"t{unique}/base:1", {"hello.txt": f"hello {unique}\n"})
    before = engine.inspect(f"t{unique}/app:1")
    image_id = dogestry("push", repo, f"t{unique}/app:1", env=engine.env()).stdout.decode().split()[0]
    engine.rmi(f"t{unique}/app:1", f"t{unique}/base:1")
    _, _, manifest = repo_image(repo, f"t{unique}/app:1")
    with serving(repo, tmp_path) as srv:
        name = f"{srv.host}/t{unique}/app:1"
        engine.created.append(name)
        pulled = subprocess.run(["docker", "-H", engine.host, "pull", name], capture_output=True, timeout=300)
        assert pulled.returncode == 0, pulled.stderr.decode()
        assert sha256(manifest) in pulled.stdout.decode()
    after = engine.inspect(name)
    assert after["RootFS"]["Layers"] == before["RootFS"]["Layers"]
    if engine.containerd:
        # The containerd store names an image by its manifest, which names the config.
        assert after["Id"] == sha256(manifest) and json.loads(manifest)["config"]["digest"] == image_id
    else:
        assert after["Id"] == image_id
    assert engine.run(name) == f"hello {unique}\n"


def test_docker_pull_of_an_image_with_a_zero_byte_layer(engine, unique, tmp_path):
    """A zero-byte layer is a valid empty diff, but containerd will not fetch a descriptor of
    size zero: serve describes and sends it as a 20-byte gzip of nothing, which every client
    unpacks to the same diffID. Before, the containerd store could not pull such an image."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(unique)
        tar.addfile(info, io.BytesIO(unique.encode()))
    layers = [buf.getvalue(), b""]
    diff_ids = [sha256(layer) for layer in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    save = io.BytesIO()
    with tarfile.open(fileobj=save, mode="w") as tar:
        members = {f"l{i}/layer.tar": layer for i, layer in enumerate(layers)}
        members.update({"config.json": config, "manifest.json": json.dumps(
            [{"Config": "config.json", "RepoTags": [f"t{unique}/zero:1"], "Layers": sorted(members)}]).encode()})
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    repo = str(tmp_path / "repo")
    dogestry("update-ref", "--stdin", repo, input=dogestry("save-to-repo", "--input", "-", repo,
                                                           input=save.getvalue()).stdout)
    with serving(repo, tmp_path) as srv:
        status, _, body = srv.request("GET", f"/v2/t{unique}/zero/manifests/1",
                                      {"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert status == 200 and [layer["size"] for layer in json.loads(body)["layers"]] == [len(layers[0]), 20]
        name = f"{srv.host}/t{unique}/zero:1"
        engine.created.append(name)
        pulled = subprocess.run(["docker", "-H", engine.host, "pull", name], capture_output=True, timeout=300)
        assert pulled.returncode == 0, pulled.stderr.decode()
    assert engine.inspect(name)["RootFS"]["Layers"] == diff_ids


def test_skopeo_inspect_and_copy(small_repo, tmp_path):
    record, config, manifest = repo_image(small_repo, "team/app:1")
    with serving(small_repo, tmp_path) as srv:
        inspected = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{srv.host}/team/app:1"],
                                   capture_output=True, timeout=120)
        assert inspected.returncode == 0, inspected.stderr.decode()
        info = json.loads(inspected.stdout)
        assert info["Digest"] == sha256(manifest) and info["Layers"] == record.diff_ids
        assert sorted(info["RepoTags"]) == ["1", "2", "latest", "rc"]
        dest = tmp_path / "copy"
        copied = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{srv.host}/team/app:1",
                                 f"dir:{dest}"], capture_output=True, timeout=300)
        assert copied.returncode == 0, copied.stderr.decode()
    assert (dest / "manifest.json").read_bytes() == manifest
    assert (dest / record.id[7:]).read_bytes() == config
    for layer in record.layers:
        assert sha256_file(dest / layer.diff_id[7:]) == layer.diff_id


@pytest.fixture
def containerd(tmp_path):
    """Debian 12's containerd on a private socket and state, for ctr to pull into."""
    base = tmp_path / "ctrd"
    base.mkdir()
    sock = base / "c.sock"
    (base / "config.toml").write_text(
        f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{base}/opt"\n')
    with open(base / "log", "wb") as log:
        proc = subprocess.Popen(["containerd", "--config", str(base / "config.toml")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["ctr", "-a", str(sock), "version"], capture_output=True).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, (base / "log").read_text()[-2000:]
            time.sleep(0.2)
        yield str(sock)
    finally:
        proc.terminate()
        proc.wait(30)
        subprocess.run(["umount", "-R", str(base / "root")], capture_output=True)  # native snapshots leave none


def test_ctr_pull_into_containerd(containerd, small_repo, tmp_path):
    record, config, manifest = repo_image(small_repo, "team/app:1")

    def ctr(*args):
        proc = subprocess.run(["ctr", "-a", containerd, "-n", "test", *args], capture_output=True, timeout=300)
        assert proc.returncode == 0, (args, proc.stderr.decode())
        return proc.stdout

    with serving(small_repo, tmp_path) as srv:
        name = f"{srv.host}/team/app:1"
        ctr("image", "pull", "--plain-http", "--snapshotter", "native", name)
    listed = ctr("image", "ls").decode()
    assert re.search(rf"{re.escape(name)}\s+application/vnd\.oci\.image\.manifest\.v1\+json\s+{sha256(manifest)}", listed)
    assert ctr("content", "get", record.id) == config
    assert ctr("content", "get", sha256(manifest)) == manifest
    snapshots = ctr("snapshot", "--snapshotter", "native", "ls").decode()
    assert record.diff_ids[0] in snapshots  # unpacked: the base layer's chain id is its diffID


def test_docker_pull_of_a_corrupted_layer_fails(engine_named, tmp_path):
    # The containerd store, because it gives up at once; graphdriver engines retry the
    # cut-off download for over a minute before failing alike (checked by hand).
    engine = engine_named("d26c")
    with open("/bin/busybox", "rb") as f:
        repo = make_repo(tmp_path, {"corrupt/app:1": [{"bin/busybox": f.read()}, {"big.bin": 4 << 20}]})
    _corrupt_middle(repo, repo_image(repo, "corrupt/app:1")[0].layers[1].diff_id)
    with serving(repo, tmp_path) as srv:
        name = f"{srv.host}/corrupt/app:1"
        engine.created.append(name)
        pulled = subprocess.run(["docker", "-H", engine.host, "pull", name], capture_output=True, timeout=300)
        assert pulled.returncode != 0 and "EOF" in pulled.stderr.decode()
        assert engine.inspect(name) is None
        assert srv.request("GET", "/v2/corrupt/app/tags/list")[0] == 200
