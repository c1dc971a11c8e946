"""Unusual images across every engine pair: made on engine X, pushed, pulled into engine Y.

Each engine writes its own save format (d20: Docker 20.10's v1 layout; d26: Docker 26's OCI
layout with layer blobs named by diffID; d26c and d28c: the containerd image store, whose
blobs stay compressed as loaded and whose images may be multi-platform indexes), and each
takes a different load path (a load tar; a pull through a loopback `serve` on the
containerd store). An image only round-trips on one engine in test_adversary.py; here
every source is crossed with every target.

The images are hand-made `docker load` tars (OCI layout with index.json, plus manifest.json
for graphdriver engines), so every odd case is exactly what it claims:

- `fs`: layers gzip- and zstd-compressed as loaded (zstd only where the engine loads it:
  not Docker 20.10), uncompressed, and an empty tar; members that are long names, deep
  paths, unicode and spaces, hard links across directories, absolute and dangling
  symlinks, a set-uid file, a FIFO, a device node, file capabilities (a binary xattr in
  a PAX header), a file of zeros, whiteouts and an opaque directory; a config whose key order and spacing are
  unusual (its id is the sha256 of those bytes), with empty_layer history, a 70 kB label,
  volumes, a healthcheck and an os.version; under three names, one `host:port/a/b/c` with
  a 128-character tag;
- on the containerd store only (graphdriver engines cannot load an index): a
  multi-platform index (arm64, arm/v7, amd64) with a buildx-style attestation manifest,
  one whose platforms have identical layers, and an arm64-only image;
- `zero`: layer tars as other tools write them: zero bytes (a valid empty diff), no
  end-of-archive blocks, trailing zeros, a first header whose checksum sums signed bytes.

Every image's busybox layer is the `fs` image's own (a layer equal to another image's layer).

One push per source (module scope): d20 and d26c push with lz4, d26 and d28c with
`[compressor] lz4 = false`. Each pair then pulls every image, and checks the config bytes
(`docker save` of the target: graphdriver ids are config digests, containerd ids are not),
RootFS.Layers, the exported filesystem (names, types, modes, owners, link targets, devices,
xattrs and bytes) against the source's, and a shell runs.
"""

import gzip
import hashlib
import io
import json
import tarfile
import uuid
from pathlib import Path

import pytest

from conftest import BUSYBOX, ENGINES, TestEngine, add_bytes, dogestry

ALL = ["d20", "d26", "d26c", "d28c"]
CONTAINERD = {"d26c", "d28c"}
NO_LZ4 = {"d26", "d28c"}  # sources that push with [compressor] lz4 = false
MTIME = 1700000000


def _digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, *rest in entries:
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            data = None
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "file":
                data = rest[0]
                info.size, info.mode = len(data), rest[1] if len(rest) > 1 else 0o644
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, rest[0]
            elif kind == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, rest[0], 0o777
            elif kind == "fifo":
                info.type, info.mode = tarfile.FIFOTYPE, 0o640
            elif kind == "chardev":
                info.type, info.mode, info.devmajor, info.devminor = tarfile.CHRTYPE, 0o666, 1, 3
            elif kind == "xattr":
                data = rest[0]
                info.size, info.mode = len(data), 0o755
                # file capabilities (cap_net_bind_service+ep, VFS_CAP_REVISION_2): an xattr
                # every engine keeps on extract and puts back on export, and binary in the header
                caps = (0x02000001).to_bytes(4, "little") + (1 << 10).to_bytes(4, "little") + bytes(12)
                info.pax_headers = {"SCHILY.xattr.security.capability": caps.decode("utf-8", "surrogateescape")}
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _busybox_layer(salt):
    with open(BUSYBOX, "rb") as f:
        data = f.read()
    return _layer([("bin", "dir"), ("bin/busybox", "file", data, 0o755)]
                  + [(f"bin/{tool}", "symlink", "busybox") for tool in ("sh", "cat", "ls", "echo")]
                  + [("salt", "file", salt)])


def _odd_layer(salt):
    long_dir = "d" * 120
    deep = ["p" * 60] * 4
    return _layer([
        ("etc", "dir"), ("etc/a", "file", b"a" * 3000 + salt),
        ("etc/b", "file", b"b" * 3000 + salt), ("h", "dir"), ("h/linked", "hardlink", "etc/b"),  # across directories
        ("x", "dir"), ("x/y", "dir"), ("x/y/linked", "hardlink", "etc/a"), ("x/old", "file", b"old"),
        ("abs", "symlink", "/etc/a"), ("dangling", "symlink", "/no/such/file"),
        (long_dir, "dir"), (f"{long_dir}/{'n' * 110}", "file", b"a name over 100 characters"),
        *[("/".join(deep[:i]), "dir") for i in range(1, 5)],
        ("/".join(deep + ["f" * 40]), "file", b"a path over 255 characters"),
        ("uni c\u00f6de \u2603 and spaces", "file", b"snow"),
        ("suid", "file", b"#!/bin/sh\n", 0o4755),
        ("fifo", "fifo"), ("devnull", "chardev"),
        ("xa", "xattr", b"has an xattr"),
        ("zeros", "file", b"\0" * (1 << 20) + b"end"),
    ])


def _signed_layer(salt, size=1000):
    """A USTAR layer whose first name is not ASCII and whose header checksum sums signed
    bytes, as old tar writers did (Go's archive/tar, so every engine, takes it)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT, encoding="latin-1") as tar:
        info = tarfile.TarInfo("\u00e9t\u00e9")
        info.size, info.mtime = size + len(salt), MTIME
        tar.addfile(info, io.BytesIO(bytes(size) + salt))
    header = bytearray(buf.getvalue()[:512])
    header[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in header)
    assert signed != sum(header)
    header[148:156] = b"%06o\0 " % signed
    return bytes(header) + buf.getvalue()[512:]


def _whiteout_layer():
    return _layer([("etc", "dir"), ("etc/.wh.a", "file", b""),              # removes a file
                   ("x", "dir"), ("x/.wh..wh..opq", "file", b""),           # empties a directory
                   ("x/new", "file", b"new")])


def _zstd(data):
    try:
        import zstandard
    except ImportError:
        # dogestry needs it too, to read what the containerd store keeps zstd-compressed
        pytest.fail("the tests need the zstandard package (pip install zstandard)")
    return zstandard.ZstdCompressor().compress(data)


_LAYER_TYPES = {"gzip": ("application/vnd.oci.image.layer.v1.tar+gzip", lambda d: gzip.compress(d, mtime=0)),
                "zstd": ("application/vnd.oci.image.layer.v1.tar+zstd", _zstd),
                None: ("application/vnd.oci.image.layer.v1.tar", lambda d: d)}
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def _odd_config(diff_ids):
    """Key order and spacing no JSON library writes: its bytes must survive, or the id changes."""
    history = json.dumps([{"created_by": "ADD bb"}, {"created_by": "ENV X=1", "empty_layer": True},
                          {"created_by": "ADD odd"}, {"created_by": "ADD wh"}, {"created_by": "ADD empty"}])
    return ('{ "rootfs" : { "diff_ids" : [ %s ] ,"type":"layers" },\n  "os":"linux", "architecture" :"amd64",'
            ' "os.version": "10.0.17763.1",\n "history": %s,\n "config": {"Labels": {"big": "%s", "z": "1", "a": "2"},'
            ' "Env": ["PATH=/bin", "X=1"], "Volumes": {"/data": {}},'
            ' "Healthcheck": {"Test": ["CMD", "true"], "Interval": 30000000000}, "Cmd": ["/bin/sh"]},'
            ' "created": "2024-01-02T03:04:05.123456789Z"\n}\n'
            % (", ".join(f'"{d}"' for d in diff_ids), history, "L" * 70000)).encode()


def _plain_config(diff_ids, arch="amd64", variant=None):
    config = {"architecture": arch, "os": "linux", "config": {"Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    if variant:
        config["variant"] = variant
    return json.dumps(config).encode()


class _Layout:
    """A `docker load` tar in the OCI layout (index.json), with manifest.json for graphdriver engines."""

    def __init__(self):
        self.blobs, self.index, self.v1 = {}, [], []

    def blob(self, data):
        self.blobs[_digest(data)] = data
        return _digest(data)

    def manifest(self, layers, config, tags=(), v1=True):
        """layers: [(uncompressed tar, compression)]; the manifest's descriptor."""
        config_digest = self.blob(config)
        descriptors = []
        for raw, how in layers:
            media_type, squeeze = _LAYER_TYPES[how]
            data = squeeze(raw)
            descriptors.append({"mediaType": media_type, "digest": self.blob(data), "size": len(data)})
        manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST,
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": config_digest, "size": len(config)},
                               "layers": descriptors}).encode()
        if v1:
            self.v1.append({"Config": f"blobs/sha256/{config_digest[7:]}", "RepoTags": list(tags),
                            "Layers": [f"blobs/sha256/{d['digest'][7:]}" for d in descriptors]})
        return {"mediaType": MANIFEST, "digest": self.blob(manifest), "size": len(manifest)}

    def multi(self, platforms):
        """An index of [(descriptor, platform dict, annotations or None)]."""
        index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [
            dict(desc, platform=platform, **({"annotations": notes} if notes else {}))
            for desc, platform, notes in platforms]}).encode()
        return {"mediaType": INDEX, "digest": self.blob(index), "size": len(index)}

    def name(self, descriptor, tags):
        for tag in tags:
            name, short = tag.rsplit(":", 1)
            first = name.split("/")[0]
            full = (name if "/" in name and ("." in first or ":" in first or first == "localhost")
                    else f"docker.io/{name}" if "/" in name else f"docker.io/library/{name}")
            self.index.append(dict(descriptor, annotations={"io.containerd.image.name": f"{full}:{short}",
                                                            "org.opencontainers.image.ref.name": short}))

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            def add(name, data):
                add_bytes(tar, name, data)
            for digest, data in self.blobs.items():
                add(f"blobs/sha256/{digest[7:]}", data)
            add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            add("index.json", json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": self.index}).encode())
            if self.v1:
                add("manifest.json", json.dumps(self.v1).encode())
        return buf.getvalue()


def _attestation(layout, subject):
    statement = b'{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://spdx.dev/Document"}'
    layout.blob(statement)
    config = b'{"architecture":"unknown","os":"unknown","config":{},"rootfs":{"type":"layers","diff_ids":["%s"]}}' % (
        _digest(statement).encode())
    config_digest = layout.blob(config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": config_digest, "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": _digest(statement),
                                       "size": len(statement)}]}).encode()
    return ({"mediaType": MANIFEST, "digest": layout.blob(manifest), "size": len(manifest)},
            {"architecture": "unknown", "os": "unknown"},
            {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": subject})


def _images(source, unique):
    """The load tar for source and {tag: [diffIDs]} of every image it names (a list of tags per image)."""
    salt = unique.encode()
    prefix = f"matrix-{source}-{unique}"
    bb, odd, wh, empty = _busybox_layer(salt), _odd_layer(salt), _whiteout_layer(), _layer([])
    layout = _Layout()
    fs_tags = [f"{prefix}/fs:1", f"localhost:5000/{prefix}/b/c:{'t' * 128}", f"{prefix}/fs:three"]
    layers = [(bb, "gzip"), (odd, "gzip" if source == "d20" else "zstd"), (wh, None), (empty, None)]
    layout.name(layout.manifest(layers, _odd_config([_digest(raw) for raw, _ in layers]), fs_tags), fs_tags)
    images = {tuple(fs_tags): [_digest(raw) for raw, _ in layers]}
    # Layer tars as other tools write them: zero bytes (a valid empty diff, which
    # containerd will not fetch from a registry), no end-of-archive blocks, trailing zeros,
    # a signed header checksum.
    one = _layer([("f", "file", salt)])
    no_end = one[:-1024].rstrip(b"\0")
    no_end += b"\0" * (-len(no_end) % 512)
    raw_layers = [(bb, None), (b"", None), (no_end, None), (one + b"\0" * 4096, None), (_signed_layer(salt), None)]
    raw_ids = [_digest(raw) for raw, _ in raw_layers]
    layout.name(layout.manifest(raw_layers, _plain_config(raw_ids), [f"{prefix}/zero:1"]), [f"{prefix}/zero:1"])
    images[(f"{prefix}/zero:1",)] = raw_ids
    if source in CONTAINERD:
        platforms, plats = [], {}
        for arch, variant in (("amd64", None), ("arm64", None), ("arm", "v7")):
            own = _layer([("platform", "file", f"{arch}{variant or ''}".encode() + salt)])
            plats[arch] = [_digest(bb), _digest(own)]
            platforms.append((layout.manifest([(bb, "gzip"), (own, "gzip")],
                                              _plain_config(plats[arch], arch, variant), v1=False),
                              {"architecture": arch, "os": "linux", **({"variant": variant} if variant else {})}, None))
        platforms.append(_attestation(layout, platforms[0][0]["digest"]))
        layout.name(layout.multi(platforms), [f"{prefix}/multi:1"])
        images[(f"{prefix}/multi:1",)] = plats["amd64"]
        # platforms whose layers are identical: only the config tells them apart
        same = [(layout.manifest([(bb, "gzip")], _plain_config([_digest(bb)], arch, variant), v1=False),
                 {"architecture": arch, "os": "linux", **({"variant": variant} if variant else {})}, None)
                for arch, variant in (("arm64", None), ("arm", "v7"), ("amd64", None))]
        layout.name(layout.multi(same), [f"{prefix}/same:1"])
        images[(f"{prefix}/same:1",)] = [_digest(bb)]
        arm = _layer([("arm-only", "file", salt)])
        layout.name(layout.manifest([(bb, "gzip"), (arm, None)], _plain_config([_digest(bb), _digest(arm)], "arm64"),
                                    v1=False), [f"{prefix}/arm:1"])
        images[(f"{prefix}/arm:1",)] = [_digest(bb), _digest(arm)]
    return layout.tar(), images


def _saved_config(eng, tag):
    """The config bytes the engine exports for tag: the same bytes on every engine, or the id changed."""
    stream = eng.api.get_image(tag)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream)), mode="r") as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        return tar.extractfile(manifest[0]["Config"]).read()


_RUNTIME = ("dev/", "proc/", "sys/", "etc/hostname", "etc/hosts", "etc/resolv.conf", "etc/mtab", ".dockerenv")


def _filesystem(eng, tag):
    """A created container's export: every member, its type, mode, owner, link, device, xattrs and bytes."""
    container = eng.api.create_container(tag, command=["/bin/sh"], network_disabled=True)
    try:
        data = b"".join(eng.api.export(container["Id"]))
    finally:
        eng.api.remove_container(container["Id"], force=True)
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            if m.name.startswith(_RUNTIME) or m.name in ("dev", "proc", "sys"):
                continue
            body = hashlib.sha256(tar.extractfile(m).read()).hexdigest() if m.isfile() else None
            # Docker 20.10 exports the type bits in the mode and a symlink's mode is meaningless
            out[m.name] = (m.type, None if m.issym() else m.mode & 0o7777, m.uid, m.gid, m.linkname, body,
                           (m.devmajor, m.devminor) if m.ischr() or m.isblk() else None,
                           sorted((k, v) for k, v in m.pax_headers.items() if "xattr" in k))
    return out


class _Source:
    def __init__(self, name, eng, repo, images, configs, filesystems):
        self.name, self.eng, self.repo = name, eng, repo
        self.images, self.configs, self.filesystems = images, configs, filesystems


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    made, engines = {}, {}

    def get(name):
        if name not in ENGINES:
            pytest.fail(f"engine {name} is not configured: run the tests with scripts/test")
        if name not in made:
            eng = engines[name] = TestEngine(name, ENGINES[name])
            data, images = _images(name, uuid.uuid4().hex[:10])
            out = eng.api.load_image(data)
            assert not [o for o in out if "error" in o], out
            eng.created += [t for tags in images for t in tags]
            base = tmp_path_factory.mktemp(f"matrix-{name}")
            repo = str(base / "repo")
            cfg = base / "dogestry.cfg"
            cfg.write_text("[compressor]\n  lz4 = false\n" if name in NO_LZ4 else "")
            dogestry("--config", str(cfg), "push", repo, *[t for tags in images for t in tags], env=eng.env())
            configs = {tags: _saved_config(eng, tags[0]) for tags in images}
            filesystems = {tags: _filesystem(eng, tags[0]) for tags in images}
            made[name] = _Source(name, eng, repo, images, configs, filesystems)
        return made[name]

    yield get
    for eng in engines.values():
        eng.cleanup()


@pytest.fixture(scope="module")
def targets():
    made = {}

    def get(name):
        if name not in ENGINES:
            pytest.fail(f"engine {name} is not configured: run the tests with scripts/test")
        return made.setdefault(name, TestEngine(name, ENGINES[name]))

    yield get
    for eng in made.values():
        eng.cleanup()


@pytest.mark.parametrize("target", ALL)
@pytest.mark.parametrize("source", ALL)
def test_an_image_made_on_one_engine_arrives_whole_on_another(sources, targets, source, target):
    src = sources(source)
    dst = targets(target) if target != source else src.eng
    tags = [t for group in src.images for t in group]
    dst.rmi(*tags)  # on the source itself: removed, then pulled back
    if dst is not src.eng:
        dst.created += tags
    # an image with a zero-byte layer alone: on the containerd store it cannot go through a registry pull
    zero = [t for t in tags if "/zero:" in t]
    dogestry("pull", src.repo, *[t for t in tags if t not in zero], env=dst.env())
    proc = dogestry("-v", "pull", src.repo, *zero, env=dst.env())
    # whether or not the engine happens to hold the empty blob already (then it would not fetch it)
    assert dst.containerd == ("zero-byte layer" in proc.stderr.decode()), proc.stderr.decode()
    for group, diff_ids in src.images.items():
        for tag in group:
            assert dst.layers(tag) == diff_ids, (source, target, tag)
        config = _saved_config(dst, group[0])
        assert config == src.configs[group], (source, target, group[0], _digest(config), _digest(src.configs[group]))
        assert json.loads(config)["architecture"] == json.loads(src.configs[group])["architecture"]
        assert _filesystem(dst, group[0]) == src.filesystems[group], (source, target, group[0])
    assert dst.run(tags[0], "cat", "/x/new") == "new"
    assert dst.run(zero[0], "cat", "/f") == src.eng.run(zero[0], "cat", "/f")
    if target == ALL[-1]:
        dogestry("verify", src.repo)


@pytest.mark.parametrize("source", ALL)
def test_a_push_stores_only_the_layers_of_the_images_it_names(sources, source):
    """A multi-platform index exports every platform's blobs unless the engine is asked for
    one: Docker 28 is (API 1.48), so its other platforms' layers are neither read nor stored.
    Docker 26 has no such parameter: its export has them, and push reads them but keeps only
    the layers of the images it was named (before, they stayed unreferenced until a gc)."""
    src = sources(source)
    referenced = set()
    for record in (Path(src.repo) / "images" / "sha256").iterdir():
        referenced.update(layer["diff_id"] for layer in json.loads(record.read_bytes())["layers"])
    stored = {f"sha256:{p.name}" for p in (Path(src.repo) / "layers" / "sha256").iterdir()
              if not p.name.endswith(".json")}
    assert stored == referenced


def _only_another_platform(prefix, salt):
    """An index (amd64 + arm64) of which only the arm64 content is present, as `docker pull
    --platform linux/arm64` leaves it on an amd64 host's containerd store."""
    layout = _Layout()
    bb = _busybox_layer(salt)
    platforms, dropped, arm = [], [], None
    for arch in ("amd64", "arm64"):
        own = _layer([("platform", "file", arch.encode() + salt)])
        config = _plain_config([_digest(bb), _digest(own)], arch)
        desc = layout.manifest([(bb, "gzip"), (own, None)], config, v1=False)
        platforms.append((desc, {"architecture": arch, "os": "linux"}, None))
        if arch == "amd64":
            dropped = [desc["digest"], _digest(config), _digest(own)]
        else:
            arm = (config, [_digest(bb), _digest(own)])
    layout.name(layout.multi(platforms), [f"{prefix}/partial:1"])
    for digest in dropped:
        del layout.blobs[digest]
    return layout.tar(), arm


@pytest.mark.parametrize("source", sorted(CONTAINERD))
def test_an_index_holding_only_another_platform(engine_named, tmp_path, source):
    src = engine_named(source)
    prefix = f"matrix-{source}-{uuid.uuid4().hex[:10]}"
    data, (config, diff_ids) = _only_another_platform(prefix, prefix.encode())
    tag = f"{prefix}/partial:1"
    out = src.api.load_image(data)
    assert not [o for o in out if "error" in o], out
    src.created.append(tag)
    assert src.layers(tag) == diff_ids
    repo = str(tmp_path / "repo")
    proc = dogestry("push", repo, tag, env=src.env(), check=False)
    if source == "d26c":
        # Docker 26 exports the host's platform, whose content is absent: say so in one line
        err = proc.stderr.decode()
        assert proc.returncode == 1 and err.count("\n") == 1 and "Traceback" not in err, err
        assert f"cannot push {tag}" in err and "Docker 28" in err, err
        return
    assert proc.returncode == 0, proc.stderr.decode()
    for target in ("d20", "d26c"):
        dst = engine_named(target)
        dst.created.append(tag)
        dogestry("pull", repo, tag, env=dst.env())
        assert dst.layers(tag) == diff_ids
        assert _saved_config(dst, tag) == config
        assert dst.run(tag, "cat", "/platform") == "arm64" + prefix


@pytest.mark.parametrize("target", sorted(CONTAINERD))
def test_an_image_pulled_by_id_says_its_engine_id(sources, targets, target):
    """The containerd store names an image by its manifest: after a pull by id (no tag), the
    id on stdout means nothing to `docker run`; stderr says the one that does."""
    src, dst = sources("d20"), targets(target)
    group = next(g for g in src.images if "/fs:" in g[0])
    image_id = "sha256:" + hashlib.sha256(src.configs[group]).hexdigest()
    dst.rmi(*group)
    proc = dogestry("pull", src.repo, image_id[7:19], env=dst.env())
    assert proc.stdout.decode().split() == [image_id]
    said = proc.stderr.decode().split(f"image {image_id} is ", 1)[1].split()[0]
    dst.created.append(said)
    assert dst.layers(said) == src.images[group]
    assert dst.run(said, "cat", "/x/new") == "new"


@pytest.mark.parametrize("source", ["d26", "d26c", "d28c"])
def test_a_large_layer_with_a_signed_tar_checksum(engine_named, tmp_path, source):
    """Docker 25+ exports such a layer as an uncompressed blob; read as anything but a tar,
    one over 16 MiB was refused as 'implausibly large for an image config'."""
    src, dst = engine_named(source), engine_named("d20")
    unique = uuid.uuid4().hex[:10]
    tag = f"matrix-{source}-{unique}/signed:1"
    layers = [_busybox_layer(unique.encode()), _signed_layer(unique.encode(), 17 << 20)]
    layout = _Layout()
    layout.name(layout.manifest([(raw, None) for raw in layers], _plain_config([_digest(x) for x in layers]),
                                [tag]), [tag])
    out = src.api.load_image(layout.tar())
    assert not [o for o in out if "error" in o], out
    src.created.append(tag)
    repo = str(tmp_path / "repo")
    dogestry("push", repo, tag, env=src.env())
    dst.created.append(tag)
    dogestry("pull", repo, tag, env=dst.env())
    assert dst.layers(tag) == [_digest(x) for x in layers]
    assert _filesystem(dst, tag) == _filesystem(src, tag)


@pytest.mark.parametrize("source", ALL)
def test_one_pull_into_every_other_engine_at_once(sources, targets, source):
    """A fleet pull (--pullhosts) plans and loads per engine: each generation its own way."""
    src = sources(source)
    others = [targets(name) for name in ALL if name != source]
    tags = [t for group in src.images for t in group]
    for dst in others:
        dst.rmi(*tags)
        dst.created += tags
    proc = dogestry("pull", "--pullhosts", ",".join(dst.host for dst in others), src.repo, *tags)
    assert proc.stdout.decode().count("\n") == len(tags), proc.stdout.decode()
    for dst in others:
        for group, diff_ids in src.images.items():
            assert [dst.layers(tag) for tag in group] == [diff_ids] * len(group), (source, dst.name, group[0])
            assert _saved_config(dst, group[0]) == src.configs[group], (source, dst.name, group[0])
