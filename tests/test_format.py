"""Repository format and save/load tar handling, on real files (no engine)."""

import gzip
import hashlib
import io
import json
import os
import tarfile

import pytest

from dogestry.backends import open_backend
from dogestry.dockertar import load_tar_chunks, read_save_stream
from dogestry.errors import CorruptObject, DogestryError, NotFound
from dogestry.refs import parse_ref
from dogestry.image import Image
from dogestry.repo import Repository


def _layer_tar(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _config(layers):
    return json.dumps({"architecture": "amd64", "os": "linux",
                       "rootfs": {"type": "layers", "diff_ids": [_digest(x) for x in layers]}}).encode()


def _save_tar(entries):
    """entries: list of (name, bytes) or (name, ('symlink', target))."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def repo(tmp_path):
    return Repository(open_backend(str(tmp_path / "repo")))


class _Sink:
    """The layer sink read_save_stream writes to: the repository, skipping what it has."""

    def __init__(self, repo):
        self.repo, self.stored = repo, []

    def store(self, chunks, expect, path=None, size=None):
        desc, _ = self.repo.store_layer(chunks, expect)
        self.stored.append(desc.diff_id)
        return desc

    def known(self, diff_id, size):
        return self.repo.present_layer(diff_id)


def _scan(repo, data):
    return read_save_stream(io.BytesIO(data), _Sink(repo))


BIG = os.urandom(2 << 20)
L1 = _layer_tar({"bin/x": BIG})
L2 = _layer_tar({"etc/y": b"y" * 100})


def test_scan_docker_1_10_to_24_format_with_symlinked_duplicate(repo):
    config = _config([L1, L2, L1])
    cid = _digest(config)[7:]
    data = _save_tar([(f"{cid}.json", config), ("aaa/layer.tar", L1), ("bbb/layer.tar", L2),
                      ("ccc/layer.tar", ("symlink", "../aaa/layer.tar")),
                      ("manifest.json", json.dumps([{"Config": f"{cid}.json", "RepoTags": ["app:1"],
                                                     "Layers": ["aaa/layer.tar", "bbb/layer.tar", "ccc/layer.tar"]}]).encode())])
    images = _scan(repo, data)
    assert [i.id for i in images] == [_digest(config)]
    assert images[0].repo_tags == ["app:1"]
    assert [r.diff_id for r in images[0].layer_results] == [_digest(L1), _digest(L2), _digest(L1)]
    assert repo.has_layer(_digest(L1)) and repo.has_layer(_digest(L2))


def test_scan_oci_layout_skips_known_layers_unread(repo):
    config = _config([L1, L2])
    desc, _ = repo.store_layer(iter([L1]))
    data = _save_tar([(f"blobs/sha256/{_digest(L1)[7:]}", L1), (f"blobs/sha256/{_digest(L2)[7:]}", L2),
                      (f"blobs/sha256/{_digest(config)[7:]}", config), ("oci-layout", b"{}"),
                      ("manifest.json", json.dumps([{"Config": f"blobs/sha256/{_digest(config)[7:]}",
                                                     "Layers": [f"blobs/sha256/{_digest(L1)[7:]}",
                                                                f"blobs/sha256/{_digest(L2)[7:]}"]}]).encode())])
    sink = _Sink(repo)
    images = read_save_stream(io.BytesIO(data), sink)
    assert [r.diff_id for r in images[0].layer_results] == [desc.diff_id, _digest(L2)]
    assert sink.stored == [_digest(L2)]  # L1 skipped by name, never re-stored


def test_scan_containerd_store_gzip_blobs_are_decompressed_and_checked(repo):
    config = _config([L1])
    gz = gzip.compress(L1)
    data = _save_tar([(f"blobs/sha256/{_digest(gz)[7:]}", gz), (f"blobs/sha256/{_digest(config)[7:]}", config),
                      ("manifest.json", json.dumps([{"Config": f"blobs/sha256/{_digest(config)[7:]}",
                                                     "Layers": [f"blobs/sha256/{_digest(gz)[7:]}"]}]).encode())])
    images = _scan(repo, data)
    assert images[0].layer_results[0].diff_id == _digest(L1)
    assert b"".join(repo.layer_chunks(repo.layer_descriptor(_digest(L1)))) == L1


def test_scan_refuses_a_layer_that_does_not_match_the_config(repo):
    config = _config([L2])
    cid = _digest(config)[7:]
    data = _save_tar([(f"{cid}.json", config), ("aaa/layer.tar", L1),
                      ("manifest.json", json.dumps([{"Config": f"{cid}.json", "Layers": ["aaa/layer.tar"]}]).encode())])
    with pytest.raises(DogestryError, match="diffID"):
        _scan(repo, data)


@pytest.mark.parametrize("data", [b"", b"not a tar at all" * 64, _save_tar([("x", b"1")])[:700]])
def test_scan_refuses_non_tar_and_truncated_input(repo, data):
    with pytest.raises(DogestryError):
        _scan(repo, data)


@pytest.mark.parametrize("codec", ["lz4", "none"])
def test_layer_round_trip_and_descriptor(tmp_path, codec):
    repo = Repository(open_backend(str(tmp_path / codec)), codec=codec)
    desc, new = repo.store_layer(iter([L1[:1000], L1[1000:]]))
    assert new and desc.codec == codec and desc.uncompressed_size == len(L1) and desc.diff_id == _digest(L1)
    assert b"".join(repo.layer_chunks(desc)) == L1
    assert repo.store_layer(iter([L1]))[1] is False


def test_corrupt_layer_is_detected_before_its_last_chunk(repo, tmp_path):
    desc, _ = repo.store_layer(iter([L1]))
    path = tmp_path / "repo" / "layers" / "sha256" / desc.diff_id[7:]
    data = bytearray(path.read_bytes())
    data[-100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptObject, match=desc.diff_id[7:]):
        b"".join(repo.layer_chunks(desc))


def test_unknown_format_version_is_refused(repo, tmp_path):
    repo.put_config(b"{}")
    for version, message in (("3", "version 3"), ('"1"', "damaged"), ("true", "damaged"), ("2.5", "damaged"),
                             ("null", "damaged"), ("[]", "damaged")):
        (tmp_path / "repo" / "dogestry.json").write_text(f'{{"format": "dogestry-repository", "version": {version}}}')
        fresh = Repository(open_backend(str(tmp_path / "repo")))
        with pytest.raises(DogestryError, match=message):
            fresh.list_refs()


def test_ref_to_an_incomplete_image_is_refused(repo):
    config = _config([L1])
    desc, _ = repo.store_layer(iter([L1]))
    image_id = repo.put_config(config)
    with pytest.raises(NotFound):
        repo.set_ref(parse_ref("app:1"), image_id)
    missing = Image(image_id, len(config), [desc])
    repo.put_image(missing)
    repo.backend.delete(f"layers/sha256/{desc.diff_id[7:]}.json")
    with pytest.raises(DogestryError, match="lacks"):
        repo.set_ref(parse_ref("app:1"), image_id)
    assert repo.list_refs() == []


def test_resolve_names_and_prefixes(repo):
    ids = []
    for layer in (L1, L2):
        desc, _ = repo.store_layer(iter([layer]))
        config = _config([layer])
        image_id = repo.put_config(config)
        repo.put_image(Image(image_id, len(config), [desc]))
        ids.append(image_id)
    repo.set_ref(parse_ref("app:1"), ids[0])
    assert repo.resolve("app:1") == (ids[0], parse_ref("app:1"))
    assert repo.resolve(ids[1][7:15]) == (ids[1], None)
    with pytest.raises(NotFound):
        repo.resolve("app:2")
    # Add images until two ids share a first hex digit, then that digit is ambiguous.
    desc = repo.layer_descriptor(ids[0] and _digest(L1))
    seen = {i[7] for i in ids}
    n = 0
    while len(seen) == len(ids):
        n += 1
        config = json.dumps({"n": n, "rootfs": {"type": "layers", "diff_ids": [desc.diff_id]}}).encode()
        image_id = repo.put_config(config)
        repo.put_image(Image(image_id, len(config), [desc]))
        ids.append(image_id)
        seen.add(image_id[7])
    shared = next(c for c in seen if sum(i[7] == c for i in ids) > 1)
    with pytest.raises(DogestryError, match="ambiguous"):
        repo.resolve(shared)


def test_load_tar_puts_metadata_last_and_leaves_out_present_layers(repo):
    d1, _ = repo.store_layer(iter([L1]))
    d2, _ = repo.store_layer(iter([L2]))
    config = _config([L1, L2])
    image = Image.from_config(config, [d1, d2], tags=[parse_ref("app:1")])
    data = b"".join(load_tar_chunks([image], repo.layer_chunks, include={d2.diff_id}))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))
        index = json.load(tar.extractfile("index.json"))
        assert tar.extractfile(f"blobs/sha256/{d2.diff_id[7:]}").read() == L2
    assert names[-3:] == ["oci-layout", "index.json", "manifest.json"]
    assert f"blobs/sha256/{d1.diff_id[7:]}" not in names
    assert manifest[0]["RepoTags"] == ["app:1"]
    assert manifest[0]["Layers"] == [f"blobs/sha256/{d1.diff_id[7:]}", f"blobs/sha256/{d2.diff_id[7:]}"]
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == "docker.io/library/app:1"


def test_decompression_is_bounded_whatever_the_ratio(repo):
    """1 MiB of lz4 or gzip can expand to hundreds of MiB; pieces stay at 1 MiB."""
    from dogestry.dockertar import uncompressed_chunks

    zeros = b"\0" * (200 << 20)
    desc, _ = repo.store_layer(iter(zeros[i:i + (1 << 20)] for i in range(0, len(zeros), 1 << 20)))
    assert desc.size < 2 << 20
    sizes = [len(c) for c in repo.layer_chunks(desc)]
    assert sum(sizes) == len(zeros) and max(sizes) <= 1 << 20
    gz = gzip.compress(zeros[:50 << 20]) + gzip.compress(b"tail")
    pieces = list(uncompressed_chunks(gz[:2], iter([gz[i:i + 65536] for i in range(0, len(gz), 65536)])))
    assert b"".join(pieces) == zeros[:50 << 20] + b"tail" and max(map(len, pieces)) <= 1 << 20


def _image(repo, layer):
    desc, _ = repo.store_layer(iter([layer]))
    config = _config([layer])
    image_id = repo.put_config(config)
    repo.put_image(Image.from_config(config, [desc]))
    return image_id


def test_refs_that_collided_in_version_1_coexist(repo, tmp_path):
    """app:sub and app/sub:1, and a registry host in brackets (IPv6), are all valid references."""
    one, two = _image(repo, L1), _image(repo, L2)
    refs = {"app:sub": one, "app/sub:1": two, "[::1]:5000/team/app:1": one, "app:_tags": two}
    for text, image_id in refs.items():
        repo.set_ref(parse_ref(text), image_id)
    fresh = Repository(open_backend(str(tmp_path / "repo")))
    assert {str(ref): image_id for image_id, ref in fresh.list_refs()} == refs
    assert all(fresh.resolve(text)[0] == image_id for text, image_id in refs.items())


def _v1_repository(path, refs):
    """A repository as dogestry wrote it before format version 2."""
    repo = Repository(open_backend(str(path)))
    ids = {text: _image(repo, layer) for text, layer in refs.items()}
    (path / "dogestry.json").write_text('{"format": "dogestry-repository", "version": 1}\n')
    for text, image_id in ids.items():
        ref = parse_ref(text)
        key = path / "repositories" / ref.name / ref.tag
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_text(image_id + "\n")
    import shutil

    shutil.rmtree(path / "repositories" / "app" / "_tags", ignore_errors=True)
    return ids


def test_version_1_is_read_as_it_is_and_upgraded_by_the_first_write(tmp_path):
    ids = _v1_repository(tmp_path / "v1", {"app:1": L1, "team/app:2": L2})
    reader = Repository(open_backend(str(tmp_path / "v1")))
    assert {str(r): i for i, r in reader.list_refs()} == ids and reader.version == 1
    writer = Repository(open_backend(str(tmp_path / "v1")))
    writer.set_ref(parse_ref("app:sub"), ids["app:1"])
    assert json.loads((tmp_path / "v1" / "dogestry.json").read_text())["version"] == 2
    assert not (tmp_path / "v1" / "repositories" / "app" / "1").exists()
    fresh = Repository(open_backend(str(tmp_path / "v1")))
    assert {str(r): i for i, r in fresh.list_refs()} == dict(ids, **{"app:sub": ids["app:1"]})
    writer.set_ref(parse_ref("app/sub:1"), ids["team/app:2"])  # collided with app:sub in version 1
    assert Repository(open_backend(str(tmp_path / "v1"))).resolve("app/sub:1")[0] == ids["team/app:2"]


def test_an_upgrade_interrupted_at_each_step_leaves_every_ref_readable(tmp_path, monkeypatch):
    from dogestry.backends.local import LocalBackend

    for step in ("copy", "marker", "delete"):
        path = tmp_path / step
        ids = _v1_repository(path, {"app:1": L1, "team/app:2": L2})
        calls = {"n": 0}
        real_put, real_delete = LocalBackend.put, LocalBackend.delete

        def put(self, key, data, overwrite=False):
            if (step == "copy" and "/_tags/" in key and calls["n"] == 1) or (step == "marker" and key == "dogestry.json"
                                                                             and overwrite):
                raise KeyboardInterrupt  # the process dies here
            calls["n"] += "/_tags/" in key
            return real_put(self, key, data, overwrite)

        def delete(self, key):
            if step == "delete":
                raise KeyboardInterrupt
            return real_delete(self, key)

        monkeypatch.setattr(LocalBackend, "put", put)
        monkeypatch.setattr(LocalBackend, "delete", delete)
        with pytest.raises(KeyboardInterrupt):
            Repository(open_backend(str(path))).set_ref(parse_ref("app:new"), ids["app:1"])
        monkeypatch.setattr(LocalBackend, "put", real_put)
        monkeypatch.setattr(LocalBackend, "delete", real_delete)
        assert {str(r): i for i, r in Repository(open_backend(str(path))).list_refs()} == ids, step
        Repository(open_backend(str(path))).set_ref(parse_ref("app:new"), ids["app:1"])
        assert {str(r): i for i, r in Repository(open_backend(str(path))).list_refs()} == \
            dict(ids, **{"app:new": ids["app:1"]}), step
