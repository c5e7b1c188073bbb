"""Making a template image available in a user's daemon.

Order: already there, with the ID the host daemon (``--docker-socket``) gives the template's image
now; else transferred from the host daemon, streamed ``save | load`` so a large image is never
held in memory; else pulled (which works against a registry, local or remote). An ImageError names
the image and every way that failed.

**Updates move only missing layers.** When the host's image changed (the operator rebuilt it),
a daemon that has the older image gets the new one with a ``docker save`` stream from which the
layers it already has are dropped: ``docker load`` looks a layer up by its chain ID before it
opens the layer's file, so a layer it has needs none. Which member of the save stream is which
layer is learnt from the stream's ``manifest.json`` (the last member, so from an earlier transfer
of the same image, kept in a ``LayerIndex``; a seed build records it, ``hubcontrol.seeds``), or,
when no transfer of that image has been seen, by one pass over the stream that keeps only the
manifest. The older image is removed once it has no tag and no container uses it
(``remove_unused``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import docker.utils

from hubcontrol import safefs
from hubcontrol.errors import ImageError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
BLOCK = 512
MANIFEST = "manifest.json"


# -- layer bookkeeping (pure) ------------------------------------------------------------------


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The chain ID of every prefix of an image's layers (``RootFS.Layers``), as docker computes
    them: the first layer's diff ID, then ``sha256(parent chain + " " + diff ID)``."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if not chains:
            chains.append(diff_id)
        else:
            text = f"{chains[-1]} {diff_id}".encode()
            chains.append("sha256:" + hashlib.sha256(text).hexdigest())
    return chains


def layers_to_skip(
    layer_paths: Sequence[str], diff_ids: Sequence[str], present: set[str]
) -> set[str]:
    """The members of a save stream (``manifest.json``'s ``Layers``, in ``diff_ids`` order) that a
    daemon whose layer chains are ``present`` does not need. A member used at a position whose
    chain is missing is always sent."""
    if len(layer_paths) != len(diff_ids):
        return set()  # not the manifest of this image: send everything
    chains = chain_ids(diff_ids)
    needed = {path for path, chain in zip(layer_paths, chains, strict=True) if chain not in present}
    return {path for path in layer_paths if path not in needed}


# -- the save stream, filtered on the fly ----------------------------------------------------------


def _field_name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "replace")


def _field_size(header: bytes) -> int:
    field = header[124:136]
    if field[0] & 0x80:  # base-256 (GNU), for members of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a PAX extended header (``"<len> key=value\\n"`` records)."""
    path = None
    while data:
        length, _, rest = data.partition(b" ")
        try:
            n = int(length)
        except ValueError:
            break
        record, data = data[:n], data[n:]
        key, _, value = record[len(length) + 1 :].rstrip(b"\n").partition(b"=")
        if key == b"path":
            path = value.decode("utf-8", "replace")
        if n <= 0:
            break
    return path


class TarFilter:
    """Passes a tar stream through, dropping the members for which ``drop(name)`` is true (with
    their PAX or GNU long-name headers) and keeping a copy of the small members named in
    ``capture``. ``feed`` takes any chunking; ``sent``/``dropped`` count bytes."""

    def __init__(
        self, drop: Callable[[str], bool] = lambda name: False, capture: Iterable[str] = ()
    ) -> None:
        self.drop = drop
        self.capture = frozenset(capture)
        self.captured: dict[str, bytes] = {}
        self.sent = 0
        self.dropped = 0
        self._buf = bytearray()
        self._meta = bytearray()  # PAX/long-name members waiting for the member they describe
        self._meta_name: str | None = None
        self._left = 0  # bytes of the current member's (padded) data still to come
        self._size = 0
        self._pass = True
        self._collect: bytearray | None = None  # a captured member's data
        self._collect_name = ""
        self._into_meta = False
        self._ended = False

    def feed(self, chunk: bytes) -> bytes:
        self._buf += chunk
        out = bytearray()
        while self._buf:
            if self._ended:
                out += self._buf
                self._buf.clear()
                break
            if self._left:
                n = min(self._left, len(self._buf))
                piece = self._buf[:n]
                del self._buf[:n]
                self._left -= n
                if self._into_meta:
                    self._meta += piece
                elif self._pass:
                    out += piece
                else:
                    self.dropped += n
                if self._collect is not None:
                    self._collect += piece
                if not self._left:
                    self._member_done()
                continue
            if len(self._buf) < BLOCK:
                break
            header = bytes(self._buf[:BLOCK])
            del self._buf[:BLOCK]
            self._header(header, out)
        self.sent += len(out)
        return bytes(out)

    def _header(self, header: bytes, out: bytearray) -> None:
        if header == bytes(BLOCK):  # end of archive: the rest is padding
            out += self._meta + header
            self._meta.clear()
            self._ended = True
            return
        kind, size = header[156:157], _field_size(header)
        padded = -(-size // BLOCK) * BLOCK
        if kind in (b"x", b"L"):  # describes the next member: hold until its fate is known
            self._meta += header
            self._into_meta, self._left, self._size = True, padded, size
            self._collect, self._collect_name = bytearray(), kind.decode()
            if not padded:
                self._member_done()
            return
        name = self._meta_name or _field_name(header)
        self._meta_name = None
        self._pass = not self.drop(name)
        if self._pass:
            out += self._meta + header
        else:
            self.dropped += len(self._meta) + BLOCK
        self._meta.clear()
        self._into_meta, self._left, self._size = False, padded, size
        self._collect = bytearray() if name in self.capture else None
        self._collect_name = name
        if not padded:
            self._member_done()

    def _member_done(self) -> None:
        data = bytes(self._collect[: self._size]) if self._collect is not None else b""
        if self._into_meta:
            self._into_meta = False
            if self._collect_name == "x":
                self._meta_name = _pax_path(data) or self._meta_name
            else:
                self._meta_name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif self._collect is not None:
            self.captured[self._collect_name] = data
        self._collect = None


def manifest_layers(manifest: bytes) -> list[str]:
    """The ``Layers`` of the one image in a save stream's ``manifest.json`` (empty if not one)."""
    try:
        entries = json.loads(manifest)
    except ValueError:
        return []
    if not isinstance(entries, list) or len(entries) != 1:
        return []
    layers = entries[0].get("Layers")
    return [str(p) for p in layers] if isinstance(layers, list) else []


class LayerIndex:
    """Image ID -> the layer members of its ``docker save`` stream, in layer order. Kept in
    memory and, with ``directory``, in ``<directory>/<hex id>.layers.json`` (written
    atomically, root's), so a later hub process need not read a whole stream to learn them."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._known: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def _file(self, image_id: str) -> Path | None:
        if self.directory is None:
            return None
        return Path(self.directory) / f"{image_id.removeprefix('sha256:')}.layers.json"

    def get(self, image_id: str) -> list[str] | None:
        with self._lock:
            if image_id in self._known:
                return list(self._known[image_id])
        path = self._file(image_id)
        if path is not None:
            with contextlib.suppress(OSError, ValueError):
                layers = json.loads(safefs.read_text(path, limit=1 << 20))["layers"]
                if isinstance(layers, list):
                    with self._lock:
                        self._known[image_id] = [str(p) for p in layers]
                    return [str(p) for p in layers]
        return None

    def put(self, image_id: str, layers: list[str]) -> None:
        if not layers:
            return
        with self._lock:
            self._known[image_id] = list(layers)
        path = self._file(image_id)
        if path is not None and path.parent.is_dir():
            with contextlib.suppress(OSError):
                text = json.dumps({"image": image_id, "layers": layers}) + "\n"
                safefs.write_atomic(path, text, mode=0o600)

    def forget(self, image_id: str) -> None:
        with self._lock:
            self._known.pop(image_id, None)


def has_image(client: docker.DockerClient, image: str) -> bool:
    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False


def image_id(client: docker.DockerClient, image: str) -> str | None:
    """The ID (``sha256:...``) of ``image`` in ``client``'s daemon, or None when it has none."""
    try:
        return str(client.api.inspect_image(image)["Id"])
    except docker.errors.ImageNotFound:
        return None


def present_chains(client: docker.DockerClient) -> set[str]:
    """The chain ID of every layer prefix of every image in ``client``'s daemon."""
    found: set[str] = set()
    for summary in client.api.images(all=True):
        with contextlib.suppress(docker.errors.NotFound):
            layers = client.api.inspect_image(summary["Id"]).get("RootFS", {}).get("Layers") or []
            found.update(chain_ids(layers))
    return found


@dataclass(frozen=True)
class Transfer:
    """What one transfer moved: bytes sent to the target, bytes of layers it already had."""

    sent: int
    skipped: int


def _through(stream: Iterator[bytes], tar: TarFilter) -> Iterator[bytes]:
    for chunk in stream:
        out = tar.feed(chunk)
        if out:
            yield out


def transfer(
    source: docker.DockerClient,
    target: docker.DockerClient,
    image: str,
    *,
    skip: set[str] | frozenset[str] = frozenset(),
    layers: LayerIndex | None = None,
) -> Transfer:
    """Stream ``image`` from ``source`` to ``target`` (docker save | docker load), leaving out
    the save stream's members in ``skip`` (layers the target has); records the stream's layer
    members in ``layers``."""
    stream = source.api.get_image(image, chunk_size=CHUNK)
    tar = TarFilter(drop=skip.__contains__, capture=(MANIFEST,))
    try:
        # the answer is a stream of progress messages: read it to the end, so the load has
        # finished, its errors are seen and the connection is released
        for message in target.api.load_image(_through(stream, tar), quiet=True):
            error = message.get("error") or (message.get("errorDetail") or {}).get("message")
            if error:
                raise ImageError(
                    f"The image {image} could not be loaded into your daemon.",
                    f"docker load of {image}: {error}",
                )
    finally:
        stream.close()
    if not has_image(target, image):
        raise ImageError(
            f"The image {image} could not be loaded into your daemon.",
            f"docker load of {image} reported success but the image is missing",
        )
    if layers is not None and MANIFEST in tar.captured:
        loaded = image_id(target, image)
        if loaded:
            layers.put(loaded, manifest_layers(tar.captured[MANIFEST]))
    return Transfer(tar.sent, tar.dropped)


def read_layer_members(source: docker.DockerClient, image: str) -> list[str]:
    """The layer members of ``image``'s save stream, by reading the stream once and keeping
    only its manifest (the host daemon reads the image; nothing is written)."""
    stream = source.api.get_image(image, chunk_size=CHUNK)
    tar = TarFilter(drop=lambda name: name != MANIFEST, capture=(MANIFEST,))
    try:
        for _ in _through(stream, tar):
            pass
    finally:
        stream.close()
    return manifest_layers(tar.captured.get(MANIFEST, b""))


def update(
    source: docker.DockerClient,
    target: docker.DockerClient,
    image: str,
    want: str,
    layers: LayerIndex | None = None,
) -> Transfer:
    """Bring ``image`` (ID ``want`` in ``source``) into ``target``, sending only the layers
    ``target`` has no chain of; a full transfer when it has none of them."""
    layers = layers if layers is not None else LayerIndex()
    diff_ids = source.api.inspect_image(want).get("RootFS", {}).get("Layers") or []
    skip: set[str] = set()
    present = present_chains(target)
    if present & set(chain_ids(diff_ids)):
        members = layers.get(want)
        if members is None:
            members = read_layer_members(source, image)
            layers.put(want, members)
        skip = layers_to_skip(members, diff_ids, present)
    if skip:
        try:
            return transfer(source, target, image, skip=skip, layers=layers)
        except ImageError as e:
            # a stale record of the stream's members: the load missed a file; send everything
            log.warning("per-layer transfer of %s failed (%s); sending it whole", image, e)
            layers.forget(want)
    return transfer(source, target, image, layers=layers)


def _retag(client: docker.DockerClient, image_ref: str, want: str) -> None:
    """Point ``image_ref`` at ``want`` in ``client``'s daemon (a digest reference stays)."""
    if "@" in image_ref:
        return
    repository, tag = docker.utils.parse_repository_tag(image_ref)
    client.api.tag(want, repository, tag or "latest", force=True)


def remove_unused(client: docker.DockerClient, image_ids: Iterable[str]) -> list[str]:
    """Remove each image of ``image_ids`` that has no tag and that no container uses (docker
    refuses while one does); returns those still there, to try again later. An image the user
    tagged is theirs and is never removed."""
    left = []
    for old in dict.fromkeys(image_ids):
        try:
            info = client.api.inspect_image(old)
        except docker.errors.ImageNotFound:
            continue
        if info.get("RepoTags"):
            continue
        try:
            client.api.remove_image(old)
        except docker.errors.ImageNotFound:
            continue
        except docker.errors.APIError as e:
            log.info("keeping image %s until unused: %s", old, e.explanation or e)
            left.append(old)
    return left


def ensure_image(
    target: docker.DockerClient,
    image: str,
    host: docker.DockerClient | None,
    layers: LayerIndex | None = None,
) -> str:
    """Make ``image`` available in ``target``, as the host daemon has it now; returns how:
    "present", "transfer" (the whole image), "update" (only layers ``target`` lacked) or
    "pull". An image the host does not have is used as ``target`` has it, else pulled."""
    failures = []
    want = None
    if host is not None:
        try:
            want = image_id(host, image)
        except docker.errors.DockerException as e:
            failures.append(f"the host daemon could not be asked: {e}")
    if want is None and has_image(target, image):
        return "present"
    if want is not None and host is not None:  # (want comes from the host)
        try:
            if image_id(target, want) == want:
                if image_id(target, image) != want:
                    _retag(target, image, want)
                return "present"
            moved = update(host, target, image, want, layers)
            log.info(
                "image %s: sent %d MB, %d MB of layers already there",
                image, moved.sent >> 20, moved.skipped >> 20,
            )  # fmt: skip
            return "update" if moved.skipped else "transfer"
        except (docker.errors.DockerException, ImageError) as e:
            failures.append(f"transfer from the host daemon failed: {e}")
    elif host is not None and not failures:
        failures.append("not in the host daemon")
    try:
        target.images.pull(image)  # docker-py splits the tag; a bare name means :latest
        if has_image(target, image):
            return "pull"
        failures.append("pull finished without the image")
    except docker.errors.DockerException as e:
        failures.append(f"pull failed: {e}")
    raise ImageError(
        f"The environment image {image} is not available; ask the operator to build or push it.",
        f"image {image}: " + "; ".join(failures),
    )
