"""Transfer progress on stderr, for people: one line, redrawn, only on a terminal.

It shows the current layer and its bytes, the total, the rate, an ETA and what was
skipped because the other side already had it; `summary()` is the closing line.
Nothing here ever writes to stdout, which carries only results.
"""

import threading
import time

REDRAW = 0.1  # seconds between redraws


def human(n):
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class Progress:
    def __init__(self, stream, enabled, verb):
        self.stream, self.enabled, self.verb = stream, enabled, verb
        self.total = None
        self.done = 0
        self.moved_layers = self.moved_bytes = 0
        self.skipped_layers = self.skipped_bytes = 0
        self.layer_label, self.layer_size, self.layer_done = "", None, 0
        self.layer_index = 0
        self.started = time.monotonic()
        self._drawn = 0.0
        self._visible = False
        self._lock = threading.Lock()

    def set_total(self, total):
        self.total = total

    def layer(self, label, size=None):
        """A layer starts moving."""
        with self._lock:
            self.layer_index += 1
            self.layer_label, self.layer_size, self.layer_done = label, size, 0
            self.moved_layers += 1
        self._draw(force=True)

    def add(self, n):
        with self._lock:
            self.done += n
            self.layer_done += n
            self.moved_bytes += n
        self._draw()

    def skip(self, label, size=0):
        """A layer the other side already has: counted, not moved."""
        with self._lock:
            self.skipped_layers += 1
            self.skipped_bytes += size or 0
            if self.total is not None:
                self.total = max(self.total - (size or 0), self.done)
        self._draw(force=True)

    def track(self, chunks, label, size=None):
        self.layer(label, size)
        for chunk in chunks:
            self.add(len(chunk))
            yield chunk

    def _line(self):
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / elapsed
        parts = [self.verb]
        if self.layer_label:
            short = self.layer_label.replace("sha256:", "")[:12]
            size = f"/{human(self.layer_size)}" if self.layer_size else ""
            parts.append(f"layer {self.layer_index} {short} {human(self.layer_done)}{size}")
        total = f"/{human(self.total)}" if self.total else ""
        parts.append(f"total {human(self.done)}{total}")
        parts.append(f"{human(rate)}/s")
        if self.total and rate > 0 and self.total > self.done:
            parts.append(f"ETA {int((self.total - self.done) / rate) + 1}s")
        if self.skipped_layers:
            parts.append(f"{self.skipped_layers} skipped ({human(self.skipped_bytes)})")
        return " | ".join(parts)

    def _draw(self, force=False):
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn < REDRAW:
            return
        with self._lock:
            self._drawn = now
            self.stream.write("\r\x1b[K" + self._line())
            self.stream.flush()
            self._visible = True

    def clear(self):
        """Erase the line, so that another message can be printed in its place."""
        if self._visible:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._visible = False

    def summary(self, moved_verb):
        elapsed = time.monotonic() - self.started
        return (f"{moved_verb} {self.moved_layers} layer(s) ({human(self.moved_bytes)}), skipped "
                f"{self.skipped_layers} ({human(self.skipped_bytes)}) in {elapsed:.1f}s")
