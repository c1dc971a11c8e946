"""The command line as a user meets it: bin/dogestry in a subprocess."""

import os
import stat

from conftest import dogestry

from dogestry.commands import COMMANDS


def test_help_lists_every_command_by_category():
    out = dogestry("help").stdout.decode()
    porcelain, plumbing = out.split("Plumbing commands:")
    for command in COMMANDS:
        section = porcelain if command.category == "porcelain" else plumbing
        assert f"  {command.name} " in section


def test_every_command_has_help():
    for command in COMMANDS:
        out = dogestry(command.name, "--help").stdout.decode()
        assert out.startswith(f"usage: dogestry {command.name}")


def test_unknown_command_runs_extension_from_path(tmp_path):
    ext = tmp_path / "dogestry-hello"
    ext.write_text("#!/bin/sh\necho \"extension got: $*\"\n")
    ext.chmod(ext.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    assert dogestry("-q", "hello", "a", "--b", env=env).stdout == b"extension got: a --b\n"
    out = dogestry("nosuchthing", check=False)
    assert out.returncode == 2 and b"not a dogestry command" in out.stderr


def test_usage_errors_exit_2_with_one_line():
    for args in ([], ["push"], ["pull", "gopher://x/y", "app"], ["push", "/tmp/x", "UPPER:1"],
                 # argparse < 3.12 drops a `--` given as a value: the argument is then missing
                 ["pull", "/tmp/x", "--", "--"], ["walk-ancestry", "/tmp/x", "--", "--"],
                 ["tag", "/tmp/x", "--", "--", "--"]):
        out = dogestry(*args, check=False)
        assert out.returncode == 2, args
        assert len(out.stderr.decode().strip().splitlines()) == 1, out.stderr


def test_failures_exit_1_and_debug_shows_traceback(tmp_path):
    repo = str(tmp_path / "empty")
    os.mkdir(repo)
    out = dogestry("resolve-ref", repo, "app:1", check=False)
    assert out.returncode == 1 and out.stderr.decode().strip() == f"dogestry: app:1 not found in {repo}"
    out = dogestry("--debug", "resolve-ref", repo, "app:1", check=False)
    assert out.returncode == 1 and b"Traceback" in out.stderr
    out = dogestry("show-ref", repo, "nomatch*", check=False)
    assert out.returncode == 1 and out.stdout == b""


def test_remote_describes_an_empty_location(tmp_path):
    out = dogestry("remote", str(tmp_path)).stdout.decode()
    assert "kind: local" in out and "format: none (empty)" in out and "refs: 0" in out


def test_engine_unreachable_is_one_line(tmp_path):
    out = dogestry("--docker-host", f"unix://{tmp_path}/no.sock", "push", str(tmp_path / "r"), "app:1", check=False)
    assert out.returncode == 1
    assert out.stderr.decode().strip().splitlines() == [
        f"dogestry: cannot reach the Docker engine at unix://{tmp_path}/no.sock: is it running? "
        "(set --docker-host, [docker] connection or DOCKER_HOST)"]


def test_help_command_shows_the_manual_page():
    out = dogestry("help", "pull").stdout.decode()
    assert "DOGESTRY-PULL(1)" in out and "SYNOPSIS" in out
    out = dogestry("help", "nosuch", check=False)
    assert out.returncode == 2


def test_repository_of_an_unknown_format_version_is_refused(tmp_path):
    repo = tmp_path / "future"
    (repo / "repositories" / "app").mkdir(parents=True)
    (repo / "dogestry.json").write_text('{"format": "dogestry-repository", "version": 9}\n')
    (repo / "repositories" / "app" / "1").write_text("sha256:" + "a" * 64 + "\n")
    before = sorted(p.name for p in repo.rglob("*"))
    for args in (["pull", str(repo), "app:1"], ["show-ref", str(repo)], ["update-ref", str(repo), "app:2", "a" * 64]):
        out = dogestry(*args, check=False)
        assert out.returncode == 1, args
        assert out.stderr.decode().strip().splitlines() == [
            f"dogestry: {repo} uses repository format version 9; this dogestry reads versions 1 and 2: upgrade dogestry"]
    assert sorted(p.name for p in repo.rglob("*")) == before


def test_global_options_work_after_the_command_and_errors_have_one_prefix(tmp_path):
    repo = str(tmp_path / "empty")
    os.mkdir(repo)
    out = dogestry("resolve-ref", repo, "app:1", "-v", "--config", "/dev/null", check=False)
    assert out.returncode == 1 and out.stderr.decode().strip() == f"dogestry: app:1 not found in {repo}"
    out = dogestry("pull", repo, "app:1", "--bogus", check=False)
    assert out.returncode == 2 and out.stderr.decode().strip() == "dogestry: pull: unrecognized arguments: --bogus"
    out = dogestry("-q", "pull", repo, "app:1", "-v", check=False)
    assert out.returncode == 2 and "contradict" in out.stderr.decode()


def test_records_stream_through_a_plumbing_command(tmp_path):
    """resolve-ref --stdin answers each record as it arrives, before its input ends."""
    import json
    import subprocess
    import sys

    from conftest import BIN

    from dogestry.backends import open_backend
    from dogestry.image import Image
    from dogestry.refs import parse_ref
    from dogestry.repo import Repository

    repo = Repository(open_backend(str(tmp_path / "repo")))
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": []}}).encode()
    image_id = repo.put_config(config)
    repo.put_image(Image.from_config(config, []))
    repo.set_ref(parse_ref("app:1"), image_id)
    for nul in (False, True):
        end = "\0" if nul else "\n"
        proc = subprocess.Popen([sys.executable, BIN, "resolve-ref", "--stdin", str(tmp_path / "repo")]
                                + (["-z"] if nul else []), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            proc.stdin.write(f"app:1{end}".encode())
            proc.stdin.flush()
            first = proc.stdout.read(len(f"{image_id} app:1{end}"))  # blocks unless it streams
            assert first == f"{image_id} app:1{end}".encode()
            proc.stdin.write(f"{image_id[:12]}{end}".encode())
            proc.stdin.close()
            assert proc.stdout.read() == f"{image_id}{end}".encode()
            assert proc.wait(timeout=30) == 0
        finally:
            proc.kill()


def test_a_missing_local_repository_is_named_as_missing(tmp_path):
    missing = str(tmp_path / "nonexistent")
    for args in (["pull", missing, "x"], ["remote", missing], ["show-ref", missing], ["resolve-ref", missing, "x"]):
        out = dogestry(*args, check=False)
        assert out.returncode == 1, args
        assert out.stderr.decode().strip() == f"dogestry: there is no repository at {missing} (no such directory)"
    assert not os.path.exists(missing)  # reading never creates it


def test_positionals_may_follow_options(tmp_path):
    """`dogestry resolve-ref REMOTE -v A B`: words after an option still belong to the command."""
    repo = str(tmp_path / "r")
    os.mkdir(repo)
    out = dogestry("resolve-ref", repo, "-v", "app:1", check=False)
    assert out.returncode == 1 and out.stderr.decode().strip() == f"dogestry: app:1 not found in {repo}"
