"""Threads that overlap the stages of a transfer: reading, hashing, compressing, writing.

hashlib and lz4 release the GIL on large buffers, so on two cores a layer is hashed while
it is compressed while the next chunk is read. Queues are bounded so memory stays at a
few chunks per stage whatever the layer size.
"""

import queue
import threading

_END = object()
DEPTH = 8  # chunks in flight per stage (1 MiB each)


class Stage:
    """A consumer thread fed through a bounded queue; its error surfaces in the producer."""

    def __init__(self, consume, depth=DEPTH, name="dogestry-stage"):
        self._consume = consume
        self._queue = queue.Queue(depth)
        self._error = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if self._error is None:  # after a failure keep draining so the producer never blocks
                try:
                    self._consume(item)
                except BaseException as err:
                    self._error = err

    def put(self, item):
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def close(self):
        """Wait for everything put so far; re-raise the stage's error."""
        self._queue.put(_END)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abandon(self):
        self._queue.put(_END)
        self._thread.join()


def produce(generate, depth=DEPTH, name="dogestry-producer"):
    """Run the generator function `generate` in a thread; yield its items here, in order.

    An exception in the thread is raised here after the items before it.
    """
    q = queue.Queue(depth)
    stop = threading.Event()

    def offer(entry):
        """Put entry unless the consumer has gone: a consumer that stops reading (a client
        hanging up, a range satisfied early) must not leave this thread blocked for ever on
        a full queue, holding its chunks. True when put."""
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def run():
        try:
            for item in generate():
                if not offer(("item", item)):
                    return
            offer(("end", None))
        except BaseException as err:
            offer(("error", err))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "item":
                yield value
            elif kind == "end":
                return
            else:
                raise value
    finally:
        stop.set()
