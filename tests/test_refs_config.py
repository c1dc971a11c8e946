"""Pure logic: reference grammar, config parsing, chain ids."""

import pytest

from dogestry.config import Config
from dogestry.digests import chain_ids, sha256_digest
from dogestry.errors import UsageError
from dogestry.refs import parse_ref


@pytest.mark.parametrize("text,name,tag", [
    ("app", "app", "latest"),
    ("app:1.4", "app", "1.4"),
    ("team/app:v2", "team/app", "v2"),
    ("localhost:5000/team/app", "localhost:5000/team/app", "latest"),
    ("registry.example.com:443/a/b:c_d", "registry.example.com:443/a/b", "c_d"),
    ("docker.io/library/app:1", "app", "1"),
    ("docker.io/team/app:1", "team/app", "1"),
])
def test_valid_refs(text, name, tag):
    ref = parse_ref(text)
    assert (ref.name, ref.tag) == (name, tag)


@pytest.mark.parametrize("text", ["App:1", "../etc:1", "/abs:1", "a//b:1", "app:.hidden", "app:-x", "app@sha256:00",
                                  "a/../b", "app:" + "x" * 129, "", ":tag", "a b"])
def test_invalid_refs(text):
    with pytest.raises(UsageError):
        parse_ref(text)


def test_full_name_for_containerd():
    assert parse_ref("app:1").full_name == "docker.io/library/app"
    assert parse_ref("team/app:1").full_name == "docker.io/team/app"
    assert parse_ref("localhost:5000/app:1").full_name == "localhost:5000/app"


def test_config_git_style():
    cfg = Config.parse('''
# comment
[remote "central"]
  url = /srv/images            # trailing comment
[remote "s3"]
	url = s3://bucket/prefix/?region=us-west-2
[docker]
  connection = tcp://host:2376
[compressor]
  lz4 = false
[dogestry]
  temp-dir = /var/tmp
''')
    assert cfg.remote_url("central") == "/srv/images"
    assert cfg.remote_url("s3") == "s3://bucket/prefix/?region=us-west-2"
    assert cfg.remote_url("/elsewhere") == "/elsewhere"
    assert cfg.docker_host(environ={}) == "tcp://host:2376"
    assert cfg.docker_host("unix:///x.sock", environ={}) == "unix:///x.sock"
    assert cfg.codec() == "none"
    assert cfg.temp_dir() == "/var/tmp"


def test_docker_host_precedence():
    assert Config().docker_host(environ={"DOCKER_HOST": "tcp://e:1"}) == "tcp://e:1"
    assert Config().docker_host(environ={}) is None
    # the environment beats the config file, a flag beats both (as in the Docker and AWS CLIs)
    cfg = Config.parse("[docker]\nconnection = unix:///c\n[dogestry]\ntemp-dir = /c\n")
    assert cfg.docker_host(environ={"DOCKER_HOST": "tcp://e:1"}) == "tcp://e:1"
    assert cfg.docker_host(environ={}) == "unix:///c"
    assert cfg.docker_host("unix:///flag", environ={"DOCKER_HOST": "tcp://e:1"}) == "unix:///flag"
    assert cfg.temp_dir(environ={"DOGESTRY_TEMP_DIR": "/e"}) == "/e" and cfg.temp_dir(environ={}) == "/c"


def test_unknown_alias_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="unknown remote"):
        Config().remote_url("central")
    assert Config().remote_url("./central") == "./central"


def test_bad_config_lines_name_the_line():
    with pytest.raises(UsageError, match=":2:"):
        Config.parse("[docker]\n=broken\n", "x.cfg")
    with pytest.raises(UsageError):
        Config.parse("[compressor]\nlz4 = maybe\n").codec()


def test_chain_ids_follow_the_oci_spec():
    a, b = sha256_digest(b"a"), sha256_digest(b"b")
    assert chain_ids([a]) == [a]
    assert chain_ids([a, b]) == [a, sha256_digest(f"{a} {b}".encode())]


def test_docker_hubs_two_spellings_of_an_official_image_find_one_ref(tmp_path):
    """docker takes library/app:2 and app:2 as one image: a ref pushed under either spelling
    is found under the other (resolve-ref, and so pull), and keeps the name asked for."""
    from conftest import dogestry
    from test_fuzz import SEEDS

    repo = str(tmp_path / "repo")
    image_id = dogestry("save-to-repo", "--input", "-", repo, input=SEEDS["docker-v1"]).stdout.split()[0].decode()
    dogestry("update-ref", repo, "library/app:2", image_id)
    dogestry("update-ref", repo, "app:3", image_id)
    for asked in ("app:2", "library/app:2", "app:3", "library/app:3"):
        assert dogestry("resolve-ref", repo, asked).stdout.decode().split() == [image_id, asked]
    for missing in ("app:4", "library/app:4", "team/app:2", "library/team/app:2"):
        assert dogestry("resolve-ref", repo, missing, check=False).returncode == 1



def test_untag_takes_either_spelling_of_an_official_image_and_removes_the_stored_one(tmp_path):
    """What resolve finds under the other spelling, untag finds too: `untag R library/app:2`
    after a push of app:2 removed nothing and said "not found"."""
    from conftest import dogestry
    from test_fuzz import SEEDS

    repo = str(tmp_path / "repo")
    image_id = dogestry("save-to-repo", "--input", "-", repo, input=SEEDS["docker-v1"]).stdout.split()[0].decode()
    dogestry("update-ref", repo, "library/app:2", image_id)
    dogestry("update-ref", repo, "app:3", image_id)
    gone = dogestry("untag", repo, "app:2", "library/app:3", "library/app:2").stdout.decode().splitlines()
    assert gone == [f"{image_id} library/app:2", f"{image_id} app:3"]
    assert dogestry("show-ref", repo).stdout == b""
    out = dogestry("untag", repo, "library/app:2", check=False)
    assert out.returncode == 1 and "library/app:2 not found" in out.stderr.decode()
