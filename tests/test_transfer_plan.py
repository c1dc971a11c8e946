"""Push and pull planning in-process, against a small fake of the engine adapter.

The fake has the narrow interface of engine.Engine (uses_containerd_store, inspect,
require, layer_chains, save, load, tag) and keeps its images in memory; the repository is
a real local directory. These run in seconds, without dockerd; tests/test_engines.py
proves the same behaviour against real engines.
"""

import hashlib
import io
import json
import tarfile

import pytest

from dogestry.backends import open_backend
from dogestry.context import Context
from dogestry.digests import chain_ids, sha256_digest
from dogestry.errors import NotFound
from dogestry.image import EngineImage
from dogestry.refs import parse_ref
from dogestry.repo import Repository
from dogestry.transfer import plan_load, pull, push, save_images


def _layer(text):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = (text * 4000).encode()
        info = tarfile.TarInfo(f"files/{hashlib.sha256(text.encode()).hexdigest()[:8]}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _tar(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class FakeEngine:
    """An engine that holds images in memory and exports them in Docker 25+'s OCI layout."""

    def __init__(self, containerd=False):
        self.containerd = containerd
        self.images = {}       # id -> (config bytes, [layer tar bytes])
        self.tags = {}         # "name:tag" -> id
        self.saves, self.loads = [], []

    def add(self, tag, layers):
        config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [sha256_digest(x) for x in layers]},
                             "tag": tag}).encode()
        image_id = sha256_digest(config)
        self.images[image_id] = (config, layers)
        self.tags[tag] = image_id
        return image_id

    # -- the engine adapter's interface -------------------------------------------------
    def uses_containerd_store(self):
        return self.containerd

    def inspect(self, name):
        image_id = self.tags.get(name, name)
        if image_id not in self.images:
            return None
        config, layers = self.images[image_id]
        return EngineImage(image_id, [sha256_digest(x) for x in layers],
                           [t for t, i in self.tags.items() if i == image_id], sum(map(len, layers)))

    def require(self, name):
        found = self.inspect(name)
        if found is None:
            raise NotFound(f"image {name} not found")
        return found

    def layer_chains(self):
        return {c for config, layers in self.images.values() for c in chain_ids([sha256_digest(x) for x in layers])}

    def save(self, names, size=0, platform=None):
        self.saves.append(list(names))
        entries, manifest = [], []
        for name in names:
            image_id = self.tags.get(name, name)
            config, layers = self.images[image_id]
            entries += [(f"blobs/sha256/{sha256_digest(x)[7:]}", x) for x in layers]
            entries.append((f"blobs/sha256/{image_id[7:]}", config))
            manifest.append({"Config": f"blobs/sha256/{image_id[7:]}", "RepoTags": [name] if ":" in name else [],
                             "Layers": [f"blobs/sha256/{sha256_digest(x)[7:]}" for x in layers]})
        entries.append(("manifest.json", json.dumps(manifest).encode()))
        return io.BytesIO(_tar(entries))

    def load(self, chunks):
        data = b"".join(chunks)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            names = tar.getnames()
            manifest = json.load(tar.extractfile("manifest.json"))
            blobs = {n: tar.extractfile(n).read() for n in names if n.startswith("blobs/")}
        have = {sha256_digest(x): x for _, layers in self.images.values() for x in layers}
        for item in manifest:
            config = blobs[item["Config"]]
            layers = [blobs.get(p) or have[f"sha256:{p.rsplit('/', 1)[1]}"] for p in item["Layers"]]
            image_id = sha256_digest(config)
            self.images[image_id] = (config, layers)
            for tag in item["RepoTags"] or []:
                self.tags[tag] = image_id
        self.loads.append([n for n in names if n.startswith("blobs/")])

    def tag(self, image_id, ref):
        self.tags[str(ref)] = image_id


@pytest.fixture
def repo(tmp_path):
    return Repository(open_backend(str(tmp_path / "repo")))


BASE, MID, APP1, APP2 = _layer("base"), _layer("mid"), _layer("app one"), _layer("app two")


def test_push_stores_an_image_and_its_ref_then_a_repush_makes_no_save(repo):
    engine = FakeEngine()
    image_id = engine.add("app:1", [BASE, MID, APP1])
    ctx = Context(engine=engine)
    assert push(ctx, repo, ["app:1"]) == [(image_id, parse_ref("app:1"))]
    assert engine.saves == [["app:1"]]
    assert repo.get_ref(parse_ref("app:1")) == image_id and repo.holds_whole(image_id)
    assert push(ctx, repo, ["app:1"]) == [(image_id, parse_ref("app:1"))]
    assert engine.saves == [["app:1"]]  # the remote holds it whole: no second save


def test_save_images_makes_no_save_for_what_the_remote_holds_and_keeps_the_order_named(repo):
    engine = FakeEngine()
    one = engine.add("app:1", [BASE, APP1])
    two = engine.add("app:2", [BASE, APP2])
    ctx = Context(engine=engine)
    save_images(ctx, repo, ["app:1"])
    assert save_images(ctx, repo, ["app:2", "app:1"]) == [(two, parse_ref("app:2")), (one, parse_ref("app:1"))]
    assert engine.saves == [["app:1"], ["app:2"]]
    assert repo.find_ref(parse_ref("app:1")) is None  # save-to-repo writes no refs


def test_pull_into_an_empty_engine_sends_every_layer_and_tags(repo):
    source = FakeEngine()
    image_id = source.add("app:1", [BASE, MID, APP1])
    push(Context(engine=source), repo, ["app:1"])
    target = FakeEngine()
    resolved, plan = pull(Context(engine=target), repo, ["app:1"])
    assert resolved == [(image_id, parse_ref("app:1"))]
    assert plan.include == {sha256_digest(x) for x in (BASE, MID, APP1)} and not plan.to_tag
    assert target.tags["app:1"] == image_id and target.images[image_id][1] == [BASE, MID, APP1]


def test_incremental_pull_plans_only_the_layers_above_what_the_engine_has(repo):
    source = FakeEngine()
    source.add("app:1", [BASE, MID, APP1])
    two = source.add("app:2", [BASE, MID, APP2])
    push(Context(engine=source), repo, ["app:1", "app:2"])
    target = FakeEngine()
    target.add("app:1", [BASE, MID, APP1])
    plan = plan_load(Context(engine=target), repo, [(two, [parse_ref("app:2")])])
    assert plan.include == {sha256_digest(APP2)}
    assert {layer.diff_id for layer in plan.skipped_layers()} == {sha256_digest(BASE), sha256_digest(MID)}
    pull(Context(engine=target), repo, ["app:2"])
    assert target.loads == [[f"blobs/sha256/{sha256_digest(APP2)[7:]}", f"blobs/sha256/{two[7:]}",
                             target.loads[0][2]]]  # the layer, the config, the OCI manifest


def test_pull_of_an_image_the_engine_has_only_tags_it(repo):
    source = FakeEngine()
    image_id = source.add("app:1", [BASE, APP1])
    push(Context(engine=source), repo, ["app:1"])
    plan = plan_load(Context(engine=source), repo, [(image_id, [parse_ref("app:9")])])
    assert not plan.images and plan.to_tag == [(image_id, [parse_ref("app:9")])]


def test_the_containerd_store_gets_every_layer_of_an_image_it_lacks(repo):
    source = FakeEngine()
    source.add("app:1", [BASE, APP1])
    two = source.add("app:2", [BASE, APP2])
    push(Context(engine=source), repo, ["app:1", "app:2"])
    target = FakeEngine(containerd=True)
    target.add("app:1", [BASE, APP1])
    plan = plan_load(Context(engine=target), repo, [(two, [])])
    assert plan.include == {sha256_digest(BASE), sha256_digest(APP2)}


def test_a_push_repairs_a_descriptor_that_does_not_describe_the_stored_bytes(tmp_path):
    """Issue 9 #1: data stored with one codec, a descriptor written for another."""
    engine = FakeEngine()
    image_id = engine.add("app:1", [BASE, APP1])
    lz4_repo = Repository(open_backend(str(tmp_path / "r")), codec="lz4")
    push(Context(engine=engine), lz4_repo, ["app:1"])
    key = tmp_path / "r" / "layers" / "sha256" / f"{sha256_digest(APP1)[7:]}.json"
    desc = json.loads(key.read_text())
    key.write_text(json.dumps(dict(desc, codec="none", size=len(APP1), digest=sha256_digest(APP1))))
    (tmp_path / "r" / "images" / "sha256" / f"{image_id[7:]}.json").unlink()
    none_repo = Repository(open_backend(str(tmp_path / "r")), codec="none")
    push(Context(engine=engine), none_repo, ["app:1"])
    repaired = json.loads(key.read_text())
    assert repaired["codec"] == "lz4" and repaired == desc
    target = FakeEngine()
    pull(Context(engine=target), none_repo, ["app:1"])
    assert target.tags["app:1"] == image_id


@pytest.mark.parametrize("first, second", [("lz4", "none"), ("none", "lz4")])
def test_data_without_descriptor_is_described_as_stored_by_a_push_with_another_codec(tmp_path, first, second):
    """Issue 9 #1: a push killed between layer data and descriptor, re-run with the other codec."""
    engine = FakeEngine()
    image_id = engine.add("app:1", [BASE, APP1])
    push(Context(engine=engine), Repository(open_backend(str(tmp_path / "r")), codec=first), ["app:1"])
    for path in (tmp_path / "r").glob("layers/sha256/*.json"):
        path.unlink()
    for path in (tmp_path / "r").glob("images/sha256/*.json"):
        path.unlink()
    repo = Repository(open_backend(str(tmp_path / "r")), codec=second)
    push(Context(engine=engine), repo, ["app:1"])
    for layer in repo.get_image(image_id).layers:
        assert layer.codec == first
    target = FakeEngine()
    pull(Context(engine=target), repo, ["app:1"])
    assert target.images[image_id][1] == [BASE, APP1]
