"""The containerd image store as a first-class engine (d26c and d28c): pulls through a loopback
registry that read only the layers the engine lacks, engine ids recorded as aliases, and
images whose layers came from elsewhere; plus what every engine must do alike (images
with no layers, records that name the image asked for)."""

import io
import json
import os
import tarfile
import time

import pytest

from conftest import dogestry
from dogestry.backends import open_backend
from dogestry.context import Context
from dogestry.engine import Engine
from dogestry.repo import Repository
from dogestry.transfer import pull


def _ids(proc):
    return [line.split()[0] for line in proc.stdout.decode().splitlines()]


class _Reads:
    """A real backend whose object reads are counted: what a pull took from the remote."""

    def __init__(self, inner):
        self._inner, self.opened = inner, []

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def open(self, key):
        self.opened.append(key)
        return self._inner.open(key)


def _layer_reads(backend):
    return sorted(k.rsplit("/", 1)[-1] for k in backend.opened if k.startswith("layers/") and not k.endswith(".json"))


# Both containerd-store engines: Docker 26 (containerd 1.7) and Docker 28.5 (containerd 2.1).
STORES = ["d26c", "d28c"]


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("where", ["local", "seaweed"])
def test_incremental_pull_reads_only_the_new_layer(engine_named, unique, tmp_path, where, store, request):
    eng = engine_named(store)
    eng.import_base(f"t{unique}/base:1")
    eng.build(f"t{unique}/app:1", f"t{unique}/base:1", {"a.txt": "one\n"}, run="true")
    eng.build(f"t{unique}/app:2", f"t{unique}/app:1", {"b.txt": "two\n"}, run="true")
    layers1, layers2 = eng.layers(f"t{unique}/app:1"), eng.layers(f"t{unique}/app:2")
    new = [d for d in layers2 if d not in layers1]
    if where == "local":
        url, env = str(tmp_path / "repo"), eng.env()
    else:
        s3 = request.getfixturevalue("seaweed")
        url, env = s3.url(f"ctrd-{unique}"), s3.env(eng.env())
    dogestry("push", url, f"t{unique}/app:1", f"t{unique}/app:2", env=env)
    eng.rmi(f"t{unique}/app:2", f"t{unique}/app:1", f"t{unique}/base:1")
    eng.api.prune_images(filters={"dangling": True})
    dogestry("pull", url, f"t{unique}/app:1", env=env)  # the host's previous deploy

    old = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    try:
        reads = _Reads(open_backend(url))
        ctx = Context(docker_host=eng.host, engine=Engine(eng.host), verbosity=1, err=io.StringIO())
        pull(ctx, Repository(reads), [f"t{unique}/app:2"])
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert _layer_reads(reads) == sorted(d[7:] for d in new), ctx.err.getvalue()
    for diff_id in layers1:
        assert f"skipped layer {diff_id}: the engine has it" in ctx.err.getvalue()
    assert eng.layers(f"t{unique}/app:2") == layers2
    assert f"t{unique}/app:2" in eng.tags()  # complete: docker images shows it
    assert not [t for t in eng.tags() if "dogestry-pull" in t]  # the temporary name is gone
    assert eng.run(f"t{unique}/app:2", "cat", "/a.txt", "/b.txt") == "one\ntwo\n"


@pytest.mark.parametrize("store", STORES)
def test_an_image_built_here_is_known_by_its_engine_id(engine_named, unique, tmp_path, store):
    eng = engine_named(store)
    repo = str(tmp_path / "repo")
    eng.import_base(f"t{unique}/base:1")
    engine_id = eng.build(f"t{unique}/app:1", f"t{unique}/base:1", {"hello.txt": "built here\n"})
    image_id = _ids(dogestry("push", repo, f"t{unique}/app:1", env=eng.env()))[0]
    assert engine_id != image_id  # a manifest digest, not the config's
    alias = tmp_path / "repo" / "aliases" / "sha256" / engine_id[7:]
    assert alias.read_text() == f"{image_id}\n"

    started = time.time()
    again = dogestry("push", repo, f"t{unique}/app:1", env=eng.env())
    assert eng.save_events(started) == [] and _ids(again) == [image_id]

    # Pulled by the id `docker images` shows: resolved through the alias; the engine has
    # the image (under its own manifest), so it is only tagged, not replaced.
    eng.api.tag(f"t{unique}/app:1", f"t{unique}/kept", "1")
    eng.created.append(f"t{unique}/kept:1")
    eng.api.remove_image(f"t{unique}/app:1")
    out = dogestry("-v", "pull", repo, engine_id[7:19], env=eng.env())
    err = out.stderr.decode()
    assert _ids(out) == [image_id] and f"engine id {engine_id} is image {image_id}" in err
    assert "the engine has it" in err and "sent layer" not in err
    out = dogestry("-v", "pull", repo, f"t{unique}/app:1", env=eng.env())
    assert "the engine has it" in out.stderr.decode()
    assert eng.inspect(f"t{unique}/app:1")["Id"] == engine_id

    out = dogestry("pull", repo, "0123456789ab", env=eng.env(), check=False)
    assert out.returncode == 1 and "not found" in out.stderr.decode()


@pytest.mark.parametrize("store", STORES)
def test_pull_completes_an_image_whose_layers_came_from_elsewhere(engine_named, unique, tmp_path, store):
    """The unpacker skips the base layers (their snapshots exist, from a local build), whose
    content the engine keeps only gzip-compressed: without completion the image is hidden
    and exports only its manifest (moby/moby#49473); a push of it to a new remote must
    still give a whole, pullable image."""
    eng, other = engine_named(store), engine_named("d20")
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    eng.import_base(f"t{unique}/base:1")
    eng.build(f"t{unique}/app:1", f"t{unique}/base:1", {"a.txt": "one\n"}, run="true")
    eng.build(f"t{unique}/app:2", f"t{unique}/app:1", {"b.txt": "two\n"}, run="true")
    image_id = _ids(dogestry("push", first, f"t{unique}/app:2", env=eng.env()))[0]
    eng.rmi(f"t{unique}/app:2")
    out = dogestry("-v", "pull", first, f"t{unique}/app:2", env=eng.env())
    assert "moby/moby#49473" in out.stderr.decode()
    assert f"t{unique}/app:2" in eng.tags()

    assert _ids(dogestry("push", second, f"t{unique}/app:2", env=eng.env())) == [image_id]
    dogestry("pull", second, f"t{unique}/app:2", env=other.env())
    other.created.append(f"t{unique}/app:2")
    assert other.run(f"t{unique}/app:2", "cat", "/a.txt", "/b.txt") == "one\ntwo\n"



@pytest.mark.parametrize("store", STORES)
def test_pull_completes_a_hidden_image_the_engine_already_has(engine_named, unique, tmp_path, store):
    """A plain `docker pull` from `dogestry serve` leaves the image without the content of
    the layers whose snapshots existed (moby/moby#49473): it runs, but `docker images`
    hides it and it cannot be saved. A dogestry pull of it must not count it as present."""
    from dogestry.serve import Server

    eng = engine_named(store)
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    eng.import_base(f"t{unique}/base:1")
    eng.build(f"t{unique}/app:1", f"t{unique}/base:1", {"a.txt": "one\n"}, run="true")
    image_id = _ids(dogestry("push", first, f"t{unique}/app:1", env=eng.env()))[0]
    eng.rmi(f"t{unique}/app:1")
    server = Server(Repository(open_backend(first)), log=lambda line: None)
    port = server.start()
    try:
        eng.api.pull(f"127.0.0.1:{port}/t{unique}/app", "1")
    finally:
        server.stop()
    eng.created.append(f"127.0.0.1:{port}/t{unique}/app:1")  # kept: the store drops an image with its last name
    hidden = eng.inspect(image_id) or eng.inspect(Repository(open_backend(first)).get_image(image_id).manifest_digest)
    assert hidden is not None
    # Docker 26 hides it; Docker 28 lists it, with an inspect that has no config in it
    assert f"127.0.0.1:{port}/t{unique}/app:1" not in eng.tags() or not hidden["RootFS"].get("Layers")
    refused = dogestry("push", second, f"127.0.0.1:{port}/t{unique}/app:1", env=eng.env(), check=False)
    err = refused.stderr.decode()
    assert refused.returncode == 1 and err.count("\n") == 1 and "moby/moby#49473" in err, err

    dogestry("pull", first, f"t{unique}/app:1", env=eng.env())
    assert f"t{unique}/app:1" in eng.tags()
    assert _ids(dogestry("push", second, f"t{unique}/app:1", env=eng.env())) == [image_id]
    dogestry("verify", second)

@pytest.mark.parametrize("store", STORES)
def test_a_pull_removes_the_temporary_names_killed_pulls_left(engine_named, unique, tmp_path, store):
    """A pull killed between the engine's pull and the removal of its temporary name leaves
    127.0.0.1:PORT/dogestry-pull-...: the next pull through the server removes such a name
    once nothing listens on its PORT, and leaves one whose PORT is still served."""
    import socket

    eng = engine_named(store)
    eng.import_base(f"t{unique}/base:1")
    eng.build(f"t{unique}/app:1", f"t{unique}/base:1", {"a.txt": "one\n"}, run="true")
    repo = str(tmp_path / "repo")
    dogestry("push", repo, f"t{unique}/app:1", env=eng.env())
    eng.rmi(f"t{unique}/app:1")
    live = socket.socket()
    live.bind(("127.0.0.1", 0))
    live.listen(8)
    with socket.socket() as probe:  # a port bound, then let go: nobody listens on it now
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    names = {port: f"127.0.0.1:{port}/dogestry-pull-{unique[:6]}{port:06x}:{'a' * 64}"
             for port in (dead, live.getsockname()[1])}
    try:
        for name in names.values():
            eng.api.tag(f"t{unique}/base:1", *name.rsplit(":", 1))
            eng.created.append(name)
        dogestry("pull", repo, f"t{unique}/app:1", env=eng.env())
        assert f"t{unique}/app:1" in eng.tags()
        left = {t for t in eng.tags() if "/dogestry-pull-" in t}
        assert names[dead] not in left and names[live.getsockname()[1]] in left, left
    finally:
        live.close()


def test_records_name_the_image_asked_for(engine, unique, tmp_path):
    repo = str(tmp_path / "repo")
    engine.import_base(f"t{unique}/base:1")
    a = engine.build(f"t{unique}/a:1", f"t{unique}/base:1", {"x.txt": "x\n"}, run="true")
    _build(engine, f"t{unique}/b:1", f"FROM t{unique}/a:1\nLABEL which=b\n")
    b = engine.inspect(f"t{unique}/b:1")["Id"]
    assert engine.layers(f"t{unique}/a:1") == engine.layers(f"t{unique}/b:1")
    out = dogestry("push", repo, f"t{unique}/b:1", a, env=engine.env())
    (id_b, _), (id_a,) = [line.split() for line in out.stdout.decode().splitlines()]
    assert _label(tmp_path / "repo", id_b) == "b" and _label(tmp_path / "repo", id_a) is None
    out = dogestry("push", str(tmp_path / "byid"), a, b, env=engine.env())
    assert _ids(out) == [id_a, id_b]


def _label(repo, image_id):
    config = json.loads((repo / "configs" / "sha256" / image_id[7:]).read_bytes())
    return ((config.get("config") or {}).get("Labels") or {}).get("which")


def _build(engine, name, dockerfile):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile.encode()))
    buf.seek(0)
    out = list(engine.api.build(fileobj=buf, custom_context=True, tag=name, rm=True, decode=True))
    assert not [o for o in out if "error" in o], out
    engine.created.append(name)
    return engine.inspect(name)["Id"]


def test_an_image_with_no_layers_is_refused_alike_on_every_engine(engine, unique, tmp_path):
    # Graphdriver engines cannot export it (`docker save`: "empty export - not implemented"),
    # so no engine pushes it: one clear line, and nothing written.
    repo = tmp_path / "repo"
    _build(engine, f"t{unique}/empty:1", 'FROM scratch\nLABEL which=empty\nCMD ["/nothing"]\n')
    assert not engine.inspect(f"t{unique}/empty:1")["RootFS"].get("Layers")
    started = time.time()
    out = dogestry("push", str(repo), f"t{unique}/empty:1", env=engine.env(), check=False)
    lines = out.stderr.decode().strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1 and f"t{unique}/empty:1" in lines[0] and "no layers" in lines[0]
    assert engine.save_events(started) == [] and not repo.exists()


def test_only_an_engine_on_this_host_s_loopback_pulls_through_the_server():
    for host, local in [("unix:///var/run/docker.sock", True), ("tcp://127.0.0.1:2376", True),
                        ("tcp://127.3.4.5:2375", True), ("tcp://localhost:2376", True), ("tcp://[::1]:2376", True),
                        ("tcp://10.1.2.3:2376", False), ("tcp://build.example:2376", False),
                        ("ssh://me@host", False), ("npipe:////./pipe/docker_engine", False)]:
        assert Engine(host).is_local() is local, host
