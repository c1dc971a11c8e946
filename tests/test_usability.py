"""What a person at a shell sees: completion, the progress line, clean stdout."""

import os
import pty
import select
import subprocess
import sys

from conftest import BIN, dogestry


def complete(line, tmp_path, env=None):
    out = tmp_path / "completions"
    env = dict(env or os.environ, COMP_LINE=line, COMP_POINT=str(len(line)), _ARGCOMPLETE="1",
               _ARGCOMPLETE_SHELL="bash", _ARGCOMPLETE_STDOUT_FILENAME=str(out))
    subprocess.run([sys.executable, BIN], env=env, check=True, timeout=20)
    return set(out.read_text().replace("\x0b", "\n").split())


def test_completion_of_commands_options_and_aliases(tmp_path):
    cfg = tmp_path / "dogestry.cfg"
    cfg.write_text('[remote "central"]\n  url = /srv/x\n[remote "backup"]\n  url = /srv/y\n')
    env = dict(os.environ, DOGESTRY_CONFIG=str(cfg))
    assert complete("dogestry pu", tmp_path, env) == {"push", "pull"}
    assert {"save-to-repo", "show-ref", "sync-objects"} <= complete("dogestry s", tmp_path, env)
    assert "--missing-in-docker" in complete("dogestry build-load-tar --mis", tmp_path, env)
    assert complete("dogestry pull cen", tmp_path, env) == {"central"}
    assert {"central", "backup"} <= complete("dogestry show-ref ", tmp_path, env)
    assert complete("dogestry help re", tmp_path, env) == {"remote", "repository", "resolve-ref"}
    assert complete("dogestry pull -v cen", tmp_path, env) == {"central"}  # a global option after the command


def test_completion_of_remote_refs_and_engine_images(engine, unique, tmp_path):
    repo = tmp_path / "repo"
    engine.import_base(f"t{unique}/base:1")
    dogestry("push", str(repo), f"t{unique}/base:1", env=engine.env())
    assert complete(f"dogestry pull {repo} t{unique}", tmp_path, engine.env()) == {f"t{unique}/base:1"}
    assert complete(f"dogestry push {repo} t{unique}", tmp_path, engine.env()) == {f"t{unique}/base:1"}
    # An unreachable engine offers nothing rather than hanging or failing.
    dead = dict(engine.env(), DOCKER_HOST=f"unix://{tmp_path}/none.sock")
    assert complete(f"dogestry push {repo} t{unique}", tmp_path, dead) == set()


def test_completion_prints_shell_code():
    for shell in ("bash", "zsh", "fish"):
        out = dogestry("completion", shell).stdout.decode()
        assert "dogestry" in out and len(out) > 100


def run_on_terminal(args, env):
    """Run bin/dogestry with stderr on a pseudo-terminal and stdout on a pipe."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, BIN, *args], stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    screen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        screen += data
    stdout = proc.stdout.read()
    assert proc.wait(timeout=60) == 0, screen.decode(errors="replace")
    os.close(master)
    return stdout.decode(), screen.decode(errors="replace")


def test_progress_on_a_terminal_and_clean_stdout(engine, unique, tmp_path):
    repo = str(tmp_path / "repo")
    engine.import_base(f"t{unique}/base:1")
    engine.build(f"t{unique}/app:1", f"t{unique}/base:1", {"hello.txt": "x\n"}, big=8 << 20)
    stdout, screen = run_on_terminal(["push", repo, f"t{unique}/app:1"], engine.env())
    assert stdout.split()[1:] == [f"t{unique}/app:1"]            # results only on stdout
    assert "push | layer" in screen and "total" in screen and "/s" in screen
    assert "pushed 1 image(s)" in screen and "stored 4 layer(s)" in screen

    stdout, screen = run_on_terminal(["push", repo, f"t{unique}/app:1"], engine.env())
    assert "stored 0 layer(s)" in screen and "skipped 4" in screen

    engine.rmi(f"t{unique}/app:1")
    stdout, screen = run_on_terminal(["pull", repo, f"t{unique}/app:1"], engine.env())
    assert "pull | layer" in screen and "total" in screen
    if engine.containerd:  # documented: that store gets every layer of an image it lacks
        assert "loaded 4 layer(s)" in screen and "skipped 0" in screen
    else:
        assert "loaded 3 layer(s)" in screen and "skipped 1" in screen   # the base stayed in the engine

    engine.rmi(f"t{unique}/app:1")
    stdout, screen = run_on_terminal(["-q", "pull", repo, f"t{unique}/app:1"], engine.env())
    assert screen.strip() == "" and stdout.split()[1:] == [f"t{unique}/app:1"]


def test_no_progress_when_stderr_is_not_a_terminal(engine, unique, tmp_path):
    engine.import_base(f"t{unique}/base:1")
    out = dogestry("push", str(tmp_path / "repo"), f"t{unique}/base:1", env=engine.env())
    assert b"\r" not in out.stderr and b"\x1b[" not in out.stderr
    assert out.stderr.decode().startswith("pushed 1 image(s)")
    verbose = dogestry("-v", "push", str(tmp_path / "repo"), f"t{unique}/base:1", env=engine.env())
    assert b"skipped" in verbose.stderr and b"\x1b[" not in verbose.stderr
