"""An HTTP proxy in front of the moto S3 server that injects the faults an object store has.

    with FaultyS3(server) as proxy:  # server: s3_server.MotoServer
        proxy.add(Fault("GET", "/bucket/train/", "503", times=1))
        options = proxy.storage_options  # s3fs options that reach moto through the proxy

Faults, applied to requests whose method matches and whose path contains `path_part`,
`times` times each (None: always), to a `fraction` of the matching requests (drawn from a
generator seeded by `seed`, so a run injects the same faults every time):
  "503"   a 503 ServiceUnavailable answer (transient: retried by botocore),
  "500"   a 500 InternalError answer (transient: retried by botocore),
  "cut"   the real answer's headers, then half its body and a closed connection (transient:
          the body is re-requested by s3fs),
  "reset" the connection reset (TCP RST) before any answer (transient: retried by botocore),
  "stall" the real answer after `seconds` of silence (a client whose read timeout is
          shorter gives up and retries),
  "403"   AccessDenied (permanent: must not be retried).
Every request is counted in `requests` by (method, path), and every injected fault in
`injected` by kind, so tests can see retries happen or not.
"""
from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from s3_server import MotoServer

ERROR_XML = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
             "<Resource>{path}</Resource><RequestId>fault</RequestId></Error>")
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "upgrade"}


@dataclass
class Fault:
    method: str
    path_part: str
    kind: str  # "503", "500", "cut", "reset", "stall" or "403"
    times: int | None = 1
    fraction: float = 1.0  # of the matching requests (seeded draw)
    seconds: float = 0.0  # how long a "stall" lasts


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a reset connection is the point
        pass


class FaultyS3:
    """A threaded proxy on 127.0.0.1 forwarding to a moto `server`, injecting `Fault`s."""

    def __init__(self, server: MotoServer):
        self._server_options = server.storage_options
        self.upstream = urlsplit(server.endpoint_url)
        self.requests: Counter[tuple[str, str]] = Counter()
        self.injected: Counter[str] = Counter()
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._random = random.Random(0)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and "Expect: 100-continue" answered here

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _handle

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def storage_options(self) -> dict[str, Any]:
        """s3fs options reaching moto through this proxy (the server's, with the proxy's endpoint)."""
        options = self._server_options
        return {**options, "client_kwargs": {**options["client_kwargs"], "endpoint_url": self.endpoint_url}}

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self, seed: int = 0) -> None:
        """Drop every fault and count; reseed the fraction draws."""
        with self._lock:
            self._faults.clear()
            self.requests.clear()
            self.injected.clear()
            self._random = random.Random(seed)

    def count(self, method: str, path_part: str) -> int:
        """Requests seen with `method` whose path contains `path_part`."""
        with self._lock:
            return sum(n for (m, p), n in self.requests.items() if m == method and path_part in p)

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.requests[(method, path.split("?")[0])] += 1
            for fault in self._faults:
                if fault.method == method and fault.path_part in path and fault.times != 0:
                    if fault.fraction < 1.0 and self._random.random() >= fault.fraction:
                        continue
                    if fault.times is not None:
                        fault.times -= 1
                    self.injected[fault.kind] += 1
                    return fault
        return None

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        method, path = handler.command, handler.path
        body = _request_body(handler)
        chosen = self._fault_for(method, path)
        fault = chosen.kind if chosen else None
        if fault == "reset":
            handler.close_connection = True
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.connection.close()  # RST: the client sees "connection reset by peer"
            return
        if fault == "stall":
            time.sleep(chosen.seconds)
        if fault in ("503", "500", "403"):
            code, message = {"503": ("ServiceUnavailable", "Service is unavailable."),
                             "500": ("InternalError", "We encountered an internal error. Please try again."),
                             "403": ("AccessDenied", "Access Denied")}[fault]
            payload = ERROR_XML.format(code=code, message=message, path=path.split("?")[0]).encode()
            handler.send_response(int(fault))
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            if method != "HEAD":
                handler.wfile.write(payload)
            return
        status, headers, data = self._forward(method, path, handler.headers, body)
        handler.send_response(status)
        for name, value in headers:
            if name.lower() not in HOP_HEADERS and name.lower() != "content-length":
                handler.send_header(name, value)
        if method == "HEAD":  # no body, but the object's length
            handler.send_header("Content-Length", dict((k.lower(), v) for k, v in headers).get("content-length", "0"))
            handler.end_headers()
            return
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if fault == "cut":
            handler.wfile.write(data[: len(data) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(2)  # the connection drops mid-body
            return
        handler.wfile.write(data)

    def _forward(self, method: str, path: str, headers, body: bytes):
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            forwarded = {k: v for k, v in headers.items() if k.lower() not in HOP_HEADERS}
            connection.request(method, path, body=body or None, headers=forwarded)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def __enter__(self) -> "FaultyS3":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _request_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request's body, whether sized by Content-Length or sent in HTTP chunks."""
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        parts = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(parts)
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""
