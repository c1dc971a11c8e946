"""A small HTTP proxy on loopback that forwards to an S3 server and injects faults.

It forwards requests unchanged (the Host header too, so SigV4 signatures stay valid),
records each (method, path, status), and can answer a matching request with a 503 or
drop the connection mid-response, a given number of times.
"""

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class Fault:
    def __init__(self, method, path_contains, action, times=1):
        self.method, self.path_contains, self.action, self.times = method, path_contains, action, times

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
                if fault and fault.action == "503":
                    proxy._record(self.command, self.path, 503)
                    payload = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault and fault.action == "drop-request":
                    proxy._record(self.command, self.path, "dropped")
                    self.close_connection = True
                    self.connection.close()
                    return
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
                proxy._record(self.command, self.path, response.status)
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                # A HEAD response has no body but announces the object's length.
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
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
