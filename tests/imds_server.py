"""An EC2 instance metadata service (IMDSv2) stand-in on loopback for tests of
cluster/spot_watcher.py.

    with InstanceMetadata() as metadata:
        metadata.notice = {"action": "terminate", "time": "2026-01-01T12:02:00Z"}   # every instance
        metadata.notices["NODE"] = {...}   # only the instance whose base URL is metadata.url + "/NODE"

It answers the requests the watcher makes, as AWS documents them: PUT /latest/api/token
(with a TTL header) gives a session token; GET /latest/meta-data/... needs it (401 without
or with an expired one); the spot instance-action document is 404 until an interruption is
scheduled. A first path segment before /latest/ names an instance, so one server stands in
for the metadata service of several rehearsal nodes (tools/local_cluster.py --imds).
"""
from __future__ import annotations

import http.server
import json
import sys
import threading
import time


class InstanceMetadata(http.server.ThreadingHTTPServer):
    """The server (a daemon thread); `url`, `notice`, `notices`, `local_ipv4`, `requests`
    (method, path, status) and `expire_tokens()`."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _MetadataHandler)
        self.tokens: set[str] = set()
        self.notice: dict | None = None
        self.notices: dict[str, dict] = {}
        self.local_ipv4 = "127.0.0.1"
        self.requests: list[tuple[str, str, int]] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def polled_by(self, instance: str) -> bool:
        """Whether the instance's watcher has asked for its interruption notice."""
        return any(path == f"/{instance}/latest/meta-data/spot/instance-action" for _, path, _ in self.requests)

    def handle_error(self, request, client_address) -> None:
        """A client that gave up waiting (its timeout on a busy machine) is no error here."""
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def __enter__(self) -> "InstanceMetadata":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _MetadataHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, code: int, body: str = "") -> None:
        self.server.requests.append((self.command, self.path, code))
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _split(self) -> tuple[str, str]:
        """(instance, path from /latest/ on); instance "" when the path starts at /latest/."""
        head, sep, rest = self.path.partition("/latest/")
        return head.strip("/"), sep + rest

    def do_PUT(self):
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        if self._split()[1] != "/latest/api/token" or not ttl or not 1 <= int(ttl) <= 21600:
            return self._reply(400)
        token = f"token-{len(self.server.tokens)}-{time.monotonic_ns()}"
        self.server.tokens.add(token)
        self._reply(200, token)

    def do_GET(self):
        if self.headers.get("X-aws-ec2-metadata-token") not in self.server.tokens:
            return self._reply(401)
        instance, path = self._split()
        if path == "/latest/meta-data/local-ipv4":
            return self._reply(200, self.server.local_ipv4)
        if path == "/latest/meta-data/spot/instance-action":
            notice = self.server.notices.get(instance) or self.server.notice
            return self._reply(200, json.dumps(notice)) if notice else self._reply(404)
        self._reply(404)
