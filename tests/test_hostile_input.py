"""Hostile input through bin/dogestry, as a user meets it: a damaged or crafted save tar,
repository marker, config file, stdin or URL is a one-line error with the right exit
status (1 for bad data, 2 for a bad command line), never `internal error`, and a failed
save-to-repo publishes nothing a reader could find."""

import gzip
import json
import os

import pytest

from conftest import dogestry, one_line_error
from test_fuzz import L1, L2, SEEDS, _config, _digest, _oci, mutate, save_tar


def _v1(manifest, config=None, layers=(("aaa/layer.tar", L1),), extra=()):
    config = _config([L1]) if config is None else config
    return save_tar([("config.json", config), *layers, *extra, ("manifest.json", manifest)])


def _manifest(**item):
    base = {"Config": "config.json", "Layers": ["aaa/layer.tar"], "RepoTags": ["app:1"]}
    base.update(item)
    return json.dumps([base]).encode()


HOSTILE_TARS = {
    "random-bytes": os.urandom(4096),
    "empty": b"",
    "truncated": SEEDS["docker-25"][:3000],
    "flipped-header": mutate(SEEDS["docker-v1"], [("flip", 520 + 130, 1)]),
    "pax-size-superscript": mutate(SEEDS["docker-25"], [("insert", 0, b"x", b"pax", b"11 size=\xc2\xb2\n")]),
    "pax-size-5000-digits": mutate(SEEDS["docker-25"], [("insert", 0, b"x", b"pax", b"5011 size=" + b"9" * 5000 + b"\n")]),
    "negative-size": mutate(SEEDS["docker-v1"], [("field", 0, "size", b"-0000001", True)]),
    "negative-base256-size": mutate(SEEDS["containerd"], [("size", 0, -5)]),
    "huge-size": mutate(SEEDS["docker-25"], [("size", 0, 1 << 80)]),
    "gnu-longname-garbage": mutate(SEEDS["docker-v1"], [("insert", 0, b"L", b"././@LongLink", b"a\nb/../../x\0")]),
    "not-gzip-blob": _oci(_config([L1]), [b"\x1f\x8b" + b"\0" * 100], [b"\x1f\x8b" + b"\0" * 100]),
    "truncated-gzip-blob": _oci(_config([L1]), [gzip.compress(L1)[:-20]], [gzip.compress(L1)[:-20]]),
    "manifest-of-strings": _v1(b'["a", "b"]'),
    "manifest-deep-nesting": _v1(b"[" * 100000),
    "manifest-huge-number": _v1(b"1" * 5000),
    "manifest-null-layers": _v1(_manifest(Layers=[None])),
    "manifest-layers-dict": _v1(_manifest(Layers={"a": 1})),
    "manifest-bad-tag": _v1(_manifest(RepoTags=["App:1"])),
    "manifest-tag-newline": _v1(_manifest(RepoTags=["app:1\n"])),
    "manifest-dotdot-layer": _v1(_manifest(Layers=["../aaa/layer.tar"])),
    "manifest-absolute-config": _v1(_manifest(Config="/etc/passwd")),
    "manifest-newline-layer": _v1(_manifest(Layers=["a\nb"]), extra=(("a\nb", b"{}"),)),
    "symlink-loop": _v1(_manifest(Layers=["loop1"]), extra=(("loop1", ("symlink", "loop2")),
                                                           ("loop2", ("symlink", "loop1")))),
    "config-of-strings": _v1(_manifest(), config=b'["rootfs"]'),
    "config-deep-nesting": _v1(_manifest(), config=b'{"rootfs":' * 50000),
    "config-diff-ids-newline": _v1(_manifest(), config=json.dumps(
        {"rootfs": {"diff_ids": [_digest(L1) + "\n"]}}).encode()),
    "config-wrong-diff-id": _v1(_manifest(), config=_config([L2])),
    "blob-name-not-a-digest": save_tar([("blobs/sha256/xyz", L1), ("config.json", _config([L1])),
                                        ("manifest.json", _manifest(Layers=["blobs/sha256/xyz"]))]),
}


def _published(repo):
    found = []
    for sub in ("repositories", "images"):
        for dirpath, _, files in os.walk(repo / sub):
            found += [os.path.join(dirpath, f) for f in files]
    return found


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_save_to_repo_refuses_hostile_tar(tmp_path, case):
    tar, repo = tmp_path / "save.tar", tmp_path / "repo"
    tar.write_bytes(HOSTILE_TARS[case])
    proc = dogestry("save-to-repo", "--input", str(tar), str(repo), check=False)
    one_line_error(proc, 1)
    assert proc.stdout == b""
    assert _published(repo) == []


def test_save_to_repo_accepts_the_seeds(tmp_path):
    """The hostile tars are damaged copies of tars that work."""
    for name, data in SEEDS.items():
        tar = tmp_path / f"{name}.tar"
        tar.write_bytes(data)
        proc = dogestry("save-to-repo", "--input", str(tar), str(tmp_path / "repo"))
        assert proc.stdout.decode().split()[1].startswith("app:")


def test_s3_url_with_an_endpoint_that_is_not_a_url_is_a_usage_error():
    proc = dogestry("remote", "s3://b/p/?endpoint=notaurl", check=False)
    one_line_error(proc, 2)


@pytest.mark.parametrize("url", ["s3://[b/p/", "s3://b\uff03x/p/"])
def test_s3_url_that_urlsplit_refuses_is_a_usage_error(url):
    proc = dogestry("remote", url, check=False)
    one_line_error(proc, 2)


@pytest.mark.parametrize("version", ['"1"', "true", "2.5", "[]", "null", "0", "-1", '{"a": 1}'])
def test_format_marker_with_a_version_that_is_not_one(tmp_path, version):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dogestry.json").write_text(f'{{"format": "dogestry-repository", "version": {version}}}\n')
    for args in (["remote", str(repo)], ["show-ref", str(repo)]):
        err = one_line_error(dogestry(*args, check=False), 1)
        assert "dogestry.json" in err and "upgrade" not in err, err


@pytest.mark.parametrize("marker", [b"", b"\xff\xfe", b"[" * 100000, b'"x"', b'{"format": [], "version": 1}',
                                    b"x" * (1 << 20),
                                    b'{"format": "dogestry-repository", "version": "%s"}' % (b"9" * 60000),
                                    b'{"format": "%s", "version": 1}' % (b"x" * 60000)],
                         ids=["empty", "not-utf8", "deep-nesting", "string", "format-list", "1MiB",
                              "60k-version", "60k-format"])
def test_damaged_format_marker(tmp_path, marker):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dogestry.json").write_bytes(marker)
    err = one_line_error(dogestry("remote", str(repo), check=False), 1)
    assert "dogestry.json" in err


def test_newer_format_version_asks_for_an_upgrade(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dogestry.json").write_text('{"format": "dogestry-repository", "version": 99}\n')
    err = one_line_error(dogestry("show-ref", str(repo), check=False), 1)
    assert "version 99" in err and "upgrade" in err


@pytest.mark.parametrize("content", [b"garbage line\n", b"[remote \"x\"]\nurl = /a\0b\n", b"\0\0\0",
                                     b"[docker]\nconnection = " + b"x" * (100 << 20) + b"\n",
                                     b"[remote \"x\"]\nurl = \xff\xfe\n", b"[compressor]\nlz4 = maybe\n",
                                     b"[unclosed\n"],
                         ids=["garbage", "nul-in-value", "nuls", "100MB-line", "not-utf8", "bad-bool", "unclosed"])
def test_hostile_config_file(tmp_path, content):
    cfg = tmp_path / "dogestry.cfg"
    cfg.write_bytes(content)
    repo = tmp_path / "repo"
    repo.mkdir()
    err = one_line_error(dogestry("--config", str(cfg), "save-to-repo", "--input", "-", str(repo),
                                   input=SEEDS["docker-25"], check=False), 2)
    assert str(cfg) in err


@pytest.mark.parametrize("data,nul", [(b"\xff\xfe app:1\n", False), (b"abc\0\xff\0", True),
                                      (b"x" * 70000 + b"\n", False)], ids=["not-utf8", "not-utf8-z", "70k-line"])
def test_update_ref_stdin_that_is_not_records(tmp_path, data, nul):
    repo = tmp_path / "repo"
    args = ["update-ref", str(repo), "--stdin"] + (["-z"] if nul else [])
    one_line_error(dogestry(*args, input=data, check=False), 2)


@pytest.mark.parametrize("ref", ["app:latest\n", "app:é", "App:1", "app:" + "x" * 200])
def test_update_ref_refuses_refs_that_only_look_valid(tmp_path, ref):
    tar = tmp_path / "save.tar"
    tar.write_bytes(SEEDS["docker-25"])
    repo = tmp_path / "repo"
    image_id = dogestry("save-to-repo", "--input", str(tar), str(repo)).stdout.split()[0].decode()
    one_line_error(dogestry("update-ref", str(repo), ref, image_id, check=False), 2)
    assert not (repo / "repositories" / "app" / "latest\n").exists()


@pytest.mark.parametrize("record", [b'{"id": "sha256:%s\\n", "config": {"digest": "sha256:%s\\n", "size": 1}, '
                                    b'"layers": []}', b"[" * 100000, b"\xff", b'{"id": 1}'],
                         ids=["id-newline", "deep-nesting", "not-utf8", "id-int"])
def test_damaged_image_record_in_repository(tmp_path, record):
    tar = tmp_path / "save.tar"
    tar.write_bytes(SEEDS["docker-25"])
    repo = tmp_path / "repo"
    image_id = dogestry("save-to-repo", "--input", str(tar), str(repo)).stdout.split()[0].decode()
    hex_id = image_id[7:]
    path = repo / "images" / "sha256" / f"{hex_id}.json"
    path.chmod(0o644)
    path.write_bytes(record.replace(b"%s", hex_id.encode()))
    err = one_line_error(dogestry("walk-ancestry", str(repo), image_id, check=False), 1)
    assert hex_id in err
