"""The set-up scripts on the machines a user meets: a fresh Debian whose python3 refuses pip
(PEP 668), test servers beside someone else's, and a deploy host with nothing but python3.

Fresh Debian roots are debootstrapped once into the CI cache (like scripts/engines' chroot)
and only ever used through an overlay, so a test never changes the cache.
"""

import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
import uuid

import pytest

from conftest import BIN, ENGINES, ROOT, S3_SERVERS, TestEngine

CACHE = os.environ.get("DOGESTRY_CI_CACHE", "/var/cache/dogestry-ci")
MIRROR = "http://deb.debian.org/debian"
# What a plain Debian shell has on PATH: Debian's python3 first, no version manager, no venv.
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run(cmd, check=True, timeout=900, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def plain_env(**extra):
    """The environment of a login shell on stock Debian: no pyenv, no venv, no test variables."""
    keep = {k: v for k, v in os.environ.items()
            if k in ("HOME", "LANG", "TERM", "TMPDIR") or k.startswith("PIP_")}
    return {**keep, "PATH": DEBIAN_PATH, **extra}


def debian_root(suite):
    """A debootstrap --variant=minbase SUITE root with python3 and nothing else, built once."""
    root = os.path.join(CACHE, f"{suite}-python3")
    os.makedirs(CACHE, exist_ok=True)
    with open(os.path.join(CACHE, ".build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(root, "usr/bin/python3")):
            tmp = root + ".tmp"
            run(["rm", "-rf", "--one-file-system", tmp])
            run(["debootstrap", "--variant=minbase", "--include=python3", suite, tmp, MIRROR], timeout=1800)
            run(["rm", "-rf", "--one-file-system", root])
            os.rename(tmp, root)
    return root


class Overlay:
    """A throwaway writable view of a cached root, with proc, dev and the host's DNS and CA
    bundle (the machine may reach PyPI through a TLS proxy), mounted privately."""

    def __init__(self, lower, tmp):
        self.root = os.path.join(tmp, "root")
        for d in ("upper", "work", "root"):
            os.makedirs(os.path.join(tmp, d))
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={lower},upperdir={tmp}/upper,workdir={tmp}/work", self.root])
        run(["mount", "--make-private", self.root])
        run(["mount", "-t", "proc", "proc", f"{self.root}/proc"])
        run(["mount", "--bind", "/dev", f"{self.root}/dev"])
        shutil.copy("/etc/resolv.conf", f"{self.root}/etc/resolv.conf")
        # Apart from the system bundle, which installing ca-certificates there regenerates.
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", f"{self.root}/etc/host-ca-certificates.crt")
        # The host's apt settings (this machine's mirror is a snapshot: Valid-Until is off).
        for name in os.listdir("/etc/apt/apt.conf.d"):
            shutil.copy(f"/etc/apt/apt.conf.d/{name}", f"{self.root}/etc/apt/apt.conf.d/{name}")

    def bind(self, source, target):
        path = self.root + target
        if os.path.isdir(source):
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "a").close()
        run(["mount", "--bind", source, path])

    def run(self, *cmd, check=True, timeout=900):
        env = {"PATH": DEBIAN_PATH, "HOME": "/root", "LANG": "C.UTF-8",
               "PIP_CERT": "/etc/host-ca-certificates.crt"}
        return run(["chroot", self.root, "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), *cmd],
                   check=check, timeout=timeout)

    def close(self):
        run(["umount", "-R", self.root])


@pytest.fixture
def overlay(tmp_path):
    made = []

    def make(lower):
        view = Overlay(lower, str(tmp_path / f"overlay{len(made)}"))
        made.append(view)
        return view

    yield make
    for view in made:
        view.close()


def checkout_copy(dest):
    """The committed and working files of this checkout, without its .venv: a fresh clone."""
    files = run(["git", "-C", ROOT, "ls-files", "-co", "--exclude-standard"]).stdout.split("\n")
    for name in filter(None, files):
        if os.path.exists(os.path.join(ROOT, name)):
            os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(dest, name), follow_symlinks=False)
    return dest


def test_install_step_uses_its_own_venv_with_debians_python_first(tmp_path):
    # Debian's own python3 is the one that refuses pip: prove that is the case being tested.
    assert os.path.exists("/usr/lib/python3.11/EXTERNALLY-MANAGED")
    copy = checkout_copy(str(tmp_path / "checkout"))
    user_bin = tmp_path / "user-bin"
    user_bin.mkdir()
    (user_bin / "dogestry").write_text("#!/bin/sh\necho the user-installed dogestry\n")
    (user_bin / "dogestry").chmod(0o755)
    env = plain_env(PATH=f"{user_bin}:{DEBIAN_PATH}")

    run([f"{copy}/scripts/demo", "--install-only"], env=env, cwd=str(tmp_path))
    run([f"{copy}/scripts/test", "--install-only"], env=env, cwd=str(tmp_path))

    with open(f"{copy}/.venv/pyvenv.cfg") as f:
        assert "home = /usr/bin\n" in f.read()
    assert run([f"{copy}/.venv/bin/dogestry", "--version"]).stdout.startswith("dogestry ")
    run([f"{copy}/.venv/bin/python", "-c", "import moto, pytest"])  # the test extras
    # Nothing went into the system Python, and the user's dogestry is still theirs.
    assert run(["/usr/bin/python3", "-c", "import dogestry"], check=False, cwd="/").returncode != 0
    assert run(["dogestry"], env=env).stdout == "the user-installed dogestry\n"


def test_install_step_on_a_fresh_debian_12_without_venv(overlay):
    """Stock Debian 12 with python3 only: no venv, no pip. scripts/demo --install-only must
    apt-get what it needs and install into the checkout's .venv."""
    view = overlay(debian_root("bookworm"))
    assert view.run("python3", "-c", "import ensurepip", check=False).returncode != 0
    checkout_copy(view.root + "/src/dogestry")
    view.run("/src/dogestry/scripts/demo", "--install-only")
    assert view.run("/src/dogestry/.venv/bin/dogestry", "--version").stdout.startswith("dogestry ")
    assert view.run("python3", "-c", "import dogestry", check=False).returncode != 0


@pytest.fixture(scope="module")
def pyz(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    run([os.path.join(ROOT, "scripts", "build-dist"), str(out)], timeout=1800)
    return str(out / "dogestry.pyz")


@pytest.mark.parametrize("suite", ["bookworm", "trixie"])
def test_pyz_runs_on_a_host_with_only_python3(suite, pyz, overlay, tmp_path):
    name = "d20" if "d20" in ENGINES else next(iter(sorted(ENGINES)), None)
    if name is None:
        pytest.fail("no Docker engine configured: run the tests with scripts/test")
    engine = TestEngine(name, ENGINES[name])
    image = f"dogestry-pyz-{uuid.uuid4().hex[:10]}:1"
    try:
        image_id = engine.import_base(image)
        repo = str(tmp_path / "repo")
        run([sys.executable, BIN, "push", repo, image], env=engine.env())
        engine.rmi(image)

        view = overlay(debian_root(suite))
        assert view.run("python3", "-m", "pip", "--version", check=False).returncode != 0  # no pip there
        # The README's install: one file, executable, on PATH.
        shutil.copy(pyz, view.root + "/usr/local/bin/dogestry")
        os.chmod(view.root + "/usr/local/bin/dogestry", 0o755)
        view.bind(repo, "/srv/images")
        view.bind(ENGINES[name].removeprefix("unix://"), "/run/docker.sock")

        assert view.run("dogestry", "--version").stdout.startswith("dogestry ")
        # No share/man on this host (and no man(1)): help shows the page built into the .pyz.
        assert not os.path.exists(view.root + "/usr/local/share/man/man1/dogestry-pull.1")
        assert ".TH DOGESTRY-PULL 1" in view.run("dogestry", "help", "pull").stdout
        assert ".TH DOGESTRY-REPOSITORY 5" in view.run("dogestry", "help", "repository").stdout
        out = view.run("dogestry", "pull", "/srv/images", image).stdout
        assert image_id in out
        assert engine.inspect(image)["Id"] == image_id
        assert engine.run(image, "cat", "/salt")
    finally:
        engine.cleanup()


def free_port_listener():
    """A stranger's server on a free port: it must never be taken for ours."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def answers(url):
    try:
        urllib.request.urlopen(url, timeout=2)
    except urllib.error.HTTPError:
        pass
    except OSError:
        return False
    return True


def test_s3servers_start_their_own_beside_others_and_stop_only_theirs(tmp_path):
    state = str(tmp_path / "s3")
    env = dict(os.environ, DOGESTRY_S3_STATE=state)
    script = os.path.join(ROOT, "scripts", "s3servers")
    out = run([script, "up"], env=env).stdout.strip()
    try:
        assert out.startswith("DOGESTRY_TEST_S3=")
        ours = dict(item.split("=", 1) for item in out.split("=", 1)[1].split(","))
        assert set(ours) == {"seaweed", "moto"}
        assert not set(ours.values()) & set(S3_SERVERS.values())  # never the suite's servers
        assert all(answers(url + "/") for url in ours.values())
        assert run([script, "up"], env=env).stdout.strip() == out  # idempotent: the same servers
        # weed keeps its sockets and logs in its own TMPDIR under the state, not in /tmp.
        assert any(n.endswith(".sock") for n in os.listdir(os.path.join(state, "seaweed.tmp")))
    finally:
        run([script, "down"], env=env)
    assert not any(answers(url + "/") for url in ours.values())
    assert all(answers(url + "/") for url in S3_SERVERS.values())  # the suite's still serve
    assert not os.path.exists(state)


def test_s3servers_never_adopt_a_pidfile_that_is_not_theirs(tmp_path):
    state = tmp_path / "s3"
    state.mkdir()
    stranger = subprocess.Popen(["sleep", "300"])
    try:
        # A live pid in the pidfile is not enough: it must be the server started in that state.
        (state / "moto.pid").write_text(f"{stranger.pid}\n")
        (state / "moto.port").write_text("1\n")
        env = dict(os.environ, DOGESTRY_S3_STATE=str(state))
        script = os.path.join(ROOT, "scripts", "s3servers")
        try:
            out = run([script, "up"], env=env).stdout
            assert "moto=http://127.0.0.1:1," not in out + ","
        finally:
            run([script, "down"], env=env)
        assert stranger.poll() is None  # down left the stranger alone
    finally:
        stranger.kill()
        stranger.wait()


def test_engines_refuse_a_socket_they_did_not_start(tmp_path):
    name, host = next(iter(sorted(ENGINES.items())), (None, None))
    if name is None:
        pytest.fail("no Docker engine configured: run the tests with scripts/test")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # Someone else's daemon answers on the socket this state would use.
    os.symlink(host.removeprefix("unix://"), run_dir / f"{name}.sock")
    env = dict(os.environ, DOGESTRY_ENGINES=name, DOGESTRY_TEST_STATE=str(tmp_path / "state"),
               DOGESTRY_TEST_RUN=str(run_dir))
    proc = run([os.path.join(ROOT, "scripts", "engines"), "up"], env=env, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith("is served by a daemon this script did not start; stop it or set "
                                        "DOGESTRY_TEST_RUN to another directory")
    assert "DOGESTRY_TEST_ENGINES" not in proc.stdout
    run([os.path.join(ROOT, "scripts", "engines"), "down"], env=env)
    TestEngine(name, host).api.version()  # down did not touch it


def demo(*args, env):
    return run([os.path.join(ROOT, "scripts", "demo"), *args], env=env, check=False, timeout=600)


def assert_demo_left_nothing(output):
    # Its temporary repository and private engine directories, named in what it printed.
    for path in set(re.findall(r"(/(?:tmp|run)/dogestry-demo\.[A-Za-z0-9]+)", output)):
        assert not os.path.exists(path), path
        with open("/proc/mounts") as f:
            assert path not in f.read()
        assert run(["pgrep", "-f", path], check=False).returncode == 1, f"a process of {path} is alive"


def test_demo_on_a_private_engine_says_so_and_leaves_nothing():
    env = dict(os.environ, DOCKER_HOST="unix:///nonexistent/docker.sock")
    proc = demo(env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "demo: no reachable Docker engine: started a private one at unix:///run/dogestry-demo." in proc.stderr
    assert "hello from dogestry" in proc.stdout
    assert "demo: stopped the private engine" in proc.stderr
    assert not any(line.startswith("+") for line in out.splitlines())  # no shell trace
    assert_demo_left_nothing(out)

    # A failing step cleans up just the same.
    proc = demo("/proc/no-such-repository", env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "dogestry: " in proc.stderr and "demo: stopped the private engine" in proc.stderr
    assert_demo_left_nothing(out)


def test_demo_on_the_engine_it_finds_removes_its_image():
    name, host = next(iter(sorted(ENGINES.items())), (None, None))
    if name is None:
        pytest.fail("no Docker engine configured: run the tests with scripts/test")
    proc = demo(env=dict(os.environ, DOCKER_HOST=host))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"demo: using the Docker engine at {host} (Docker " in proc.stderr
    assert "hello from dogestry" in proc.stdout
    assert TestEngine(name, host).inspect("dogestry-demo:1") is None
    assert_demo_left_nothing(out)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), ROOT], timeout=600)
    (found,) = out.glob("dogestry-*.whl")
    return str(found)


def test_help_finds_the_pages_of_a_venv_install_and_falls_back_to_the_packaged_copy(wheel, tmp_path):
    # Debian's python3: its prefix (/usr) holds no dogestry pages, so only the install's count.
    venv = tmp_path / "venv"
    run(["/usr/bin/python3", "-m", "venv", str(venv)])
    run([f"{venv}/bin/pip", "install", "-q", "--no-deps", wheel])
    assert (venv / "share/man/man1/dogestry-tag.1").is_file()
    assert "DOGESTRY-TAG(1)" in run([f"{venv}/bin/dogestry", "help", "tag"], env=plain_env()).stdout
    shutil.rmtree(venv / "share/man")  # an install whose data files went elsewhere
    assert "DOGESTRY-TAG(1)" in run([f"{venv}/bin/dogestry", "help", "tag"], env=plain_env()).stdout
    out = run([f"{venv}/bin/dogestry", "help", "dogestry.cfg"], env=plain_env()).stdout
    assert "DOGESTRY.CFG(5)" in out


def test_help_finds_the_pages_of_a_pip_user_install(wheel, tmp_path):
    base = tmp_path / "userbase"
    env = plain_env(PYTHONUSERBASE=str(base))
    # Debian's pip refuses --user too (PEP 668) unless told: only into this throwaway base.
    run(["/usr/bin/python3", "-m", "pip", "install", "-q", "--user", "--break-system-packages", "--no-deps",
         wheel], env=env)
    assert (base / "share/man/man1/dogestry-pull.1").is_file()
    assert (base / "share/man/man5/dogestry-repository.5").is_file()
    out = run([str(base / "bin/dogestry"), "help", "pull"], env=env).stdout
    assert "DOGESTRY-PULL(1)" in out
    # That it was this base's page, not the copy inside the package:
    os.unlink(base / "share/man/man1/dogestry-pull.1")
    (base / "share/man/man1/dogestry-pull.1").write_text('.TH MARKER-PAGE 1\n.SH NAME\nmarker \\- page\n')
    assert "MARKER-PAGE(1)" in run([str(base / "bin/dogestry"), "help", "pull"], env=env).stdout


def test_pipx_install_links_the_man_pages(wheel, tmp_path):
    tools = tmp_path / "tools"
    run([sys.executable, "-m", "venv", str(tools)])
    run([f"{tools}/bin/pip", "install", "-q", "pipx>=1.5"], timeout=600)
    dirs = {k: str(tmp_path / k.lower()) for k in ("PIPX_HOME", "PIPX_BIN_DIR", "PIPX_MAN_DIR")}
    env = plain_env(**dirs)
    run([f"{tools}/bin/pipx", "install", "--python", "/usr/bin/python3", wheel], env=env, timeout=900)
    assert run([os.path.join(dirs["PIPX_BIN_DIR"], "dogestry"), "--version"], env=env).stdout.startswith("dogestry ")
    pages = os.listdir(os.path.join(dirs["PIPX_MAN_DIR"], "man1"))
    assert {"dogestry.1", "dogestry-pull.1", "dogestry-push.1"} <= set(pages)
    assert "dogestry.cfg.5" in os.listdir(os.path.join(dirs["PIPX_MAN_DIR"], "man5"))
    out = run(["man", "-M", dirs["PIPX_MAN_DIR"], "dogestry-pull"], env=dict(env, MANPAGER="cat")).stdout
    assert "DOGESTRY-PULL(1)" in out
