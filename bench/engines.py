"""The benchmark's own services: a private dockerd, Debian's docker-registry and SeaweedFS.

Each runs under the benchmark's own directories (/var/lib/dogestry-bench, /run/dogestry-bench)
on a socket or loopback ports it picked itself, so it never shares a service with the test
suite or anything else on the machine, and it stops exactly the processes it started.

Engines:
  d20    Debian 12's docker.io (20.10), graphdriver overlay2 or vfs
  d26    Debian 13's docker.io (26.x) from the CI chroot, graphdriver overlay2 or vfs
  d26c   the same binary with the containerd image store, snapshotter overlayfs (for
         --storage-driver overlay2) or native (for vfs)
"""

import json
import os
import signal
import socket
import subprocess
import time

STATE = "/var/lib/dogestry-bench"
RUN = "/run/dogestry-bench"
CHROOT = os.environ.get("DOGESTRY_CI_CACHE", "/var/cache/dogestry-ci") + "/trixie"
COMMON = ["--iptables=false", "--ip-masq=false", "--bridge=none"]


class ServiceError(SystemExit):
    pass


def free_port():
    """A loopback port nobody listens on now; the caller checks its server really got it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what, ready, proc, log, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"bench: {what} exited ({proc.returncode}); see {log}")
        if ready():
            return
        time.sleep(0.3)
    raise ServiceError(f"bench: {what} did not come up in {seconds} s; see {log}")


def _listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True
    except OSError:
        return False


def _stop(proc, seconds=60):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Engine:
    def __init__(self, kind, driver, suffix=""):
        if kind not in ("d20", "d26", "d26c"):
            raise ServiceError(f"bench: unknown engine {kind}")
        self.kind, self.driver = kind, driver
        # A suffix gives a second engine of the same kind its own socket and data (P16).
        self.name = f"{kind}-{driver}{suffix}"
        self.sock = f"{RUN}/{self.name}.sock"
        self.host = f"unix://{self.sock}"
        self.log = f"{STATE}/{self.name}.log"
        self.proc = None

    def reachable(self):
        return subprocess.run(["docker", "-H", self.host, "version"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0

    def _dockerd_args(self, data, exec_root, config):
        if self.kind == "d26c":
            driver = {"overlay2": "overlayfs", "vfs": "native"}[self.driver]
        else:
            driver = self.driver
        return ["dockerd", "--data-root", data, "--exec-root", exec_root, "--host", self.host,
                "--pidfile", f"{RUN}/{self.name}.pid", "--config-file", config, *COMMON,
                f"--storage-driver={driver}"]

    def start(self):
        os.makedirs(STATE, exist_ok=True)
        os.makedirs(RUN, exist_ok=True)
        # As the host sees it (the disk-use case measures it with du).
        self.data_root = f"{CHROOT if self.kind != 'd20' else ''}{STATE}/{self.name}/data"
        if self.reachable():   # left by an interrupted run of this benchmark: same dirs, ours
            return
        features = {"features": {"containerd-snapshotter": self.kind == "d26c"}}
        if self.kind == "d20":
            config = f"{STATE}/{self.name}.json"
            with open(config, "w") as f:
                json.dump(features, f)
            data = f"{STATE}/{self.name}/data"
            os.makedirs(data, exist_ok=True)
            cmd = self._dockerd_args(data, f"{RUN}/{self.name}.exec", config)
        else:
            if not os.access(f"{CHROOT}/usr/sbin/dockerd", os.X_OK):
                raise ServiceError(f"bench: no Docker 26 chroot at {CHROOT}; run scripts/engines up once to build it")
            os.makedirs(f"{CHROOT}/etc/dogestry-bench", exist_ok=True)
            config = f"/etc/dogestry-bench/{self.name}.json"
            with open(CHROOT + config, "w") as f:
                json.dump(features, f)
            data = f"{STATE}/{self.name}/data"   # inside the chroot: on the same ext4 as the host's
            os.makedirs(CHROOT + data, exist_ok=True)
            args = " ".join(self._dockerd_args(data, f"{RUN}/{self.name}.exec", config))
            # The chroot's mounts live in a private mount namespace of this dockerd alone:
            # they vanish with it, so the mounts the shared test engines made are never
            # touched and nothing of ours is left behind. dockerd needs the chroot's / to be
            # a mount point ("remount /, flags: 0x84000: invalid argument" otherwise).
            script = (f"set -e; R={CHROOT}; mountpoint -q $R || mount --bind $R $R; "
                      "mountpoint -q $R/proc || mount -t proc proc $R/proc; "
                      "mountpoint -q $R/sys || mount --rbind /sys $R/sys; "
                      "mountpoint -q $R/dev || mount --rbind /dev $R/dev; "
                      f"mkdir -p $R{RUN}; mount --bind {RUN} $R{RUN}; exec chroot $R {args}")
            cmd = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        _wait(f"engine {self.name}", self.reachable, self.proc, self.log)

    def stop(self):
        _stop(self.proc)


class Registry:
    """Debian's docker-registry on a free loopback port, storage under WORK."""

    def __init__(self, work):
        self.work, self.proc = work, None

    def start(self):
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        root = os.path.join(self.work, "registry")
        subprocess.run(["rm", "-rf", root], check=True)
        os.makedirs(root)
        config = os.path.join(self.work, "registry.yml")
        with open(config, "w") as f:
            f.write(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n"
                    f"http:\n  addr: {self.addr}\n")
        log = os.path.join(self.work, "registry.log")
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(["docker-registry", "serve", config], stdout=out, stderr=out,
                                         start_new_session=True)
        # Listening while our process lives means the port is ours: had someone else taken
        # it in between, docker-registry would have exited on "address already in use".
        _wait(f"docker-registry on {self.addr}", lambda: _listening(self.port), self.proc, log)
        time.sleep(0.3)
        if self.proc.poll() is not None:
            raise ServiceError(f"bench: docker-registry on {self.addr} exited; see {log}")

    def stop(self):
        _stop(self.proc)


class SeaweedFS:
    """`weed mini` with every port it opens picked free, data under WORK."""

    PORTS = ["admin.port", "admin.port.grpc", "debug.port", "filer.port", "filer.port.grpc", "master.port",
             "master.port.grpc", "metricsPort", "s3.debug.port", "s3.metricsPort", "s3.port", "s3.port.grpc",
             "s3.port.iceberg", "volume.port", "volume.port.grpc", "webdav.port"]
    ENV = {"AWS_ACCESS_KEY_ID": "admin", "AWS_SECRET_ACCESS_KEY": "adminsecret", "AWS_DEFAULT_REGION": "us-east-1"}

    def __init__(self, work, weed):
        self.work, self.weed, self.proc = work, weed, None

    def start(self):
        ports = {}
        while len(set(ports.values())) < len(self.PORTS):
            ports = {name: free_port() for name in self.PORTS}
        self.port = ports["s3.port"]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        data = os.path.join(self.work, "seaweed")
        subprocess.run(["rm", "-rf", data], check=True)
        os.makedirs(data)
        log = os.path.join(self.work, "seaweed.log")
        cmd = [self.weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false",
               *[f"-{name}={port}" for name, port in ports.items()]]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True,
                                         env=dict(os.environ, **self.ENV))
        _wait(f"SeaweedFS S3 on {self.endpoint}", lambda: _listening(self.port), self.proc, log, seconds=120)
        time.sleep(2)   # the S3 gateway listens before the filer behind it is ready

    def stop(self):
        # weed mini runs its servers in one process; its session holds nothing else.
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
