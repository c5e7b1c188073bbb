"""Prepare a Debian 12 host for the hub: ``hub install --setup-host``, and scripts/setup-host.sh.

What the hub needs at run time and a command can provide (``hubcontrol.doctor`` checks the same
things): Debian packages (``RUNTIME_PACKAGES``), CRIU 4.2.1 unpacked into ``/opt/rediacc/criu``,
``tcp-established`` in ``/etc/criu/runc.conf`` and ``kernel.io_uring_disabled=1`` (set now and
in ``/etc/sysctl.d/60-rediacc-hub.conf``). Every step does only what is missing and says what it
did, so running it again changes nothing.

It never breaks what the host has: packages are only added (``--no-install-recommends``), never
removed or upgraded; CRIU's packages carry another release's libc, so they are unpacked into a
private prefix under ``/opt`` (refused anywhere else), never into ``/``, and replace an old
prefix only once the new one is complete; ``runc.conf`` is appended to, never rewritten;
``io_uring_disabled`` is raised from 0 to 1, never lowered (2 stays 2); nothing is mounted, no
firewall backend switched, no service restarted.

CRIU comes from a directory of the pinned .debs (``--criu-debs DIR``: a checkout's
``../shared/vendor/criu``, or any copy of the packages ``CRIU_DEBS`` lists) or, without one, from
this host's own Debian mirror with ``apt-get download`` through a private apt configuration
(trixie and sid sources in a temporary directory; the host's sources and lists are untouched).
Either way every file is checked against ``CRIU_DEBS``'s SHA-256 sums before anything is unpacked.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from hubcontrol.errors import InstallError
from hubcontrol.supervisor import CRIU_BIN

CRIU_PREFIX = Path(CRIU_BIN).parent  # /opt/rediacc/criu
CRIU_VERSION = "4.2.1"
SYSCTL_CONF = "etc/sysctl.d/60-rediacc-hub.conf"
RUNC_CONF = "etc/criu/runc.conf"
IO_URING = "proc/sys/kernel/io_uring_disabled"

# What the hub runs at run time: docker.io (every user's dockerd), iptables (isolation rules),
# tini (tini-static, the daemons' init-path), btrfs-progs (data-root subvolumes and seed
# snapshots), iproute2 (bridges), procps and util-linux (process and mount handling), logrotate
# (audit logs, docs/operations.md), ca-certificates (pulls from registries).
RUNTIME_PACKAGES = (
    "ca-certificates",
    "docker.io",
    "iptables",
    "tini",
    "btrfs-progs",
    "iproute2",
    "procps",
    "util-linux",
    "logrotate",
)

# CRIU 4.2.1 and the libraries it runs with, unmodified Debian packages (criu, libcompel1, libnet9
# and libnl-3-200 from sid, the rest from trixie): (package, version, SHA-256 of the .deb).
# Debian 12's own criu 3.17 cannot start on kernels >= 6.16 and 4.1 cannot dump TCP sockets there.
CRIU_DEBS: tuple[tuple[str, str, str], ...] = (
    ("criu", "4.2.1-1", "4039578de7dd6480964754c1348416f0f0658fba3eadaa918bfe43e9a5fb9b04"),
    ("libbsd0", "0.12.2-2", "e5a85986fa6bec3307ab1bc860736b478b331882bc45e17675a7bdf88eecb43a"),
    ("libc6", "2.41-12+deb13u5", "b59b0625cd1a791375d40dab23a4d5d3d0641e3d0a773501becdc3725b7f99cf"),
    ("libcompel1", "4.2.1-1", "c41087440d28973c9abc04dcd31674a28969e5dc0cefde5023a89aaf07ef357d"),
    ("libffi8", "3.4.8-2", "0ebdc340de33333639c3c63874cd4b15ac2e83dfa1ef3053b7eefaf4919f4f68"),
    ("libgcc-s1", "14.2.0-19", "3c71917b490d1a17aed43196a2787a256ecf060526cdb20216a74bedc061b150"),
    ("libgmp10", "2:6.3.0+dfsg-3", "d0d0265eb01770f17afd0f7c8c0622f80479dcfbbe13653a0debeec61464e622"),
    ("libgnutls30t64", "3.8.9-3+deb13u4", "18a8bdfd91c7e3bcb01719d55a2b56849c7160b34f1f52b1c4fdfdd41bf1352b"),
    ("libhogweed6t64", "3.10.1-1", "b059ed155115ac09da295322de48ee1ed58ef5fa45edcc9e12ff0e94636ef25f"),
    ("libidn2-0", "2.3.8-2", "90b039bcdc4578f8e1c4935adf8dbb525e36a164deefdbbb8c45bac347d48278"),
    ("libjansson4", "2.14-2+b3", "60707a62fe6c1228c3389b12a13ca4efd76defc5532473e547a29e99cf7d2a6e"),
    ("libmd0", "1.1.0-2+b1", "7244ec3839b61fac0c1884fe08aaa040f26e8f1f35f1f5d3482eacefd30d1b44"),
    ("libmnl0", "1.0.5-3", "4ec9c1096e0b954e3bdb03a62314ee7f49999045d3d55be3e4ded520ffc9baf5"),
    ("libnet9", "1.3+dfsg-3+b2", "2a27e79bb376a1052a77b6373e17b3c2e71b2b2d15bc05d899f2a6318e5d36ea"),
    ("libnettle8t64", "3.10.1-1", "1b03d4a9cd9c8143ba50fe6396f36937e901a317d492d179f4596862c1731cfe"),
    ("libnftables1", "1.1.3-1", "c7cbee3dce8452ae5c3c4269f6f52e96b896d36a46ea3c490e0e11e8ff359896"),
    ("libnftnl11", "1.2.9-1", "1b3eae46bfb9c6ab44e404797fb45278045f926d73974a84097ad47a3e27d983"),
    ("libnl-3-200", "3.12.0-2+b1", "a5ca78bbb9d5cc067b78952c5d38b7caac831d42e94b85b91edf1f6f00dfd48a"),
    ("libp11-kit0", "0.25.5-3", "784bf2063e166c8bc851a32623b74ebd85c499043a9d57c5bbd64fa63447f45a"),
    ("libprotobuf-c1", "1.5.1-1", "9fa7e6932f620c7155aab365ed277f04cae3e04ac80ee048fb09d1e838738d14"),
    ("libtasn1-6", "4.20.0-2+deb13u1", "23fec6e06583ce2bad9b2c04c9b485e90440e259b1abf8677cd80d3ce60831ad"),
    ("libunistring5", "1.3-2", "6dd3490bef06ea1096f32d10766b7e016cf579bfae8451d1b7df15ce05b8aa46"),
    ("libuuid1", "2.41.5-0+deb13u1", "c1bf4c4c3ff48c57fabf93307dfb56996b60cfa33927afc4158b5db36fb2721e"),
    ("libxtables12", "1.8.11-2", "4de5aa59faef5e98d6ba9f5f521a915be5641f224f597862f8d29e8319e8db16"),
)  # fmt: skip


@dataclass(frozen=True)
class Step:
    """One step of the host setup: ``outcome`` "present" (nothing to do), "done" (changed the
    host) or "warning" (could not, and the hub works without it); ``detail`` says what."""

    name: str
    outcome: str
    detail: str


# -- pure pieces -----------------------------------------------------------------------------


def deb_file(package: str, version: str) -> str:
    """The pool's file name of a package: ``pkg_VERSION_amd64.deb``, the epoch left out."""
    return f"{package}_{version.split(':', 1)[-1]}_amd64.deb"


def criu_sums() -> str:
    """``CRIU_DEBS`` as a ``sha256sum -c`` file, one ``<sum>  <file>`` line each."""
    return "".join(f"{digest}  {deb_file(p, v)}\n" for p, v, digest in CRIU_DEBS)


def criu_stamp() -> str:
    """What an install from ``CRIU_DEBS`` writes to ``<prefix>/.installed-from``: the same value
    scripts/setup-host.sh wrote before this module (``hash_files`` of the sums file), so prefixes
    it installed are recognised and not unpacked again."""
    first = hashlib.sha256(criu_sums().encode()).hexdigest()
    return hashlib.sha256(f"{first}  -\n".encode()).hexdigest()[:16]


def criu_wrapper(prefix: Path) -> str:
    """The ``criu`` that runc finds first on a daemon's PATH: CRIU under its own loader and libc."""
    lib = f"{prefix}/usr/lib/x86_64-linux-gnu"
    return (
        "#!/bin/sh\n"
        f'exec {lib}/ld-linux-x86-64.so.2 --library-path {lib} {prefix}/usr/sbin/criu "$@"\n'
    )


def debs_problems(directory: Path) -> list[str]:
    """Each ``CRIU_DEBS`` file missing from ``directory`` or whose SHA-256 differs."""
    problems = []
    for package, version, digest in CRIU_DEBS:
        path = Path(directory) / deb_file(package, version)
        try:
            with open(path, "rb") as f:
                got = hashlib.file_digest(f, "sha256").hexdigest()
        except FileNotFoundError:
            problems.append(f"{path} is missing")
            continue
        if got != digest:
            problems.append(f"{path} has SHA-256 {got}, not the pinned {digest}")
    return problems


def debian_mirrors(sources: Iterable[str]) -> tuple[str | None, str | None]:
    """The host's Debian mirror and security mirror (URIs ending in ``/debian`` and
    ``/debian-security``) from the texts of its apt sources (one-line or deb822 format)."""
    uris = []
    for text in sources:
        for line in text.splitlines():
            if line.lstrip().startswith("#"):
                continue
            uris += re.findall(r"https?://[^\s\]]+", line)
    main = next((u.rstrip("/") for u in uris if re.search(r"/debian/?$", u)), None)
    security = next((u.rstrip("/") for u in uris if re.search(r"/debian-security/?$", u)), None)
    return main, security


def download_sources(main: str, security: str | None) -> str:
    """A private apt sources.list with the suites the pinned CRIU packages come from."""
    lines = [f"deb {main} trixie main", f"deb {main} trixie-updates main", f"deb {main} sid main"]
    if security:
        lines.append(f"deb {security} trixie-security main")
    return "\n".join(lines) + "\n"


def runc_conf_with_tcp_established(text: str | None) -> str | None:
    """``runc.conf``'s new content with a ``tcp-established`` line appended, None when it has one."""
    if text is not None and "tcp-established" in (line.strip() for line in text.splitlines()):
        return None
    text = text or ""
    if text and not text.endswith("\n"):
        text += "\n"
    return text + "tcp-established\n"


# -- steps on the host -----------------------------------------------------------------------


def check_os(root: Path = Path("/")) -> Step:
    """A warning unless this is Debian 12 (bookworm), the release the setup is written for."""
    codename = ""
    try:
        for line in (Path(root) / "etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                codename = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    if codename == "bookworm":
        return Step("operating system", "present", "Debian 12 (bookworm)")
    return Step(
        "operating system",
        "warning",
        f"written for Debian 12 (bookworm); found {codename or 'unknown'}",
    )


def installed(package: str) -> bool:
    """Whether the Debian package is installed (dpkg's status)."""
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Status}", package], capture_output=True, text=True
    )
    return done.returncode == 0 and done.stdout.strip() == "installed"


def install_packages(
    packages: Iterable[str], is_installed: Callable[[str], bool] = installed
) -> Step:
    """``apt-get install`` the packages that are missing (after one ``apt-get update``)."""
    packages = list(packages)
    missing = [p for p in packages if not is_installed(p)]
    if not missing:
        return Step("Debian packages", "present", " ".join(packages))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise InstallError(
                f"{' '.join(argv)} failed (exit {done.returncode}): {_tail(done.stderr)}"
            )
    return Step("Debian packages", "done", "installed " + " ".join(missing))


def criu_version(prefix: Path = CRIU_PREFIX) -> str | None:
    """The version ``<prefix>/bin/criu --version`` prints, None when it is missing or fails."""
    try:
        done = subprocess.run(
            [str(Path(prefix) / "bin/criu"), "--version"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"^Version:\s*(\S+)", done.stdout, re.MULTILINE)
    return found.group(1) if done.returncode == 0 and found else None


def fetch_criu_debs(dest: Path, sources_dir: Path = Path("/etc/apt")) -> None:
    """Download ``CRIU_DEBS`` into ``dest`` with ``apt-get download``, through an apt state of its
    own (in ``dest/.apt``, removed after) pointed at this host's Debian mirror."""
    texts = []
    for pattern in ("sources.list", "sources.list.d/*.list", "sources.list.d/*.sources"):
        for path in sorted(Path(sources_dir).glob(pattern)):
            try:
                texts.append(path.read_text())
            except OSError:
                continue
    main, security = debian_mirrors(texts)
    if main is None:
        raise InstallError(
            f"cannot find this host's Debian mirror in {sources_dir}/sources.list*; "
            "pass --criu-debs DIR with the pinned CRIU packages"
        )
    apt = Path(dest) / ".apt"
    for d in ("lists/partial", "cache/archives/partial", "preferences.d"):
        (apt / d).mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(download_sources(main, security))
    options = [
        "-o", f"Dir::Etc::SourceList={apt}/sources.list", "-o", "Dir::Etc::SourceParts=-",
        "-o", f"Dir::State::Lists={apt}/lists", "-o", f"Dir::Cache={apt}/cache",
        "-o", "Dir::Etc::Preferences=-", "-o", f"Dir::Etc::PreferencesParts={apt}/preferences.d",
        "-o", "APT::Architecture=amd64", "-o", "APT::Architectures=amd64",
        "-o", "Acquire::Languages=none",
        "-o", "APT::Sandbox::User=root",  # the files sit in a root-only temporary directory
    ]  # fmt: skip
    try:
        for argv in (
            ["apt-get", *options, "update", "-qq"],
            ["apt-get", *options, "download", "-qq", *(f"{p}={v}" for p, v, _ in CRIU_DEBS)],
        ):
            done = subprocess.run(argv, cwd=dest, capture_output=True, text=True)
            if done.returncode != 0:
                raise InstallError(
                    f"apt-get {argv[len(options) + 1]} of the pinned CRIU packages failed: "
                    f"{_tail(done.stderr)}. The mirror may no longer carry these exact versions; "
                    "get the files CRIU_DEBS in hubcontrol/hostsetup.py lists (from "
                    "snapshot.debian.org, or a checkout's ../shared/vendor/criu) into a "
                    "directory and pass --criu-debs DIR"
                )
    finally:
        shutil.rmtree(apt, ignore_errors=True)
    # apt names a file with an epoch pkg_EPOCH%3aVERSION_arch.deb; the pool (and deb_file) do not
    for path in Path(dest).glob("*%3a*.deb"):
        path.rename(path.with_name(re.sub(r"_\d+%3a", "_", path.name)))


def install_criu(
    debs: Path | None,
    prefix: Path = CRIU_PREFIX,
    root: Path = Path("/"),
    fetch: Callable[[Path], None] = fetch_criu_debs,
) -> Step:
    """CRIU 4.2.1 in ``prefix`` (under ``root/opt``): left alone when it runs and came from these
    packages, else unpacked from ``debs`` (or what ``fetch`` downloads) after checking every sum."""
    prefix = Path(prefix)
    stamp = prefix / ".installed-from"
    version = criu_version(prefix)
    if version == CRIU_VERSION:
        try:
            recorded = stamp.read_text().strip()
        except FileNotFoundError:
            # installed by hand the documented way (same prefix, same wrapper): adopt it
            stamp.write_text(criu_stamp() + "\n")
            return Step("CRIU", "present", f"{CRIU_VERSION} in {prefix} (adopted)")
        if recorded == criu_stamp():
            return Step("CRIU", "present", f"{CRIU_VERSION} in {prefix}")
    opt = Path(root) / "opt"
    if not prefix.resolve().is_relative_to(opt.resolve()) or prefix.resolve() == opt.resolve():
        raise InstallError(f"refusing to unpack CRIU's libraries into {prefix}: only under {opt}")
    with tempfile.TemporaryDirectory(prefix="rediacc-criu.") as work:
        if debs is None:
            fetch(Path(work))
            source = Path(work)
        else:
            source = Path(debs)
            if not source.is_dir():
                raise InstallError(f"--criu-debs {source}: no such directory")
        problems = debs_problems(source)
        if problems:
            raise InstallError(
                "the CRIU packages do not match the pinned ones (hubcontrol/hostsetup.py "
                "CRIU_DEBS): " + "; ".join(problems)
            )
        new = prefix.with_name(prefix.name + ".new")
        old = prefix.with_name(prefix.name + ".old")
        shutil.rmtree(new, ignore_errors=True)
        (new / "bin").mkdir(parents=True)
        try:
            for package, version, _ in CRIU_DEBS:
                done = subprocess.run(
                    ["dpkg-deb", "-x", str(source / deb_file(package, version)), str(new)],
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0:
                    raise InstallError(
                        f"dpkg-deb -x {deb_file(package, version)}: {_tail(done.stderr)}"
                    )
            # the wrapper names the final prefix: it runs once new is renamed into place
            wrapper = new / "bin/criu"
            wrapper.write_text(criu_wrapper(prefix))
            wrapper.chmod(0o755)
            (new / ".installed-from").write_text(criu_stamp() + "\n")
            shutil.rmtree(old, ignore_errors=True)
            if prefix.exists():
                prefix.rename(old)
            new.rename(prefix)
        finally:
            shutil.rmtree(new, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
    version = criu_version(prefix)
    if version != CRIU_VERSION:
        raise InstallError(f"the CRIU wrapper {prefix}/bin/criu does not run (got {version})")
    return Step("CRIU", "done", f"{CRIU_VERSION} installed in {prefix}")


def criu_check(prefix: Path = CRIU_PREFIX) -> Step:
    """``criu check``: whether this kernel has what CRIU needs (a warning when not)."""
    try:
        done = subprocess.run(
            [str(Path(prefix) / "bin/criu"), "check"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Step("criu check", "warning", f"did not run: {exc}")
    last = _tail(done.stdout + done.stderr)
    if done.returncode == 0:
        return Step("criu check", "present", last)
    return Step("criu check", "warning", f"failed (checkpoints will fail): {last}")


def configure_runc(root: Path = Path("/")) -> Step:
    """``tcp-established`` in ``/etc/criu/runc.conf``, appended (runc reads the file for every
    dump and restore; docker 20.10 has no other way to pass it)."""
    path = Path(root) / RUNC_CONF
    try:
        text: str | None = path.read_text()
    except FileNotFoundError:
        text = None
    new = runc_conf_with_tcp_established(text)
    if new is None:
        return Step("runc.conf", "present", f"/{RUNC_CONF} has tcp-established")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(new[len(text or "") :])
    return Step("runc.conf", "done", f"added tcp-established to /{RUNC_CONF}")


def configure_io_uring(root: Path = Path("/")) -> Step:
    """``kernel.io_uring_disabled=1`` now and at every boot: containers cannot open an io_uring,
    which CRIU cannot dump; processes with CAP_SYS_ADMIN (host services) keep it."""
    switch = Path(root) / IO_URING
    try:
        value = switch.read_text().strip()
    except FileNotFoundError:
        return Step("io_uring", "present", "this kernel has no io_uring_disabled switch")
    conf = Path(root) / SYSCTL_CONF
    lines = [f"kernel.io_uring_disabled = {v}" for v in ("1", "2")]
    changed = []
    try:
        persisted = any(line in lines for line in conf.read_text().splitlines())
    except FileNotFoundError:
        persisted = False
    if not persisted:
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            "# rediacc hub: CRIU cannot checkpoint containers holding an io_uring\n"
            f"kernel.io_uring_disabled = {'2' if value == '2' else '1'}\n"  # 2 is stricter: kept
        )
        changed.append(f"wrote /{SYSCTL_CONF}")
    if value == "0":
        switch.write_text("1\n")
        changed.append("set kernel.io_uring_disabled=1")
    if changed:
        return Step("io_uring", "done", "; ".join(changed))
    return Step("io_uring", "present", f"kernel.io_uring_disabled = {value}, persisted")


def steps(criu_debs: Path | None, root: Path = Path("/")) -> list[tuple[str, Callable[[], Step]]]:
    """Every step, in order, as (what it does, the step): run each and stop at the first that
    raises InstallError. ``root`` is for tests; the hub's own paths are fixed."""
    prefix = Path(root) / str(CRIU_PREFIX).lstrip("/")
    return [
        ("checking the operating system", lambda: check_os(root)),
        (
            "apt-get install " + " ".join(RUNTIME_PACKAGES),
            lambda: install_packages(RUNTIME_PACKAGES),
        ),
        (f"CRIU {CRIU_VERSION} into {CRIU_PREFIX}", lambda: install_criu(criu_debs, prefix, root)),
        ("criu check", lambda: criu_check(prefix)),
        (f"/{RUNC_CONF}", lambda: configure_runc(root)),
        ("kernel.io_uring_disabled", lambda: configure_io_uring(root)),
    ]


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"
