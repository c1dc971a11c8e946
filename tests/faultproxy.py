"""A small HTTP proxy on loopback that forwards to an S3 server and injects faults.

It forwards requests unchanged (the Host header too, so SigV4 signatures stay valid),
records each (method, path, status), and answers a matching request, a given number of
times, with one of these faults:

    503            SlowDown, as S3 throttles
    500            InternalError
    drop-request   close the connection without an answer
    drop-response  send the headers and half the body, then reset the connection
    stall          wait `delay` seconds, then answer normally
    stall-body     send the headers and half the body, wait `delay` seconds, send the rest
    flip           answer normally but with one byte of the body flipped (damage in transit)
"""

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class Fault:
    ACTIONS = ("503", "500", "drop-request", "drop-response", "stall", "stall-body", "flip", "pass")  # pass: forward as is

    def __init__(self, method, path_contains, action, times=1, delay=0.0):
        assert action in self.ACTIONS, action
        self.method, self.path_contains, self.action, self.times = method, path_contains, action, times
        self.delay = delay

    def matches(self, method, path):
        return self.times > 0 and method == self.method and self.path_contains in path


class FaultProxy:
    def __init__(self, upstream):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.faults = []
        self.log = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy.lock:
                    fault = next((f for f in proxy.faults if f.matches(self.command, self.path)), None)
                    if fault:
                        fault.times -= 1
                if fault and fault.action in ("503", "500"):
                    status = int(fault.action)
                    proxy._record(self.command, self.path, status)
                    code = b"SlowDown" if status == 503 else b"InternalError"
                    payload = b"<Error><Code>" + code + b"</Code><Message>injected</Message></Error>"
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault and fault.action == "drop-request":
                    proxy._record(self.command, self.path, "dropped")
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault and fault.action == "stall":
                    time.sleep(fault.delay)
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items()}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                conn.close()
                if fault and fault.action == "drop-response":
                    proxy._record(self.command, self.path, "dropped")
                    self.send_response(response.status)
                    for key, value in response.getheaders():
                        if key.lower() not in ("transfer-encoding", "connection"):
                            self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault and fault.action == "flip" and data:
                    middle = len(data) // 2
                    data = data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]
                proxy._record(self.command, self.path, fault.action if fault else response.status)
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                # A HEAD response has no body but announces the object's length.
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if fault and fault.action == "stall-body":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    time.sleep(fault.delay)
                    data = data[len(data) // 2:]
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _record(self, method, path, status):
        with self.lock:
            self.log.append((method, path, status))

    def requests(self, method=None, contains=""):
        with self.lock:
            return [entry for entry in self.log if (method is None or entry[0] == method) and contains in entry[1]]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
