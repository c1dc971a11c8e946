"""Summaries of py-spy's raw (collapsed-stack) profiles and of `python -X importtime`.

A raw profile line is `thread (TID): NAME;frame;frame;... COUNT`, a frame `func (file:line)`.
Samples are the ones py-spy deems active (no --idle), across all threads, so COUNT / rate
approximates CPU seconds; its idle test still counts some blocking waits as active (a lock in
Condition.wait, a socket read waiting for dockerd), so read it beside the benchmark's measured
CPU seconds (rusage). C code (hashing, lz4, socket I/O) is charged to the Python line calling it.
"""

import collections
import re

TOP = 15
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*):(?P<line>\d+)\)$")
# Frames every stack passes through: they say nothing about where the time goes.
_PLUMBING_FILES = ("threading.py", "concurrent/futures/thread.py", "dogestry", "<frozen runpy>")
_PLUMBING_FUNCS = ("main (dogestry/cli.py)", "_main (dogestry/cli.py)")


def _short(path):
    for mark in ("site-packages/", "/lib/python3.11/", "/lib/python3.12/"):
        if mark in path:
            return path.split(mark, 1)[1]
    return path


def _function(frame):
    m = _FRAME.match(frame)
    return f"{m['func']} ({_short(m['file'])})" if m else frame


def _line(frame):
    m = _FRAME.match(frame)
    return f"{m['func']} ({_short(m['file'])}:{m['line']})" if m else frame


def parse(path):
    stacks = []
    with open(path) as f:
        for text in f:
            text = text.rstrip("\n")
            if not text:
                continue
            stack, count = text.rsplit(" ", 1)
            frames = stack.split(";")
            thread = re.sub(r"^thread \(\d+\): ", "", frames[0])
            thread = re.sub(r"-\d+", "", thread)   # Thread-3 (worker) and Thread-7 (worker) are one role
            stacks.append((thread, frames[1:], int(count)))
    return stacks


def report(case, command, path, wall, rate, root=""):
    stacks = parse(path)
    total = sum(c for _, _, c in stacks) or 1
    own_line = collections.Counter()
    own_func = collections.Counter()
    inclusive = collections.Counter()
    threads = collections.Counter()
    importing = 0
    for thread, frames, count in stacks:
        threads[thread] += count
        if frames:
            own_line[_line(frames[-1])] += count
            own_func[_function(frames[-1])] += count
        seen = set()
        for frame in frames:
            name = _function(frame)
            m = _FRAME.match(frame)
            if name in seen or name in _PLUMBING_FUNCS or (m and _short(m["file"]).endswith(_PLUMBING_FILES)):
                continue
            seen.add(name)
            inclusive[name] += count
        if any("_find_and_load" in f for f in frames):
            importing += count

    def pct(n):
        return f"{100 * n / total:5.1f}%"
    lines = [f"== profile {case}: {command}",
             f"wall {wall:.2f} s (py-spy's start included); on-CPU samples {total} = {total / rate:.2f} CPU s of "
             f"dogestry; imports {importing / rate:.2f} CPU s",
             "CPU by thread: " + ", ".join(f"{t} {n / rate:.2f} s" for t, n in threads.most_common()),
             f"top {TOP} by own time (line):"]
    lines += [f"  {pct(n)} {n / rate:6.2f} s  {name}" for name, n in own_line.most_common(TOP)]
    lines.append(f"top {TOP} by own time (function):")
    lines += [f"  {pct(n)} {n / rate:6.2f} s  {name}" for name, n in own_func.most_common(TOP)]
    lines.append(f"top {TOP} by inclusive time (function, thread plumbing left out):")
    lines += [f"  {pct(n)} {n / rate:6.2f} s  {name}" for name, n in inclusive.most_common(TOP)]
    return "\n".join(lines) + "\n"


def import_report(label, stderr, top=12):
    """Top-level imports by cumulative microseconds, from `python -X importtime`'s stderr."""
    rows = []
    for text in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", text)
        if m:
            rows.append((int(m[2]), len(m[3]), m[4]))
    # Depth 1 are the imports the program itself asked for; their cumulative time includes their children.
    first = [r for r in rows if r[1] == 1]
    total = sum(r[0] for r in first)
    lines = [f"== imports of {label}: {total / 1000:.1f} ms in all (top-level imports, cumulative)"]
    lines += [f"  {us / 1000:7.1f} ms  {name}" for us, _, name in sorted(first, reverse=True)[:top]]
    depth2 = sorted((r for r in rows if r[1] <= 3), reverse=True)[:top]
    lines.append(f"  heaviest at any depth <= 3: " + ", ".join(f"{n} {us / 1000:.1f} ms" for us, _, n in depth2))
    return "\n".join(lines) + "\n"
