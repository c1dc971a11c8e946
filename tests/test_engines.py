"""push/pull and the plumbing against real Docker engines (every engine scripts/engines starts)."""

import io
import json
import os
import tarfile
import time

from conftest import dogestry, tree


def _ids(proc):
    return [line.split()[0] for line in proc.stdout.decode().splitlines()]


def _two_apps(engine, unique):
    base = engine.import_base(f"t{unique}/base:1")
    app1 = engine.build(f"t{unique}/app:1", f"t{unique}/base:1", {"hello.txt": "hello one\n"}, run="echo shared > /r.txt")
    app2 = engine.build(f"t{unique}/app:2", f"t{unique}/app:1", {"hello.txt": "hello two\n"}, run="echo two > /two.txt")
    return base, app1, app2


def test_push_remove_pull_round_trip(engine, unique, tmp_path):
    repo = str(tmp_path / "repo")
    engine.import_base(f"t{unique}/base:1")
    engine.build(f"t{unique}/app:1", f"t{unique}/base:1", {"hello.txt": f"hello {unique}\n"})
    before = engine.inspect(f"t{unique}/app:1")
    pushed = dogestry("push", repo, f"t{unique}/app:1", env=engine.env())
    image_id = _ids(pushed)[0]
    assert pushed.stdout.decode().split() == [image_id, f"t{unique}/app:1"]

    engine.rmi(f"t{unique}/app:1", f"t{unique}/base:1")
    assert engine.inspect(f"t{unique}/app:1") is None
    dogestry("pull", repo, f"t{unique}/app:1", env=engine.env())

    after = engine.inspect(f"t{unique}/app:1")
    assert after["RootFS"]["Layers"] == before["RootFS"]["Layers"]
    assert f"t{unique}/app:1" in after["RepoTags"]
    if not engine.containerd:
        assert after["Id"] == before["Id"] == image_id
    assert engine.run(f"t{unique}/app:1") == f"hello {unique}\n"
    # The pulled image has the same config: pushing it again gives the same image id.
    again = dogestry("push", str(tmp_path / "again"), f"t{unique}/app:1", env=engine.env())
    assert _ids(again) == [image_id]


def test_shared_layers_are_stored_once(engine, unique, tmp_path):
    repo = tmp_path / "repo"
    _two_apps(engine, unique)
    dogestry("push", str(repo), f"t{unique}/app:1", f"t{unique}/app:2", env=engine.env())
    layers1 = engine.layers(f"t{unique}/app:1")
    layers2 = engine.layers(f"t{unique}/app:2")
    assert layers2[:len(layers1)] == layers1
    stored = sorted(p for p in os.listdir(repo / "layers" / "sha256") if not p.endswith(".json") and not p.startswith("."))
    assert stored == sorted({d[7:] for d in layers1 + layers2})
    records = [json.loads((repo / "images" / "sha256" / name).read_text())
               for name in os.listdir(repo / "images" / "sha256")]
    assert len(records) == 2
    shown = dogestry("show-ref", str(repo)).stdout.decode().splitlines()
    assert [line.split()[1] for line in shown] == [f"t{unique}/app:1", f"t{unique}/app:2"]


def test_second_push_of_unchanged_image_makes_no_save(engine, unique, tmp_path):
    repo = str(tmp_path / "repo")
    engine.import_base(f"t{unique}/base:1")
    engine.build(f"t{unique}/app:1", f"t{unique}/base:1", {"hello.txt": "x\n"})
    started = time.time()
    dogestry("push", repo, f"t{unique}/app:1", env=engine.env())
    assert len(engine.save_events(started)) == 1
    if engine.containerd:
        # The containerd store names a built image by a manifest dogestry never saw; once
        # the image has come back from a pull it is recognised (below).
        engine.rmi(f"t{unique}/app:1")
        dogestry("pull", repo, f"t{unique}/app:1", env=engine.env())
    before = tree(repo)
    started = time.time()
    second = dogestry("push", repo, f"t{unique}/app:1", env=engine.env())
    assert engine.save_events(started) == []
    assert second.stdout.decode().split()[1] == f"t{unique}/app:1"
    assert tree(repo) == before
    # A new tag for the same image is only a ref write.
    engine.api.tag(f"t{unique}/app:1", f"t{unique}/app", "again")
    engine.created.append(f"t{unique}/app:again")
    started = time.time()
    dogestry("push", repo, f"t{unique}/app:again", env=engine.env())
    assert engine.save_events(started) == []
    assert (tmp_path / "repo" / "repositories" / f"t{unique}" / "app" / "_tags" / "again").read_text().strip() == _ids(second)[0]


def _tar_members(data):
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [m.name for m in tar.getmembers()]


def test_incremental_pull_sends_only_the_changed_layer(engine, unique, tmp_path):
    repo = str(tmp_path / "repo")
    _two_apps(engine, unique)
    layers1 = engine.layers(f"t{unique}/app:1")
    layers2 = engine.layers(f"t{unique}/app:2")
    new = [d for d in layers2 if d not in layers1]
    assert len(new) == 2  # COPY and RUN
    dogestry("push", repo, f"t{unique}/app:1", f"t{unique}/app:2", env=engine.env())
    engine.rmi(f"t{unique}/app:2")

    image_id = _ids(dogestry("resolve-ref", repo, f"t{unique}/app:2"))[0]
    walked = dogestry("walk-ancestry", repo, image_id, "--missing-in-docker", env=engine.env()).stdout.decode()
    tar = dogestry("build-load-tar", repo, image_id, "--tag", f"t{unique}/app:2", "--missing-in-docker",
                   env=engine.env()).stdout
    blobs = {m[len("blobs/sha256/"):] for m in _tar_members(tar) if m.startswith("blobs/sha256/")}
    if engine.containerd:
        # Documented: the containerd store gets every layer of an image it lacks.
        assert {d[7:] for d in layers2} <= blobs
        assert len([line for line in walked.splitlines() if line.startswith("layer ")]) == len(layers2)
    else:
        assert {d[7:] for d in layers2} & blobs == {d[7:] for d in new}
        assert [line.split()[1] for line in walked.splitlines() if line.startswith("layer ")] == new[::-1]

    pulled = dogestry("-v", "pull", repo, f"t{unique}/app:2", env=engine.env())
    err = pulled.stderr.decode()
    for diff_id in new:
        assert f"sent layer {diff_id}" in err and "verified" in err
    if not engine.containerd:
        for diff_id in layers1:
            assert f"skipped layer {diff_id}" in err
    assert engine.layers(f"t{unique}/app:2") == layers2
    assert engine.run(f"t{unique}/app:2", "cat", "/hello.txt", "/two.txt") == "hello two\ntwo\n"


def test_pull_when_engine_has_image_only_tags(engine, unique, tmp_path):
    repo = str(tmp_path / "repo")
    engine.import_base(f"t{unique}/base:1")
    engine.build(f"t{unique}/app:1", f"t{unique}/base:1", {"hello.txt": "x\n"})
    dogestry("push", repo, f"t{unique}/app:1", env=engine.env())
    if engine.containerd:
        engine.rmi(f"t{unique}/app:1")
        dogestry("pull", repo, f"t{unique}/app:1", env=engine.env())
    engine.api.remove_image(f"t{unique}/app:1") if engine.containerd else None
    dogestry("pull", repo, f"t{unique}/app:1", env=engine.env())
    engine.api.tag(f"t{unique}/app:1", f"t{unique}/other", "1")
    engine.created.append(f"t{unique}/other:1")
    engine.rmi(f"t{unique}/app:1")
    assert f"t{unique}/app:1" not in engine.tags()
    out = dogestry("-v", "pull", repo, f"t{unique}/app:1", env=engine.env())
    assert "the engine has it" in out.stderr.decode()
    assert f"t{unique}/app:1" in engine.tags()


def test_pull_by_image_id_prefix(engine, unique, tmp_path):
    repo = str(tmp_path / "repo")
    engine.import_base(f"t{unique}/base:1")
    engine.build(f"t{unique}/app:1", f"t{unique}/base:1", {"hello.txt": "by id\n"})
    image_id = _ids(dogestry("push", repo, f"t{unique}/app:1", env=engine.env()))[0]
    layers = engine.layers(f"t{unique}/app:1")
    engine.rmi(f"t{unique}/app:1")
    out = dogestry("pull", repo, image_id[7:19], env=engine.env())
    assert out.stdout.decode().split() == [image_id]
    assert any(engine.inspect(i["Id"])["RootFS"]["Layers"] == layers for i in engine.api.images(all=True))


def test_plumbing_pipeline_equals_porcelain(engine, unique, tmp_path):
    porcelain, pipeline = str(tmp_path / "porcelain"), str(tmp_path / "pipeline")
    _two_apps(engine, unique)
    images = [f"t{unique}/app:1", f"t{unique}/app:2"]
    saves = {}
    for attempt in ("first", "again"):  # again: the remote holds both whole
        since = time.time()
        dogestry("push", porcelain, *images, env=engine.env())
        saves[("porcelain", attempt)] = len(engine.save_events(since))
        since = time.time()
        saved = dogestry("save-to-repo", pipeline, *images, env=engine.env())
        dogestry("update-ref", "--stdin", pipeline, input=saved.stdout)
        saves[("pipeline", attempt)] = len(engine.save_events(since))
    assert saves[("porcelain", "first")] == saves[("pipeline", "first")] >= 1, saves
    assert saves[("porcelain", "again")] == saves[("pipeline", "again")]
    if not engine.containerd:  # that store re-exports an image it did not get from dogestry
        assert saves[("porcelain", "again")] == 0
    assert tree(porcelain) == tree(pipeline)

    states = []
    for how in ("porcelain", "pipeline"):
        engine.rmi(f"t{unique}/app:2", f"t{unique}/app:1")
        if how == "porcelain":
            dogestry("pull", porcelain, *images, env=engine.env())
        else:
            refs = dogestry("resolve-ref", pipeline, *images)
            dogestry("build-load-tar", "--stdin", "--missing-in-docker", "--load", pipeline,
                     input=refs.stdout, env=engine.env())
        states.append({i: (engine.inspect(i)["Id"], engine.layers(i)) for i in images})
    assert states[0] == states[1]


def test_sync_objects_copies_a_verified_closure(engine, unique, tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    _two_apps(engine, unique)
    image_id = _ids(dogestry("push", src, f"t{unique}/app:2", env=engine.env()))[0]
    walked = dogestry("walk-ancestry", src, image_id)
    copied = dogestry("sync-objects", "--stdin", src, dst, input=walked.stdout).stdout.decode().splitlines()
    assert copied[-1] == f"image {image_id}" and f"config {image_id}" in copied
    assert dogestry("sync-objects", "--stdin", src, dst, input=walked.stdout).stdout == b""
    dogestry("update-ref", dst, f"t{unique}/app:2", image_id)
    engine.rmi(f"t{unique}/app:2")
    dogestry("pull", dst, f"t{unique}/app:2", env=engine.env())
    assert engine.run(f"t{unique}/app:2", "cat", "/two.txt") == "two\n"


def test_corrupt_object_fails_pull_and_leaves_engine_unchanged(engine, unique, tmp_path):
    repo = tmp_path / "repo"
    engine.import_base(f"t{unique}/base:1")
    engine.build(f"t{unique}/app:1", f"t{unique}/base:1", {"hello.txt": "x\n"}, big=3 << 20)
    dogestry("push", str(repo), f"t{unique}/app:1", env=engine.env())
    top = engine.layers(f"t{unique}/app:1")[1]  # the COPY layer holding big.bin
    path = repo / "layers" / "sha256" / top[7:]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    engine.rmi(f"t{unique}/app:1", f"t{unique}/base:1")
    images_before = sorted(i["Id"] for i in engine.api.images(all=True))

    out = dogestry("pull", str(repo), f"t{unique}/app:1", env=engine.env(), check=False)
    assert out.returncode == 1
    lines = out.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and top in lines[0] and "corrupt" in lines[0], lines
    assert f"t{unique}/app:1" not in engine.tags()
    assert sorted(i["Id"] for i in engine.api.images(all=True)) == images_before


def test_bad_input_is_refused_cleanly(engine, unique, tmp_path):
    repo = tmp_path / "repo"
    out = dogestry("push", str(repo), f"t{unique}/nope:1", env=engine.env(), check=False)
    assert out.returncode == 1 and "not found" in out.stderr.decode()
    assert not repo.exists()
    out = dogestry("push", str(repo), "Bad Name:1", env=engine.env(), check=False)
    assert out.returncode == 2 and len(out.stderr.decode().strip().splitlines()) == 1
    out = dogestry("push", "central", "app:1", env=engine.env(), check=False, cwd=str(tmp_path))
    assert out.returncode == 2 and "unknown remote" in out.stderr.decode()
    out = dogestry("save-to-repo", str(repo), "--input", "-", input=b"this is not a tar" * 100, check=False)
    assert out.returncode == 1 and "not a tar" in out.stderr.decode()
    assert not repo.exists()


def test_pull_across_engines_20_to_26_containerd(engine_named, unique, tmp_path):
    src, dst = engine_named("d20"), engine_named("d26c")
    repo = str(tmp_path / "repo")
    src.import_base(f"t{unique}/base:1")
    src.build(f"t{unique}/app:1", f"t{unique}/base:1", {"hello.txt": "across\n"})
    image_id = _ids(dogestry("push", repo, f"t{unique}/app:1", env=src.env()))[0]
    dogestry("pull", repo, f"t{unique}/app:1", env=dst.env())
    dst.created.append(f"t{unique}/app:1")
    assert dst.layers(f"t{unique}/app:1") == src.layers(f"t{unique}/app:1")
    assert dst.run(f"t{unique}/app:1") == "across\n"
    assert _ids(dogestry("push", str(tmp_path / "back"), f"t{unique}/app:1", env=dst.env())) == [image_id]


def test_layer_of_a_known_size_but_new_content_is_still_stored(engine, unique, tmp_path):
    """Docker <= 24: a layer whose size matches one the remote has is first only hashed;
    when its content turns out new, push exports once more and stores it."""
    repo = str(tmp_path / "repo")
    engine.import_base(f"t{unique}/base:1")
    engine.build(f"t{unique}/a:1", f"t{unique}/base:1", {"x.bin": os.urandom(2 << 20)}, run="true")
    engine.build(f"t{unique}/b:1", f"t{unique}/a:1", {"y.bin": os.urandom(2 << 20)}, run="true")
    a, b = engine.layers(f"t{unique}/a:1"), engine.layers(f"t{unique}/b:1")
    assert b[:len(a)] == a and len(b) > len(a)
    dogestry("push", repo, f"t{unique}/a:1", env=engine.env())
    started = time.time()
    out = dogestry("-v", "push", repo, f"t{unique}/b:1", env=engine.env())
    saves = len(engine.save_events(started))
    old_format = not engine.containerd and engine.api.version()["Version"].startswith("20.")
    assert saves == (2 if old_format else 1), out.stderr.decode()
    if old_format:
        assert "will be read again" in out.stderr.decode()
    engine.rmi(f"t{unique}/b:1")
    dogestry("pull", repo, f"t{unique}/b:1", env=engine.env())
    assert engine.layers(f"t{unique}/b:1") == b


def test_push_prints_results_in_the_order_named(engine, unique, tmp_path):
    repo = str(tmp_path / "repo")
    _two_apps(engine, unique)
    dogestry("push", repo, f"t{unique}/app:2", env=engine.env())
    out = dogestry("push", repo, f"t{unique}/app:1", f"t{unique}/app:2", env=engine.env())  # 1 saved, 2 skipped
    assert [line.split()[1] for line in out.stdout.decode().splitlines()] == [f"t{unique}/app:1", f"t{unique}/app:2"]
