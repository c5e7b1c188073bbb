"""HTTP/1.1 as the policy socket reads it: request heads parsed strictly, chunked framing followed
block by block, refusals written as Docker API errors.

Strict on purpose: the daemon and the policy must agree on where each request and body ends, so
anything two parsers could read differently (two lengths, folded lines, a bare CR or LF, an
unknown transfer coding, a chunk size Go would parse otherwise) is refused, never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hubcontrol import dockerpolicy as policy

HEAD_LIMIT = 64 * 1024
LINE_LIMIT = 4096
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "content-length",
        "upgrade",
        "expect",
    }
)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class HttpError(Exception):
    """A malformed request: answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.refusal = policy.Refusal(message, status)


@dataclass
class Head:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    framing: str  # "none", "length" or "chunked"
    length: int = 0

    def get(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    @property
    def wants_upgrade(self) -> bool:
        conn = (self.get("connection") or "").lower()
        return "upgrade" in {t.strip() for t in conn.split(",")} and bool(self.get("upgrade"))


def parse_request_head(raw: bytes) -> Head:
    """Parse a request head strictly: anything ambiguous (two lengths, folded lines, an unknown
    transfer coding) is refused, since the daemon and the policy must agree on where bodies end."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "hub policy refused a request head that is not ASCII") from None
    lines = text.split("\r\n")
    if any(c in line for line in lines for c in "\r\n\x00"):
        # a bare CR or LF is a line break to the daemon: a header we never saw
        raise HttpError(400, "hub policy refused a request head with a bare CR or LF")
    parts = lines[0].split(" ")
    if (
        len(parts) != 3
        or parts[2] not in ("HTTP/1.1", "HTTP/1.0")
        or not parts[0].isalpha()
        or any(ord(c) < 0x21 or ord(c) == 0x7F for c in parts[1])
    ):
        raise HttpError(400, f"hub policy refused a malformed request line {lines[0][:100]!r}")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name):
            raise HttpError(400, f"hub policy refused a malformed header line {line[:100]!r}")
        if any(c in value for c in "\r\n\x00"):
            raise HttpError(400, "hub policy refused a header with control characters")
        headers.append((name, value.strip()))
    head = Head(parts[0], parts[1], parts[2], headers, "none")
    lengths = [v for k, v in headers if k.lower() == "content-length"]
    codings = [v for k, v in headers if k.lower() == "transfer-encoding"]
    if codings:
        if lengths or len(codings) > 1 or codings[0].lower() != "chunked":
            raise HttpError(
                400,
                "hub policy refused an ambiguous body (Transfer-Encoding must be exactly "
                "'chunked', without Content-Length)",
            )
        head.framing = "chunked"
    elif lengths:
        if len(lengths) > 1 or not lengths[0].isdigit():
            raise HttpError(400, "hub policy refused an invalid or repeated Content-Length")
        head.length = int(lengths[0])
        head.framing = "length" if head.length else "none"
    return head


def refusal_response(refusal: policy.Refusal, version: str = "HTTP/1.1") -> bytes:
    body = refusal.body()
    reason = {400: "Bad Request", 403: "Forbidden", 413: "Payload Too Large", 502: "Bad Gateway"}
    return (
        f"{version} {refusal.status} {reason.get(refusal.status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


_CHUNK_SIZE = re.compile(rb"^([0-9a-fA-F]{1,16})[ \t]*(;.*)?$")


class ChunkScanner:
    """Follows HTTP/1.1 chunked framing across blocks, as strictly as Go's reader: hex sizes
    only (``0x10``, ``+1`` or ``1_0`` would be read differently by the daemon), CRLF line ends,
    a CRLF after each chunk's data, trailers up to an empty line."""

    def __init__(self) -> None:
        self.state = "size"  # size, data, crlf, trailer
        self.remaining = 0
        self.line = bytearray()
        self.decoded = bytearray()

    def take_decoded(self) -> bytes:
        out = bytes(self.decoded)
        self.decoded.clear()
        return out

    def feed(self, data: bytes, *, decode: bool = False) -> int | None:
        """Consume ``data``; the offset just past the body when it ends inside ``data``."""
        i, n = 0, len(data)
        while i < n:
            if self.state == "data":
                take = min(self.remaining, n - i)
                if decode:
                    self.decoded += data[i : i + take]
                i += take
                self.remaining -= take
                if not self.remaining:
                    self.state = "crlf"
                continue
            j = data.find(b"\n", i)
            if j < 0:
                self.line += data[i:]
                if len(self.line) > LINE_LIMIT:
                    raise HttpError(400, "hub policy refused a chunk line over 4 KiB")
                return None
            line = bytes(self.line) + data[i:j]
            self.line.clear()
            i = j + 1
            if not line.endswith(b"\r"):
                raise HttpError(400, "hub policy refused a chunked body with a bare LF")
            line = line[:-1]
            if self.state == "crlf":
                if line:
                    raise HttpError(400, "hub policy refused a malformed chunk")
                self.state = "size"
            elif self.state == "size":
                m = _CHUNK_SIZE.match(line)
                if not m:
                    raise HttpError(400, "hub policy refused a malformed chunk size")
                self.remaining = int(m.group(1), 16)
                self.state = "data" if self.remaining else "trailer"
            elif not line:  # the empty line after the trailers ends the body
                return i
        return None


def parse_response_head(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ")[1])
    except (IndexError, ValueError):
        raise HttpError(502, "the docker daemon sent a malformed response") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers
