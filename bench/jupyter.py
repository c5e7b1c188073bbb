"""A JupyterLab client as JupyterLab's own runs code, for the resume benchmark: REST to create a
session (and with it a kernel), then an ``execute_request`` on the kernel's channels WebSocket,
through the hub's proxy with the user's session cookie. Blocking sockets, wsproto; no browser.
"""

from __future__ import annotations

import json
import socket
import uuid

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage

from bench.clients import Endpoint

XSRF = "hubbench"  # tornado takes an unversioned cookie as a raw token; the header echoes it


class JupyterError(RuntimeError):
    pass


def _headers(ep: Endpoint) -> list[tuple[str, str]]:
    cookie = f"_xsrf={XSRF}" + (f"; {ep.cookie}" if ep.cookie else "")
    return [("Cookie", cookie), ("X-XSRFToken", XSRF)]


def request_json(ep: Endpoint, method: str, path: str, body: dict | None = None) -> dict:
    """One HTTP/1.1 request through the proxy; the answer's JSON (JupyterError unless 2xx)."""
    data = json.dumps(body).encode() if body is not None else b""
    head = [f"{method} {path} HTTP/1.1", f"Host: {ep.host_header}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in _headers(ep)]
    head += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    with socket.create_connection((ep.host, ep.port), timeout=60) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    status_line, _, rest = raw.partition(b"\r\n")
    headers, _, payload = rest.partition(b"\r\n\r\n")
    status = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
    if b"transfer-encoding: chunked" in headers.lower():
        payload = _dechunk(payload)
    if not 200 <= status < 300:
        raise JupyterError(f"{method} {path}: {status} {payload[:300]!r}")
    return json.loads(payload) if payload else {}


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def new_kernel(ep: Endpoint) -> str:
    """A notebook session with a python3 kernel, as JupyterLab opens one; the kernel's ID."""
    body = {"path": "bench.ipynb", "name": "bench.ipynb", "type": "notebook",
            "kernel": {"name": "python3"}}  # fmt: skip
    return request_json(ep, "POST", "/api/sessions", body)["kernel"]["id"]


def execute(ep: Endpoint, kernel: str, code: str, timeout: float = 60) -> str:
    """Run ``code`` in ``kernel`` over its channels WebSocket; its stdout (JupyterError on an
    error reply). Returns once the reply and the kernel's "idle" for it have both arrived."""
    session = uuid.uuid4().hex
    path = f"/api/kernels/{kernel}/channels?session_id={session}"
    sock = socket.create_connection((ep.host, ep.port), timeout=timeout)
    ws = WSConnection(ConnectionType.CLIENT)
    try:
        sock.sendall(ws.send(Request(host=ep.host_header, target=path, extra_headers=_headers(ep))))
        msg_id = uuid.uuid4().hex
        message = {
            "header": {"msg_id": msg_id, "username": "bench", "session": session,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        }  # fmt: skip
        output, reply, idle, text = "", None, False, ""
        while reply is None or not idle:
            data = sock.recv(65536)
            if not data:
                raise JupyterError(f"the kernel WebSocket {path} closed")
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    sock.sendall(ws.send(TextMessage(json.dumps(message))))
                elif isinstance(event, Ping):
                    sock.sendall(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    raise JupyterError(f"the kernel WebSocket closed: {event.code} {event.reason}")
                elif isinstance(event, TextMessage):
                    text += event.data
                    if not event.message_finished:
                        continue
                    m, text = json.loads(text), ""
                    if (m.get("parent_header") or {}).get("msg_id") != msg_id:
                        continue
                    kind, content = m.get("msg_type"), m.get("content", {})
                    if kind == "stream":
                        output += content.get("text", "")
                    elif kind == "error":
                        output += f"{content.get('ename')}: {content.get('evalue')}"
                    elif kind == "execute_reply":
                        reply = content.get("status")
                    elif kind == "status" and content.get("execution_state") == "idle":
                        idle = True
                elif not isinstance(event, AcceptConnection):
                    raise JupyterError(f"WebSocket upgrade of {path} refused: {event!r}")
        if reply != "ok":
            raise JupyterError(f"execute_request: {reply}: {output}")
        return output
    finally:
        sock.close()
