"""Images the engines make themselves, and the sequences of commands users run, across every engine pair.

test_engine_matrix.py crosses hand-made load tars; here each source engine makes its images
the way users do, with its own code: `DOCKER_BUILDKIT=0 docker build` (whiteouts of base
files and directories, chmod/chown, COPY --chown, ADD of a tar, hard link, symlink, FIFO,
a device node, a sticky directory, a uid over 2^21, a name that is not UTF-8, a long symlink
target, a sparse file, metadata-only steps, two identical COPY steps, an image that is only
its base, 100+ RUN layers), `docker commit` (twice from one container: two configs) and
`docker import` of a tar of odd members. Every engine imports the same base tar, so every
target already holds the base layer, made by itself: a pull must move only the rest.

Each source builds and pushes once (module scope). Each pair then pulls everything in one
command and checks, as a user would notice: the config bytes (`docker save`), RootFS
layers, the filesystem of a created container (`docker export`), that a container runs,
and what moved. The flows after it are the command sequences users run between engines.
"""

import concurrent.futures
import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import BUSYBOX, ENGINES, TestEngine, add_bytes, dogestry

ALL = ["d20", "d26", "d26c", "d28c"]
# Engines fast enough to build 100+ RUN layers within the suite's budget: the graphdriver
# engines copy the whole filesystem per step on vfs (about 1 s a step here).
TALL_SOURCES = {"d28c"}
TALL_STEPS = 105  # under every engine's limit (overlay: 128 lower directories)
UNIQUE = uuid.uuid4().hex[:10]
MTIME = 1700000000


def _sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar(entries):
    """A tar of (name, kind, data_or_target, mode, mtime) entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, arg, *rest in entries:
            info = tarfile.TarInfo(name)
            info.mtime = rest[1] if len(rest) > 1 else MTIME
            info.mode = rest[0] if rest and rest[0] is not None else (0o755 if kind == "dir" else 0o644)
            data = None
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "file":
                data = arg
                info.size = len(data)
            elif kind == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, arg, 0o777
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, arg
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _base_tar():
    """The same bytes on every engine, so each engine's import has the same layer."""
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    return _tar([("bin", "dir", None), ("bin/busybox", "file", busybox, 0o755),
                 *[(f"bin/{t}", "symlink", "busybox") for t in ("sh", "cat", "echo", "ls")],
                 ("etc", "dir", None), ("etc/a", "file", b"a\n"), ("etc/gone", "file", b"gone\n"),
                 ("etc/dir", "dir", None), ("etc/dir/sub", "dir", None), ("etc/dir/sub/f", "file", b"f\n"),
                 ("old", "dir", None), ("old/x", "file", b"x\n"), ("old/keep", "file", b"keep\n"),
                 ("tmp", "dir", None, 0o1777), ("salt", "file", UNIQUE.encode())])


def _odd_import_tar():
    """Members `docker import` takes as they are: a name with a newline, absolute symlinks,
    mtimes of 0 and of 2100."""
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    return _tar([("bin", "dir", None), ("bin/busybox", "file", busybox, 0o755),
                 *[(f"bin/{t}", "symlink", "/bin/busybox") for t in ("sh", "cat", "ls")],
                 ("new\nline", "file", b"newline\n"), ("abs", "symlink", "/bin/busybox"),
                 ("absdir", "symlink", "/bin"), ("epoch", "file", b"epoch\n", None, 0),
                 ("future", "file", b"future\n", None, 4102444800 + 86400 * 10),
                 ("salt", "file", UNIQUE.encode())])


FEATURES = """\
FROM {base}
RUN busybox rm -rf /etc/dir /old/x /etc/gone && busybox mv /old/keep /old/kept
RUN busybox chmod 4711 /etc/a && busybox chown 12:34 /etc/a
COPY --chown=5:6 copied.txt /copied.txt
ADD local.tar /added/
RUN busybox ln /etc/a /hard && busybox ln -s /etc/a /soft && busybox mkfifo /fifo && busybox mkdir -p /e/f
RUN busybox mknod /cdev c 1 3 && busybox mkdir /sticky && busybox chmod 1777 /sticky && busybox touch /bigid \
 && busybox chown 3000000:3000001 /bigid && busybox touch "/bad$(printf '\\377')name" \
 && busybox ln -s /$(busybox seq -s / 1 60) /longlink && busybox dd if=/dev/zero of=/sparse bs=1 count=1 seek=1048575
WORKDIR /work
ENV A=1 B="two words"
LABEL pairs.l1=v1 "pairs.l 2"="v 2"
ONBUILD RUN echo onbuild
STOPSIGNAL SIGUSR1
SHELL ["/bin/sh", "-c"]
HEALTHCHECK --interval=5s CMD true
VOLUME /vol
EXPOSE 8080/tcp 53/udp
COPY same /x
COPY same /x
USER 1000:1000
CMD ["cat", "/copied.txt"]
"""


def _docker(eng, *args, input=None, buildkit=False):
    env = dict(os.environ, DOCKER_HOST=eng.host)
    if not buildkit:
        env["DOCKER_BUILDKIT"] = "0"
    proc = subprocess.run(["docker", *args], capture_output=True, env=env, input=input, timeout=900)
    assert proc.returncode == 0, (eng.name, args, proc.stderr.decode())
    return proc.stdout.decode()


def _build(eng, tag, dockerfile, files=None):
    """The engine's legacy builder, as `DOCKER_BUILDKIT=0 docker build` runs it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        add_bytes(tar, "Dockerfile", dockerfile.encode())
        for name, data in (files or {}).items():
            add_bytes(tar, name, data)
    _docker(eng, "build", "-q", "--network", "none", "-t", tag, "-", input=buf.getvalue())
    eng.created.append(tag)


def _saved_config(eng, tag):
    stream = eng.api.get_image(tag)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream)), mode="r") as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        return tar.extractfile(manifest[0]["Config"]).read()


_RUNTIME = ("dev/", "proc/", "sys/", "etc/hostname", "etc/hosts", "etc/resolv.conf", "etc/mtab", ".dockerenv")


def _filesystem(eng, tag):
    """A created container's export: every member's type, mode, owner, link, bytes, and a
    file's or symlink's mtime (directories' change when the engine prepares the container)."""
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
            out[m.name] = (m.type, None if m.issym() else m.mode & 0o7777, m.uid, m.gid, m.linkname, body,
                           None if m.isdir() else int(m.mtime))
    return out


class _Source:
    """One source engine's images, pushed once: {group of tags: (config bytes, layers, filesystem)}."""

    def __init__(self, name, eng, repo, base, groups):
        self.name, self.eng, self.repo, self.base, self.groups = name, eng, repo, base, groups
        self.expected = {}

    def tags(self):
        return [t for group in self.groups for t in group]


def _make(name, eng, base_dir):
    """Build, commit and import on one engine, then push everything with one command."""
    prefix = f"pairs-{name}-{UNIQUE}"
    base = f"{prefix}/base:1"
    _docker(eng, "import", "-", base, input=_base_tar())
    eng.created.append(base)
    local = _tar([("lib", "dir", None), ("lib/one", "file", b"one\n"), ("lib/link", "symlink", "one"),
                  ("top", "file", b"top\n", 0o600)])
    _build(eng, f"{prefix}/features:1", FEATURES.format(base=base),
           {"copied.txt": b"copied\n", "local.tar": local, "same": b"same bytes\n"})
    # the base's layer alone, under metadata of its own
    _build(eng, f"{prefix}/only:1", f"FROM {base}\nLABEL pairs.only=1\nCMD [\"cat\", \"/etc/a\"]\n")
    # the first steps again: the builder's cache gives it the same layers as features'
    half = FEATURES.format(base=base).split("ADD ", 1)[0]
    _build(eng, f"{prefix}/half:1", half, {"copied.txt": b"copied\n"})
    parent = eng.layers(f"{prefix}/half:1")
    assert eng.layers(f"{prefix}/features:1")[:len(parent)] == parent, (name, "the builder's cache was not used")
    groups = [(f"{prefix}/features:1", f"{prefix}/features:again"), (f"{prefix}/only:1",), (f"{prefix}/half:1",)]
    _docker(eng, "tag", f"{prefix}/features:1", f"{prefix}/features:again")
    eng.created.append(f"{prefix}/features:again")
    if name in TALL_SOURCES:
        steps = "".join(f"RUN echo {i} > /step{i}\n" for i in range(TALL_STEPS))
        _build(eng, f"{prefix}/tall:1", f"FROM {base}\n{steps}")
        groups.append((f"{prefix}/tall:1",))
    # a container that deletes, renames and chmods base files, committed twice
    container = _docker(eng, "create", "--network", "none", base, "sh", "-c",
                        "busybox rm /etc/a && busybox rm -r /etc/dir && busybox mv /old/x /old/y"
                        " && busybox chmod 600 /old/keep && echo made > /made").strip()
    try:
        _docker(eng, "start", "-a", container)
        _docker(eng, "commit", "--change", "ENV C=1", "--change", 'CMD ["cat", "/made"]',
                "--change", "WORKDIR /old", "--change", "LABEL pairs.committed=yes", container, f"{prefix}/commit:1")
        time.sleep(1.1)  # a second apart: the configs differ by their creation time
        _docker(eng, "commit", "--change", "USER 7", container, f"{prefix}/commit:2")
    finally:
        _docker(eng, "rm", "-f", container)
    eng.created += [f"{prefix}/commit:1", f"{prefix}/commit:2"]
    # Docker 28 gives both commits one layer; the others write its bytes anew each time
    assert (eng.layers(f"{prefix}/commit:1") == eng.layers(f"{prefix}/commit:2")) == (name == "d28c"), name
    groups += [(f"{prefix}/commit:1",), (f"{prefix}/commit:2",)]
    _docker(eng, "import", "--change", 'CMD ["cat", "/future"]', "-", f"{prefix}/odd:1", input=_odd_import_tar())
    eng.created.append(f"{prefix}/odd:1")
    groups.append((f"{prefix}/odd:1",))
    repo = str(base_dir / "repo")
    cfg = base_dir / "dogestry.cfg"
    cfg.write_text("[compressor]\n  lz4 = false\n" if name in ("d26", "d28c") else "")
    src = _Source(name, eng, repo, base, groups)
    dogestry("--config", str(cfg), "push", repo, *src.tags(), env=eng.env())
    for group in groups:
        src.expected[group] = (_saved_config(eng, group[0]), eng.layers(group[0]), _filesystem(eng, group[0]))
    return src


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Every engine's images, made and pushed in parallel (the builds wait on the engines)."""
    missing = [n for n in ALL if n not in ENGINES]
    if missing:
        pytest.fail(f"engines {missing} are not configured: run the tests with scripts/test")
    engines = {n: TestEngine(n, ENGINES[n]) for n in ALL}
    try:
        with concurrent.futures.ThreadPoolExecutor(len(ALL)) as pool:
            futures = {n: pool.submit(_make, n, engines[n], tmp_path_factory.mktemp(f"pairs-{n}")) for n in ALL}
            sources = {n: f.result() for n, f in futures.items()}
        yield sources
    finally:
        for eng in engines.values():
            eng.cleanup()


def _check(src, dst, group, tags=None):
    """dst holds src's image of group under tags (default: all of group), whole."""
    config, layers, filesystem = src.expected[group]
    for tag in tags or group:
        assert dst.layers(tag) == layers, (src.name, dst.name, tag)
    got = _saved_config(dst, group[0])
    assert got == config, (src.name, dst.name, group[0], _sha(got), _sha(config))
    assert _filesystem(dst, group[0]) == filesystem, (src.name, dst.name, group[0])


def _said(proc, what):
    """The layers a -v pull reports as sent or skipped, in order (a layer sent twice is there twice)."""
    err = proc.stderr.decode()
    marker = {"sent": "sent layer ", "skipped": "skipped layer "}[what]
    return [line.split(marker, 1)[1].split()[0].rstrip(":") for line in err.splitlines() if marker in line]


def _chains(layers):
    chain, out = None, []
    for layer in layers:
        chain = layer if chain is None else _sha(f"{chain} {layer}".encode())
        out.append(chain)
    return out


def _held(dst, src):
    """The layers of src's images the target holds. A graphdriver engine has a layer only
    with the same layers below it (the same chain): its own imports, identical build steps,
    earlier pulls. The containerd store keeps layer content by digest, whatever is below:
    what dogestry loaded or served (blobs named by diffID) serves any image that has it."""
    # top-level images: an intermediate's layers are its child's, and Docker 28's containerd
    # store lists intermediates slowly. An image whose content is incomplete (moby/moby#49473,
    # left on a long-lived host) inspects without layers and holds none.
    images = [(dst.inspect(image["Id"]) or {}).get("RootFS", {}).get("Layers") or [] for image in dst.api.images()]
    if dst.containerd:
        return {layer for layers in images for layer in layers}
    chains = {c for layers in images for c in _chains(layers)}
    return {layer for _, layers, _ in src.expected.values()
            for layer, chain in zip(layers, _chains(layers)) if chain in chains}


def _moved_once(proc, src, dst, own):
    """Every layer the target lacked (all but own) moved exactly once; what it holds never
    moved into a graphdriver engine. The containerd store keeps a layer it made itself
    under its own blob digest, so it may be given that content once more (moby/moby#49473:
    without it the image is hidden and cannot be exported), once per pull however many
    images share it."""
    sent, skipped = _said(proc, "sent"), _said(proc, "skipped")
    err = proc.stderr.decode()
    assert len(sent) == len(set(sent)), err
    wanted = {layer for _, layers, _ in src.expected.values() for layer in layers}
    own &= wanted
    if dst.containerd:
        assert set(sent) | set(skipped) == wanted and not set(sent) & set(skipped), err
        assert set(sent) >= wanted - own, err
    else:
        assert set(sent) == wanted - own and set(skipped) == own, err


@pytest.mark.parametrize("target", ALL)
@pytest.mark.parametrize("source", ALL)
def test_images_an_engine_made_arrive_whole_on_another(made, source, target):
    src, dst = made[source], made[target].eng
    tags = src.tags()
    dst.rmi(*tags)  # on the source itself: removed, then pulled back
    if dst is not src.eng:
        dst.created += tags
    held = _held(dst, src)
    proc = dogestry("-v", "pull", src.repo, *tags, env=dst.env())
    own = held if not (dst.containerd and target == source) else {
        # the store may keep the snapshots of removed images a while: any may be skipped
        layer for _, layers, _ in src.expected.values() for layer in layers}
    _moved_once(proc, src, dst, own)
    for group in src.groups:
        _check(src, dst, group)
    prefix = f"pairs-{source}-{UNIQUE}"
    assert dst.run(f"{prefix}/features:1") == "copied\n"
    assert dst.run(f"{prefix}/features:1", "sh", "-c", "busybox id -u; pwd; busybox cat /x /added/lib/link; echo $B") == \
        "1000\n/work\nsame bytes\none\ntwo words\n"
    assert dst.run(f"{prefix}/features:1", "sh", "-c", "busybox stat -c '%F %a %u:%g' /cdev /sticky /bigid /bad*") == \
        "character special file 644 0:0\ndirectory 1777 0:0\nregular empty file 644 3000000:3000001\n" \
        "regular empty file 644 0:0\n"
    assert dst.run(f"{prefix}/only:1") == "a\n"
    assert dst.run(f"{prefix}/commit:1", "sh", "-c", "pwd; busybox cat /made /old/y; echo $C; busybox cat /etc/gone") == \
        "/old\nmade\nx\n1\ngone\n"
    assert dst.run(f"{prefix}/commit:2", "sh", "-c", "busybox id -u") == "7\n"
    assert dst.run(f"{prefix}/odd:1") == "future\n"
    if (f"{prefix}/tall:1",) in src.groups:
        assert dst.run(f"{prefix}/tall:1", "cat", f"/step{TALL_STEPS - 1}") == f"{TALL_STEPS - 1}\n"


# -- the flows users run between engines ------------------------------------------------

def _fresh(dst, src, *tags):
    """Tags of src's images the target must not hold before a flow; removed at the end too."""
    dst.rmi(*tags)
    if dst is not src.eng:
        dst.created += [t for t in tags if t not in dst.created]


@pytest.mark.parametrize("hops", [("d20", "d26c", "d28c"), ("d26", "d28c", "d20"),
                                  ("d26c", "d20", "d26"), ("d28c", "d26", "d26c")], ids="-".join)
def test_an_image_survives_two_hops_through_different_engines(made, tmp_path, hops):
    """push from X, pull into Y, push from Y to a second repository, pull into Z."""
    src, mid, end = made[hops[0]], made[hops[1]].eng, made[hops[2]].eng
    group = next(g for g in src.groups if "/features:" in g[0])
    _fresh(mid, src, *group)
    _fresh(end, src, *group)
    image_id = _sha(src.expected[group][0])
    dogestry("pull", src.repo, *group, env=mid.env())
    second = str(tmp_path / "second")
    proc = dogestry("push", second, *group, env=mid.env())
    assert {line.split()[0] for line in proc.stdout.decode().splitlines()} == {image_id}, proc.stdout.decode()
    proc = dogestry("pull", second, group[0], env=end.env())
    assert proc.stdout.decode().split() == [image_id, group[0]]
    _check(src, end, group, group[:1])
    assert end.run(group[0]) == "copied\n"
    dogestry("verify", second)


def test_two_images_sharing_layers_in_one_pull_move_each_layer_once(made):
    """features and its half-built parent (the builder's cache gave them the same first
    layers), and two commits of one container (same layers, two configs): one command."""
    src, dst = made["d26"], made["d28c"].eng
    groups = [g for g in src.groups if "/features:1" in g[0] or "/half:" in g[0] or "/commit:" in g[0]]
    tags = [t for g in groups for t in g]
    _fresh(dst, src, *tags)
    held = _held(dst, src)
    proc = dogestry("-v", "pull", src.repo, *tags, env=dst.env())
    sent = _said(proc, "sent")
    assert len(sent) == len(set(sent)), proc.stderr.decode()
    assert set(sent) >= {layer for g in groups for layer in src.expected[g][1]} - held, proc.stderr.decode()
    for group in groups:
        _check(src, dst, group)


@pytest.mark.parametrize("target", ALL)
def test_a_target_holding_the_image_under_another_name_only_tags_it(made, target):
    """pull, `docker tag` to another name, `docker rmi` the pulled names, pull again: no layer
    moves, the engine's own id is tagged; the other name stays. Then `docker tag` of another
    image over the name, and a pull puts it back."""
    src = made[ALL[(ALL.index(target) + 1) % len(ALL)]]
    dst = made[target].eng
    group = next(g for g in src.groups if "/commit:1" in g[0])
    _fresh(dst, src, *group)
    dogestry("pull", src.repo, *group, env=dst.env())
    engine_id = dst.inspect(group[0])["Id"]
    other = f"pairs-other-{UNIQUE}/{target}:renamed"
    dst.api.tag(group[0], *other.rsplit(":", 1))
    dst.created.append(other)
    dst.api.remove_image(group[0])  # a name only: the image stays under the other one
    proc = dogestry("-v", "pull", src.repo, *group, env=dst.env())
    err = proc.stderr.decode()
    assert "skipped image" in err and not _said(proc, "sent"), err
    assert dst.inspect(group[0])["Id"] == dst.inspect(other)["Id"] == engine_id
    _check(src, dst, group)
    # `docker tag` of another image over the pulled name: the next pull moves it back
    dst.api.tag(made[target].base, *group[0].rsplit(":", 1))
    proc = dogestry("-v", "pull", src.repo, *group, env=dst.env())
    assert not _said(proc, "sent"), proc.stderr.decode()
    assert dst.inspect(group[0])["Id"] == engine_id


@pytest.mark.parametrize("source", ALL)
def test_pull_by_the_id_docker_images_shows(made, tmp_path, source):
    """`docker images` shows the engine's own id: a config digest on graphdriver engines;
    on the containerd store the digest of the manifest the engine made (push records it
    as an alias) or, for an image dogestry pulled there, of the manifest dogestry made
    (that one was "not found" before)."""
    src = made[source].eng
    tag = f"pairs-byid-{source}-{UNIQUE}:1"
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    _docker(src, "import", "--change", 'CMD ["cat", "/byid"]', "-", tag,
            input=_tar([("bin", "dir", None), ("bin/busybox", "file", busybox, 0o755),
                        ("bin/cat", "symlink", "busybox"), ("byid", "file", tag.encode())]))
    src.created.append(tag)
    repo = str(tmp_path / "repo")
    image_id = dogestry("push", repo, tag, env=src.env()).stdout.decode().split()[0]
    layers = src.layers(tag)

    def pull_by(shown, dst):
        dst.rmi(image_id, tag)
        proc = dogestry("pull", repo, shown, env=dst.env())
        assert proc.stdout.decode().split() == [image_id], proc.stdout.decode()
        # pulled by id, so nameless: the containerd store knows it by our manifest digest
        said = proc.stderr.decode().split(f"image {image_id} is ", 1)[1].split()[0] if dst.containerd else image_id
        dst.created.append(said)
        assert dst.layers(said) == layers
        assert dst.run(said) == tag

    shown = _docker(src, "images", "--format", "{{.ID}}", tag).strip()
    assert len(shown) == 12, shown
    pull_by(shown, made[ALL[(ALL.index(source) + 2) % len(ALL)]].eng)
    via = made["d28c" if source != "d28c" else "d26c"].eng
    via.rmi(image_id, tag)
    via.created.append(tag)
    dogestry("pull", repo, tag, env=via.env())
    shown = _docker(via, "images", "--format", "{{.ID}}", tag).strip()
    assert f"sha256:{shown}" != image_id[:19]  # the containerd store's id is not the image id
    pull_by(shown, made["d20"].eng)


@pytest.mark.parametrize("source", ALL)
def test_latest_implicit_on_one_side_and_explicit_on_the_other(made, tmp_path, source):
    src = made[source]
    dst = made[ALL[(ALL.index(source) + 3) % len(ALL)]].eng
    name = f"pairs-latest-{source}-{UNIQUE}"
    group = next(g for g in src.groups if "/only:" in g[0])
    src.eng.api.tag(group[0], name)  # docker tag IMAGE name: latest
    src.eng.created.append(f"{name}:latest")
    repo = str(tmp_path / "repo")
    dogestry("push", repo, name, env=src.eng.env())
    proc = dogestry("pull", repo, f"{name}:latest", env=dst.env())
    dst.created.append(f"{name}:latest")
    assert proc.stdout.decode().split()[1:] == [f"{name}:latest"]
    assert _saved_config(dst, name) == src.expected[group][0]
    dst.rmi(f"{name}:latest")
    dogestry("push", repo, f"{name}:latest", env=src.eng.env())
    dogestry("pull", repo, name, env=dst.env())
    assert dst.run(name) == "a\n"
    assert [line.split("\t")[0] for line in dogestry("show-ref", repo).stdout.decode().splitlines()] != []


@pytest.mark.parametrize("source", ALL)
def test_save_to_repo_fed_the_engine_s_own_docker_save(made, tmp_path, source):
    """`docker save A B C | dogestry save-to-repo --input -`, `update-ref --stdin`, then a pull
    into the next engine: each engine generation's save format, as the engine writes it."""
    src = made[source]
    dst = made[ALL[(ALL.index(source) + 1) % len(ALL)]].eng
    groups = [g for g in src.groups if "/features:" in g[0] or "/commit:" in g[0]]
    tags = [t for g in groups for t in g]
    saved = subprocess.run(["docker", "save", *tags], capture_output=True, env=src.eng.env(), timeout=300)
    assert saved.returncode == 0, saved.stderr.decode()
    repo = str(tmp_path / "repo")
    records = dogestry("save-to-repo", "--input", "-", repo, input=saved.stdout).stdout
    assert sorted(line.split()[1] for line in records.decode().splitlines()) == sorted(tags)
    dogestry("update-ref", "--stdin", repo, input=records)
    _fresh(dst, src, *tags)
    dogestry("pull", repo, *tags, env=dst.env())
    for group in groups:
        _check(src, dst, group)
    dogestry("verify", repo)


@pytest.mark.parametrize("target", ALL)
def test_build_load_tar_piped_into_docker_load(made, target):
    src = made[ALL[(ALL.index(target) + 2) % len(ALL)]]
    dst = made[target].eng
    group = next(g for g in src.groups if "/features:" in g[0])
    image_id = _sha(src.expected[group][0])
    _fresh(dst, src, *group)
    tar = dogestry("build-load-tar", "--tag", group[0], src.repo, image_id[7:19]).stdout
    loaded = subprocess.run(["docker", "load"], capture_output=True, input=tar, env=dst.env(), timeout=300)
    assert loaded.returncode == 0, loaded.stderr.decode()
    _check(src, dst, group, group[:1])
    assert dst.run(group[0]) == "copied\n"


def test_pullhosts_into_three_engines_each_holding_other_layers(made):
    """d20 holds none of the image, d26c its half-built parent, d28c the image under another
    name: each is sent what it lacks, and only that."""
    src = made["d26"]
    features = next(g for g in src.groups if "/features:1" in g[0])
    half = next(g for g in src.groups if "/half:" in g[0])
    none_, parent, renamed = made["d20"].eng, made["d26c"].eng, made["d28c"].eng
    for dst in (none_, parent, renamed):
        _fresh(dst, src, *features, *half)
    dogestry("pull", src.repo, *half, env=parent.env())
    dogestry("pull", src.repo, features[0], env=renamed.env())
    renamed.api.tag(features[0], f"pairs-other-{UNIQUE}/renamed", "1")
    renamed.created.append(f"pairs-other-{UNIQUE}/renamed:1")
    renamed.api.remove_image(features[0])
    layers = src.expected[features][1]
    held = {dst.name: _held(dst, src) & set(layers) for dst in (none_, parent, renamed)}
    assert held["d26c"] and held["d26c"] != held["d20"]
    proc = dogestry("pull", "--json", "--pullhosts", ",".join(d.host for d in (none_, parent, renamed)),
                    src.repo, *features)
    results = {json.loads(line)["host"]: json.loads(line) for line in proc.stdout.decode().splitlines()}
    assert results[renamed.host]["present_images"] == 1 and results[renamed.host]["loaded_layers"] == 0, results
    assert results[none_.host]["loaded_layers"] == len(set(layers) - held["d20"]), results
    # the containerd store may be given the content of layers it made itself once more
    assert len(set(layers) - held["d26c"]) <= results[parent.host]["loaded_layers"] < len(set(layers)), results
    for dst in (none_, parent, renamed):
        _check(src, dst, features)


class _PrivateEngine:
    """A Docker 20.10 (vfs) of this test's own, so it can be restarted, wiped and pruned
    without touching the engines the rest of the suite shares. Socket and state live in a
    short directory under /run (unix socket paths are limited to 108 bytes)."""

    def __init__(self):
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="dogestry-pairs-", dir="/run")
        self.sock = os.path.join(self.dir, "d.sock")
        self.proc = None
        self.eng = None

    def start(self):
        self.proc = subprocess.Popen(
            ["dockerd", "--data-root", os.path.join(self.dir, "data"), "--exec-root", os.path.join(self.dir, "exec"),
             "--host", f"unix://{self.sock}", "--pidfile", os.path.join(self.dir, "d.pid"), "--iptables=false",
             "--ip-masq=false", "--bridge=none", "--storage-driver=vfs"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "log"), "ab"), start_new_session=True)
        for _ in range(120):
            if subprocess.run(["docker", "-H", f"unix://{self.sock}", "version"], capture_output=True).returncode == 0:
                break
            assert self.proc.poll() is None, open(os.path.join(self.dir, "log")).read()[-2000:]
            time.sleep(0.5)
        else:
            raise AssertionError(f"the private engine on {self.sock} did not come up")
        self.eng = TestEngine("private", f"unix://{self.sock}")
        return self.eng

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        self._unmount()

    def _unmount(self):
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f]
        for mount in sorted((m for m in mounts if m.startswith(self.dir + "/")), reverse=True):
            subprocess.run(["umount", mount], capture_output=True)

    def wipe(self):
        import shutil

        self.stop()
        for part in ("data", "exec"):
            shutil.rmtree(os.path.join(self.dir, part), ignore_errors=True)

    def close(self):
        import shutil

        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private():
    engine = _PrivateEngine()
    try:
        yield engine
    finally:
        engine.close()


def test_restart_wipe_prune_and_rmi_between_pulls_never_skip_a_missing_layer(made, private, tmp_path):
    """The chain cache ($XDG_CACHE_HOME/dogestry/engine-chains.json) is keyed by image id,
    a content hash, and consulted only for ids the engine lists now: a pull after the engine
    was restarted skips what it has; after it was wiped and restarted on the same socket,
    after `docker image prune -a`, or after `docker rmi` of the base and the child, every
    layer moves again."""
    src = made["d26c"]
    group = next(g for g in src.groups if "/features:1" in g[0])
    layers = src.expected[group][1]
    env = lambda: dict(eng.env(), XDG_CACHE_HOME=str(tmp_path / "cache"))  # noqa: E731
    cache = tmp_path / "cache" / "dogestry" / "engine-chains.json"

    def pull(expect_sent):
        proc = dogestry("-v", "pull", src.repo, *group, env=env())
        assert sorted(_said(proc, "sent")) == sorted(expect_sent), proc.stderr.decode()
        _check(src, eng, group)
        assert eng.run(group[0]) == "copied\n"
        return proc

    eng = private.start()
    _docker(eng, "import", "-", "pairs-private/base:1", input=_base_tar())  # the same layer as the source's base
    pull(layers[1:])
    _docker(eng, "tag", group[0], "pairs-private/kept:1")
    assert json.loads(cache.read_text())  # the cache knows the engine's images now
    private.stop()
    eng = private.start()  # same data root: everything is still there
    proc = dogestry("-v", "pull", src.repo, *group, env=env())
    assert "skipped image" in proc.stderr.decode() and not _said(proc, "sent"), proc.stderr.decode()
    # rmi of the base and of the child: the base layer goes with them, though the cache knew it
    eng.rmi(*group, "pairs-private/kept:1", "pairs-private/base:1")
    assert not eng.api.images(all=True)
    pull(layers)
    _docker(eng, "image", "prune", "-a", "-f")  # no container uses it: every image goes
    assert not eng.api.images(all=True)
    pull(layers)
    private.wipe()
    eng = private.start()  # the same socket, an empty engine: the cache still names the old ids
    assert json.loads(cache.read_text())
    pull(layers)


class _RecordingProxy:
    """A unix socket that forwards to an engine's and records every request line sent."""

    def __init__(self, target):
        import re
        import socket
        import tempfile
        import threading

        assert target.startswith("unix://")
        self.dir = tempfile.mkdtemp(prefix="dogestry-pairs-proxy-")
        self.path = os.path.join(self.dir, "engine.sock")
        self.requests = []
        self._re = re.compile(rb"(GET|HEAD|POST|PUT|DELETE) (\S+) HTTP/1\.[01]\r\n")
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(self.path)
        self._listener.listen(64)
        self._target = target[len("unix://"):]

        def pump(src, dst, record):
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    if record:
                        self.requests += [m.group(2).decode() for m in self._re.finditer(data)]
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (src, dst):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        def serve():
            while True:
                try:
                    client, _ = self._listener.accept()
                except OSError:
                    return
                upstream = socket.socket(socket.AF_UNIX)
                upstream.connect(self._target)
                threading.Thread(target=pump, args=(client, upstream, True), daemon=True).start()
                threading.Thread(target=pump, args=(upstream, client, False), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()

    def close(self):
        import shutil

        self._listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_a_pull_into_the_containerd_store_never_lists_a_build_s_intermediates(made):
    """Docker 28's containerd store lists the 105 intermediate images of the tall build in
    about 10 s (40 s on a busy host); every pull of an image it lacked from a repository
    with engine-id aliases asked for that listing (`/images/json?all=1`)."""
    src, dst = made["d26c"], made["d28c"].eng
    assert any("/tall:" in g[0] for g in made["d28c"].groups)  # the intermediates are there
    group = next(g for g in src.groups if "/commit:2" in g[0])
    assert list((Path(src.repo) / "aliases" / "sha256").iterdir())  # d26c's own ids, recorded by its push
    _fresh(dst, src, *group)
    proxy = _RecordingProxy(dst.host)
    try:
        dogestry("pull", src.repo, *group, env=dict(dst.env(), DOCKER_HOST=f"unix://{proxy.path}"))
    finally:
        proxy.close()
    assert any(r.split("?")[0].endswith("/images/json") for r in proxy.requests), proxy.requests
    assert not [r for r in proxy.requests if "/images/json" in r and "all=1" in r], proxy.requests
    _check(src, dst, group)


@pytest.mark.parametrize("builder", ALL)
def test_build_on_a_pulled_image_push_the_child_pull_it_elsewhere(made, builder):
    """The deploy loop: pull a base from the repository, build on it (its ONBUILD fires),
    push the child back (only its new layers are stored), pull the child on a third engine."""
    src = made[ALL[(ALL.index(builder) + 1) % len(ALL)]]
    eng, dst = made[builder].eng, made[ALL[(ALL.index(builder) + 2) % len(ALL)]].eng
    group = next(g for g in src.groups if "/features:1" in g[0])
    _fresh(eng, src, *group)
    dogestry("pull", src.repo, group[0], env=eng.env())
    child = f"pairs-child-{builder}-{UNIQUE}/app:1"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        add_bytes(tar, "Dockerfile", f'FROM {group[0]}\nUSER 0\nRUN echo {builder} > /app\nCMD ["cat", "/app"]\n'.encode())
    built = _docker(eng, "build", "--network", "none", "-t", child, "-", input=buf.getvalue())
    assert "onbuild" in built, built  # the base's ONBUILD RUN echo onbuild ran
    eng.created.append(child)
    proc = dogestry("push", src.repo, child, env=eng.env())
    base_layers = src.expected[group][1]
    layers = eng.layers(child)
    assert layers[:len(base_layers)] == base_layers
    assert f"stored {len(layers) - len(base_layers)} layer(s)" in proc.stderr.decode(), proc.stderr.decode()
    config = _saved_config(eng, child)
    assert proc.stdout.decode().split() == [_sha(config), child]
    _fresh(dst, src, child)
    dogestry("pull", src.repo, child, env=dst.env())
    assert dst.layers(child) == layers and _saved_config(dst, child) == config
    assert dst.run(child) == f"{builder}\n"


def test_a_pull_that_fails_on_its_second_image_leaves_every_engine_as_it_was(made, tmp_path):
    """Two images in one pull, the second's own layer damaged in the repository: one line,
    exit 1, and no engine gains a name. The containerd store pulls image by image through
    the loopback registry, and named the first before the second failed."""
    src = made["d20"].eng
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    tags = [f"pairs-fail-{UNIQUE}/{which}:1" for which in ("good", "bad")]
    for tag in tags:
        _docker(src, "import", "--change", 'CMD ["cat", "/which"]', "-", tag,
                input=_tar([("bin", "dir", None), ("bin/busybox", "file", busybox, 0o755),
                            ("bin/cat", "symlink", "busybox"), ("which", "file", tag.encode())]))
        src.created.append(tag)
    repo = tmp_path / "repo"
    dogestry("push", str(repo), *tags, env=src.env())
    bad = src.layers(tags[1])[-1]
    stored = repo / "layers" / "sha256" / bad[7:]
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    for name in ALL:
        dst = made[name].eng
        dst.rmi(*tags)
        before = sorted(dst.tags())
        proc = dogestry("pull", str(repo), *tags, env=dst.env(), check=False)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and err.startswith("dogestry: ") and err.count("\n") == 1, (name, err)
        assert bad in err and "corrupt" in err and "Traceback" not in err, (name, err)
        assert sorted(dst.tags()) == before, name  # neither image named, no temporary name left
    # the same into all four at once: each engine fails alone, and none is named either
    engines = [made[name].eng for name in ALL]
    before = {eng.name: sorted(eng.tags()) for eng in engines}
    proc = dogestry("pull", "--json", "--pullhosts", ",".join(e.host for e in engines), str(repo), *tags, check=False)
    assert proc.returncode == 1, proc.stderr.decode()
    results = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [r["status"] for r in results] == ["failed"] * 4 and all(bad in r["error"] for r in results), results
    assert {eng.name: sorted(eng.tags()) for eng in engines} == before


def test_an_image_for_another_operating_system_is_refused_by_every_engine(made, tmp_path):
    """A repository may hold images built for Windows (or anything else) by another host.
    The engines disagree about them: Docker 20.10 refuses a windows image, and its handler
    crashes on plan9 (the connection closes unanswered); the containerd store takes both,
    images no container can run from. Every engine, alone or in one fleet pull, gets the
    same one-line refusal naming the image and the system, and nothing is loaded."""
    layer = _tar([("Files", "dir", None), ("Files/hello.txt", "file", UNIQUE.encode())])
    diff_id = _sha(layer)
    repo = str(tmp_path / "repo")
    tags = []
    for os_name in ("windows", "plan9"):
        config = json.dumps({"architecture": "amd64", "os": os_name, "config": {"Cmd": ["cmd"]},
                             "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
        tag = f"pairs-os-{UNIQUE}/{os_name}:1"
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            for name, data in ((f"{diff_id[7:]}/layer.tar", layer), (f"{_sha(config)[7:]}.json", config),
                               ("manifest.json", json.dumps([{"Config": f"{_sha(config)[7:]}.json", "RepoTags": [tag],
                                                              "Layers": [f"{diff_id[7:]}/layer.tar"]}]).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        saved = dogestry("save-to-repo", "--input", "-", repo, input=out.getvalue()).stdout.decode().split()[0]
        dogestry("update-ref", repo, tag, saved)
        tags.append((os_name, tag))
    for name in ALL:
        dst = made[name].eng
        before = sorted(dst.tags())
        for os_name, tag in tags:
            proc = dogestry("pull", repo, tag, env=dst.env(), check=False)
            err = proc.stderr.decode()
            assert proc.returncode == 1 and err.startswith("dogestry: ") and err.count("\n") == 1, (name, err)
            assert tag in err and repr(os_name) in err and "cannot load it" in err, (name, err)
        assert sorted(dst.tags()) == before, name
    engines = [made[name].eng for name in ALL]
    proc = dogestry("pull", "--json", "--pullhosts", ",".join(e.host for e in engines), repo, tags[1][1], check=False)
    results = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert proc.returncode == 1 and [r["status"] for r in results] == ["failed"] * 4, results
    assert all("'plan9'" in r["error"] for r in results), results
