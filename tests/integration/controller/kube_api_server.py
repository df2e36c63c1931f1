"""A real HTTP server replaying a recorded Kubernetes API: lists, then watch streams, step by step.

What it serves is the recording in ``kube_api_recording/`` (list bodies and watch event lines in
the API's documented shapes), with the API server's list/watch rules:

* ``GET <collection>?limit=N[&continue=T]``: pages of a consistent snapshot; ``metadata.continue``
  names the next page, ``metadata.resourceVersion`` is the snapshot's version.
* ``GET <collection>?watch=1&resourceVersion=R[&allowWatchBookmarks=true][&timeoutSeconds=S]``: a
  chunked stream of ``{"type", "object"}`` lines for every event after R, then new ones as the
  test plays them; BOOKMARK lines only when the client asked for them; the stream ends after S
  seconds. A version older than the compaction point gets 200 + one ERROR event carrying a
  Status with code 410 (``Expired``, "too old resource version"), as the API server answers.
* A bearer token is required (401 Status otherwise).

The test drives it: :meth:`play` appends a recorded step's events, :meth:`silently` changes state
with no event and compacts (what a client that was disconnected meanwhile cannot see except by
relisting), :meth:`drop_watches` ends every open stream. Every request is logged for assertions.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

RECORDING = Path(__file__).parent / "kube_api_recording"
PATHS = {
    "/api/v1/namespaces": "namespaces",
    "/api/v1/pods": "pods",
    "/api/v1/nodes": "nodes",
    "/apis/networking.k8s.io/v1/networkpolicies": "networkpolicies",
}
KINDS = {"namespaces": ("Namespace", "v1"), "pods": ("Pod", "v1"), "nodes": ("Node", "v1"),
         "networkpolicies": ("NetworkPolicy", "networking.k8s.io/v1")}


def _key(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


class RecordedKubeAPI:
    def __init__(self, token: str, recording: Path = RECORDING) -> None:
        self.token = token
        self.lock = threading.Condition()
        self.state: dict[str, dict[str, dict[str, Any]]] = {}
        self.list_meta: dict[str, dict[str, Any]] = {}
        self.rv = 0
        for res in KINDS:
            doc = json.loads((recording / f"{res}.list.json").read_text())
            self.state[res] = {_key(o): o for o in doc["items"]}
            self.list_meta[res] = {"kind": doc["kind"], "apiVersion": doc["apiVersion"]}
            self.rv = max(self.rv, int(doc["metadata"]["resourceVersion"]))
        self.steps: dict[str, list[dict[str, Any]]] = {}
        for line in (recording / "watch.jsonl").read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                self.steps.setdefault(rec["step"], []).append(rec)
        #: (resource, rv, event line) in order
        self.events: list[tuple[str, int, bytes]] = []
        self.compacted = 0
        self.generation = 0  # bumped by drop_watches
        self.requests: list[dict[str, Any]] = []
        self.snapshots: dict[str, list[dict[str, Any]]] = {}
        self.open_watches = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="kube-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> RecordedKubeAPI:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.drop_watches()
        self.server.shutdown()
        self.server.server_close()

    # -- what the test does ---------------------------------------------------------------
    def play(self, step: str) -> None:
        """Append one recorded step's watch events (state follows them)."""
        with self.lock:
            for rec in self.steps[step]:
                obj = rec["object"]
                rv = int(obj["metadata"]["resourceVersion"])
                if rec["type"] == "ADDED" or rec["type"] == "MODIFIED":
                    self.state[rec["resource"]][_key(obj)] = obj
                elif rec["type"] == "DELETED":
                    self.state[rec["resource"]].pop(_key(obj), None)
                self.rv = max(self.rv, rv)
                line = json.dumps({"type": rec["type"], "object": obj}, separators=(",", ":")).encode() + b"\n"
                self.events.append((rec["resource"], rv, line))
            self.lock.notify_all()

    def silently(self, resource: str, delete: str) -> None:
        """Delete an object with no event a client could still get, and compact the history: a watch
        from any earlier version gets 410 Gone. Open watches are dropped (as an API server restart)."""
        with self.lock:
            self.state[resource].pop(delete)
            self.rv += 100
            self.compacted = self.rv
            self.events = [e for e in self.events if e[1] > self.compacted]
        self.drop_watches()

    def drop_watches(self) -> None:
        with self.lock:
            self.generation += 1
            self.lock.notify_all()

    def watch_requests(self, resource: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["resource"] == resource and r.get("watch")]

    def list_requests(self, resource: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["resource"] == resource and not r.get("watch")]

    # -- the HTTP side --------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(parts.query).items()}
                res = PATHS.get(parts.path)
                if self.headers.get("Authorization") != f"Bearer {api.token}":
                    return self._status(401, "Unauthorized", "Unauthorized")
                if res is None:
                    return self._status(404, "NotFound", f"the server could not find the requested resource {res}")
                with api.lock:
                    api.requests.append({"resource": res, **q})
                if q.get("watch") in ("1", "true"):
                    return self._watch(res, q)
                return self._list(res, q)

            def _send_json(self, code: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send_json(code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                       "message": message, "reason": reason, "code": code})

            def _list(self, res: str, q: dict[str, str]) -> None:
                limit = int(q.get("limit") or 0)
                with api.lock:
                    if q.get("continue"):
                        token = q["continue"]
                        if token not in api.snapshots or not token.startswith(f"{res}:"):
                            return self._status(400, "BadRequest", "continue token does not belong to this list")
                        _, snap_rv, offset = token.split(":")
                        items = api.snapshots[token]
                        start = int(offset)
                    else:
                        snap_rv = str(api.rv)
                        items = [copy.deepcopy(o) for _, o in sorted(api.state[res].items())]
                        start = 0
                page = items[start:start + limit] if limit else items[start:]
                meta: dict[str, Any] = {"resourceVersion": snap_rv}
                if limit and start + limit < len(items):
                    token = f"{res}:{snap_rv}:{start + limit}"
                    with api.lock:
                        api.snapshots[token] = items
                    meta["continue"] = token
                    meta["remainingItemCount"] = len(items) - start - limit
                self._send_json(200, {**api.list_meta[res], "metadata": meta, "items": page})

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _watch(self, res: str, q: dict[str, str]) -> None:
                since = int(q.get("resourceVersion") or 0)
                bookmarks = q.get("allowWatchBookmarks") == "true"
                deadline = time.monotonic() + float(q.get("timeoutSeconds") or 1800)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    with api.lock:
                        api.open_watches += 1
                        generation = api.generation
                        if since < api.compacted:
                            status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                      "message": f"too old resource version: {since} ({api.compacted})",
                                      "reason": "Expired", "code": 410}
                            self._chunk(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
                            self._chunk(b"")
                            return
                        sent = since
                        while True:
                            for r, rv, line in api.events:
                                if r != res or rv <= sent:
                                    continue
                                if b'"BOOKMARK"' in line[:20] and not bookmarks:
                                    continue
                                self._chunk(line)
                                sent = rv
                            remaining = deadline - time.monotonic()
                            if remaining <= 0 or api.generation != generation:
                                break
                            api.lock.wait(min(remaining, 0.5))
                    self._chunk(b"")
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with api.lock:
                        api.open_watches -= 1
                    self.close_connection = True

        return Handler
