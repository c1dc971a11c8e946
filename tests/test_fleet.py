"""Fleet pulls (dogestry.fleet): several real engines at once, each object read from the
remote once, one engine's failure reported without stopping the others."""

import io
import json
import os
import tempfile

from conftest import dogestry
from dogestry.backends import open_backend
from dogestry.context import Context
from dogestry.fleet import pull as fleet_pull
from dogestry.repo import Repository

DOWN = "unix:///nonexistent/dogestry-fleet-test.sock"  # no engine answers here


class _Reads:
    """A real backend whose object reads (open and get) are recorded."""

    def __init__(self, inner):
        self._inner, self.read = inner, []

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def open(self, key):
        self.read.append(key)
        return self._inner.open(key)

    def get(self, key, limit=None):
        self.read.append(key)
        return self._inner.get(key, limit)


def _objects(reads):
    """Reads of layers, configs and image records (refs and the format marker aside)."""
    return [k for k in reads.read if k.split("/", 1)[0] in ("layers", "configs", "images") and not k.endswith(".json")]


def _three_layers(eng, unique):
    eng.import_base(f"t{unique}/base:1")
    eng.build(f"t{unique}/app:1", f"t{unique}/base:1", {"a.txt": "one\n"}, run="true")
    eng.build(f"t{unique}/app:2", f"t{unique}/app:1", {"b.txt": "two\n"}, run="echo x > /x.txt")
    return eng.layers(f"t{unique}/app:1"), eng.layers(f"t{unique}/app:2")


def _fleet(hosts, url, names, verbosity=1):
    reads = _Reads(open_backend(url))
    ctx = Context(verbosity=verbosity, err=io.StringIO(), out=io.StringIO())
    resolved, results = fleet_pull(ctx, Repository(reads), names, hosts)
    return reads, ctx, resolved, results


def test_fleet_pull_reads_each_object_once(engine_named, unique, tmp_path):
    d20, d26 = engine_named("d20"), engine_named("d26")
    repo = str(tmp_path / "repo")
    layers1, layers2 = _three_layers(d20, unique)
    new = [d for d in layers2 if d not in layers1]
    dogestry("push", repo, f"t{unique}/app:1", f"t{unique}/app:2", env=d20.env())
    d20.rmi(f"t{unique}/app:2", f"t{unique}/app:1", f"t{unique}/base:1")
    d20.api.prune_images(filters={"dangling": True})
    dogestry("pull", repo, f"t{unique}/app:1", env=d26.env())  # d26 has the lower part already
    d26.created.append(f"t{unique}/app:1")

    reads, ctx, resolved, results = _fleet([d20.host, d26.host], repo, [f"t{unique}/app:2"])
    log = ctx.err.getvalue()
    assert [r.ok for r in results] == [True, True], log
    objects = _objects(reads)
    assert len(objects) == len(set(objects)), objects  # nothing read twice
    assert sorted(k.rsplit("/", 1)[-1] for k in objects if k.startswith("layers/")) == sorted(d[7:] for d in layers2)
    assert len([k for k in objects if k.startswith("configs/")]) == 1
    # The layers both engines lacked went through a spool, the rest straight to d20.
    by_host = {r.host: r for r in results}
    assert by_host[d20.host].sent == set(layers2) and by_host[d26.host].sent == set(new)
    assert by_host[d20.host].status_line() == f"{d20.host}: ok (loaded {len(layers2)} layer(s), 0 present)"
    assert by_host[d26.host].status_line() == f"{d26.host}: ok (loaded {len(new)} layer(s), {len(layers1)} present)"
    for diff_id in layers1:
        assert f"{d26.host}: skipped layer {diff_id}: the engine has it" in log
    for eng in (d20, d26):
        eng.created.append(f"t{unique}/app:2")
        assert eng.layers(f"t{unique}/app:2") == layers2
        assert eng.run(f"t{unique}/app:2", "cat", "/a.txt", "/b.txt", "/x.txt") == "one\ntwo\nx\n"
    assert [str(ref) for _, ref in resolved] == [f"t{unique}/app:2"]
    spools = [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("dogestry-fleet-")]
    assert spools == []  # every spool and its directory is gone


def test_one_engine_down_the_other_gets_the_image(engine_named, unique, tmp_path):
    d26 = engine_named("d26")
    repo = str(tmp_path / "repo")
    layers1, layers2 = _three_layers(d26, unique)
    dogestry("push", repo, f"t{unique}/app:2", env=d26.env())
    d26.rmi(f"t{unique}/app:2", f"t{unique}/app:1", f"t{unique}/base:1")
    d26.api.prune_images(filters={"dangling": True})

    out = dogestry("--docker-host", DOWN, "pull", "--json", repo, f"t{unique}/app:2", "--docker-host", d26.host,
                   check=False)
    assert out.returncode == 1, out.stderr.decode()
    records = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [(r["host"], r["status"]) for r in records] == [(DOWN, "failed"), (d26.host, "ok")]
    assert f"cannot reach the Docker engine at {DOWN}" in records[0]["error"] and "\n" not in records[0]["error"]
    assert records[1]["error"] is None and records[1]["loaded_layers"] == len(layers2)
    d26.created.append(f"t{unique}/app:2")
    assert d26.layers(f"t{unique}/app:2") == layers2
    assert d26.run(f"t{unique}/app:2", "cat", "/b.txt") == "two\n"

    # The original's --pullhosts, plain output: status lines on stderr (the failure even
    # with -q), ref records on stdout because one engine got the image; it already had it.
    again = dogestry("-q", "pull", "--pullhosts", f"{d26.host},{DOWN}", repo, f"t{unique}/app:2", check=False)
    assert again.returncode == 1
    err = again.stderr.decode().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{DOWN}: failed: cannot reach the Docker engine at {DOWN}"), err
    assert again.stdout.decode().split()[1] == f"t{unique}/app:2"
    shown = dogestry("pull", "--pullhosts", f"{d26.host},{DOWN}", repo, f"t{unique}/app:2", check=False)
    assert f"{d26.host}: ok (loaded 0 layer(s), 0 present, 1 image(s) already there)" in shown.stderr.decode()


def test_fleet_with_the_containerd_store_reads_each_layer_once(engine_named, unique, tmp_path):
    d20, d26c = engine_named("d20"), engine_named("d26c")
    repo = str(tmp_path / "repo")
    layers1, layers2 = _three_layers(d20, unique)
    dogestry("push", repo, f"t{unique}/app:2", env=d20.env())
    d20.rmi(f"t{unique}/app:2", f"t{unique}/app:1", f"t{unique}/base:1")
    d20.api.prune_images(filters={"dangling": True})

    reads, ctx, _, results = _fleet([d20.host, d26c.host], repo, [f"t{unique}/app:2"])
    assert [r.ok for r in results] == [True, True], ctx.err.getvalue()
    layer_reads = [k for k in _objects(reads) if k.startswith("layers/")]
    assert sorted(k.rsplit("/", 1)[-1] for k in layer_reads) == sorted(d[7:] for d in layers2)
    assert results[1].sent == set(layers2)  # pulled through its loopback registry, from the spools
    for eng in (d20, d26c):
        eng.created.append(f"t{unique}/app:2")
        assert eng.layers(f"t{unique}/app:2") == layers2
        assert eng.run(f"t{unique}/app:2", "cat", "/a.txt", "/b.txt") == "one\ntwo\n"
    assert not [t for t in d26c.tags() if "dogestry-pull" in t]


def test_pullhosts_refuses_an_empty_engine(tmp_path):
    out = dogestry("pull", "--pullhosts", "unix:///a.sock,,unix:///b.sock", str(tmp_path), "x:1", check=False)
    assert out.returncode == 2 and "--pullhosts" in out.stderr.decode() and "empty" in out.stderr.decode()


def test_a_corrupt_layer_fails_every_engine_that_needs_it_after_one_read(engine_named, unique, tmp_path):
    d20, d26 = engine_named("d20"), engine_named("d26")
    repo = tmp_path / "repo"
    _, layers2 = _three_layers(d20, unique)
    dogestry("push", str(repo), f"t{unique}/app:2", env=d20.env())
    d20.rmi(f"t{unique}/app:2", f"t{unique}/app:1", f"t{unique}/base:1")
    d20.api.prune_images(filters={"dangling": True})
    damaged = layers2[0]  # the busybox layer: big enough to be mid-stream when the damage is met
    path = repo / "layers" / "sha256" / damaged[7:]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))

    reads, ctx, _, results = _fleet([d20.host, d26.host], str(repo), [f"t{unique}/app:2"])
    assert [r.ok for r in results] == [False, False]
    for result in results:
        assert f"layer {damaged}" in result.error and "corrupt" in result.error and "\n" not in result.error
    assert [k for k in reads.read if k.endswith(damaged[7:])] == [f"layers/sha256/{damaged[7:]}"]
    for eng in (d20, d26):
        assert eng.inspect(f"t{unique}/app:2") is None
