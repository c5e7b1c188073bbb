"""hubcontrol.hostsetup: the pure pieces, each step on a temporary root (twice: the second run
changes nothing), and CRIU really unpacked from the vendored packages and run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hubcontrol import doctor, hostsetup
from hubcontrol.errors import InstallError

ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT.parent / "shared" / "vendor" / "criu"


def _sums(text: str) -> dict[str, str]:
    return {name: digest for digest, name in (line.split() for line in text.splitlines() if line)}


def test_pins_are_the_vendored_packages() -> None:
    assert _sums(hostsetup.criu_sums()) == _sums((VENDOR / "SHA256SUMS").read_text())
    assert hostsetup.debs_problems(VENDOR) == []


def test_stamp_is_the_one_setup_host_sh_wrote(tmp_path: Path) -> None:
    # scripts/setup-host.sh recorded `hash_files criu.sha256sums` before the setup moved here;
    # the same value means its installs are recognised, not unpacked again
    sums = tmp_path / "criu.sha256sums"
    sums.write_text(hostsetup.criu_sums())
    out = subprocess.run(
        ["bash", "-c", f'source {ROOT}/scripts/lib.sh; hash_files "$1"', "_", str(sums)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert hostsetup.criu_stamp() == out.stdout.strip()


@pytest.mark.parametrize(
    ("package", "version", "file"),
    [
        ("criu", "4.2.1-1", "criu_4.2.1-1_amd64.deb"),
        ("libgmp10", "2:6.3.0+dfsg-3", "libgmp10_6.3.0+dfsg-3_amd64.deb"),
    ],
)
def test_deb_file_leaves_the_epoch_out(package: str, version: str, file: str) -> None:
    assert hostsetup.deb_file(package, version) == file


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        (
            ["deb http://deb.debian.org/debian bookworm main\n"
             "deb http://deb.debian.org/debian-security bookworm-security main\n"],
            ("http://deb.debian.org/debian", "http://deb.debian.org/debian-security"),
        ),
        (
            ["Types: deb\nURIs: https://mirror.example/debian/\nSuites: bookworm\n",
             "# deb http://old.example/debian bookworm main\n"],
            ("https://mirror.example/debian", None),
        ),
        (["deb [arch=amd64] http://ftp.example/ubuntu jammy main\n"], (None, None)),
    ],
)  # fmt: skip
def test_debian_mirrors(sources: list[str], expected: tuple) -> None:
    assert hostsetup.debian_mirrors(sources) == expected


def test_download_sources_name_the_suites_the_pins_come_from() -> None:
    text = hostsetup.download_sources("http://m/debian", "http://m/debian-security")
    assert text.splitlines() == [
        "deb http://m/debian trixie main",
        "deb http://m/debian trixie-updates main",
        "deb http://m/debian sid main",
        "deb http://m/debian-security trixie-security main",
    ]


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, "tcp-established\n"),
        ("", "tcp-established\n"),
        ("log-file /x", "log-file /x\ntcp-established\n"),
        ("log-file /x\n", "log-file /x\ntcp-established\n"),
        ("tcp-established\n", None),
        ("log-file /x\n tcp-established\n", None),
    ],
)
def test_runc_conf_content(before: str | None, after: str | None) -> None:
    assert hostsetup.runc_conf_with_tcp_established(before) == after


def test_configure_runc_appends_once_and_keeps_what_was_there(tmp_path: Path) -> None:
    conf = tmp_path / "etc/criu/runc.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("log-file /var/log/criu.log")
    assert hostsetup.configure_runc(tmp_path).outcome == "done"
    assert conf.read_text() == "log-file /var/log/criu.log\ntcp-established\n"
    assert hostsetup.configure_runc(tmp_path).outcome == "present"
    assert conf.read_text() == "log-file /var/log/criu.log\ntcp-established\n"
    assert doctor.check_runc_conf(tmp_path, True).status == doctor.OK


@pytest.mark.parametrize(("value", "after"), [("0", "1"), ("1", "1"), ("2", "2")])
def test_configure_io_uring_raises_never_lowers_and_persists(
    tmp_path: Path, value: str, after: str
) -> None:
    switch = tmp_path / "proc/sys/kernel/io_uring_disabled"
    switch.parent.mkdir(parents=True)
    switch.write_text(value + "\n")
    first = hostsetup.configure_io_uring(tmp_path)
    assert first.outcome == "done"  # the sysctl.d file was written
    assert switch.read_text().strip() == after
    conf = (tmp_path / "etc/sysctl.d/60-rediacc-hub.conf").read_text()
    assert f"kernel.io_uring_disabled = {after}" in conf.splitlines()
    assert hostsetup.configure_io_uring(tmp_path).outcome == "present"
    assert doctor.check_io_uring(tmp_path, True).status == doctor.OK


def test_configure_io_uring_without_the_switch_does_nothing(tmp_path: Path) -> None:
    assert hostsetup.configure_io_uring(tmp_path).outcome == "present"
    assert not (tmp_path / "etc").exists()


@pytest.mark.parametrize(
    ("release", "outcome"),
    [('VERSION_CODENAME=bookworm\nID=debian\n', "present"), ("VERSION_CODENAME=trixie\n", "warning")],
)  # fmt: skip
def test_check_os(tmp_path: Path, release: str, outcome: str) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text(release)
    assert hostsetup.check_os(tmp_path).outcome == outcome


def test_install_packages_installs_nothing_when_all_are_there() -> None:
    step = hostsetup.install_packages(["dpkg", "bash"])
    assert (step.outcome, step.detail) == ("present", "dpkg bash")


def test_install_criu_from_the_vendored_debs_runs_and_is_idempotent(tmp_path: Path) -> None:
    """Real dpkg-deb into a temporary /opt, the wrapper run: `criu --version` says 4.2.1."""
    prefix = tmp_path / "opt/rediacc/criu"
    step = hostsetup.install_criu(VENDOR, prefix, tmp_path)
    assert (step.outcome, hostsetup.criu_version(prefix)) == ("done", "4.2.1")
    assert (prefix / ".installed-from").read_text().strip() == hostsetup.criu_stamp()
    again = hostsetup.install_criu(None, prefix, tmp_path, fetch=_no_fetch)
    assert again.outcome == "present"
    assert sorted(p.name for p in prefix.parent.iterdir()) == ["criu"]  # no .new/.old left


def _no_fetch(dest: Path) -> None:
    raise AssertionError("an installed CRIU must not be fetched again")


def test_install_criu_without_debs_fetches_them(tmp_path: Path) -> None:
    # the fetch is apt-get download from the host's mirror in production (not reachable from
    # every test machine); here a stand-in copies the same files
    fetched = []

    def fetch(dest: Path) -> None:
        fetched.append(dest)
        for f in VENDOR.glob("*.deb"):
            shutil.copy(f, dest)

    prefix = tmp_path / "opt/rediacc/criu"
    assert hostsetup.install_criu(None, prefix, tmp_path, fetch=fetch).outcome == "done"
    assert len(fetched) == 1 and not fetched[0].exists()  # its temporary directory is gone
    assert hostsetup.criu_version(prefix) == "4.2.1"


def test_install_criu_refuses_a_tampered_package_and_keeps_the_old_prefix(tmp_path: Path):
    debs = tmp_path / "debs"
    shutil.copytree(VENDOR, debs)
    with open(debs / "libc6_2.41-12+deb13u5_amd64.deb", "ab") as f:
        f.write(b"\0")
    (debs / "libmd0_1.1.0-2+b1_amd64.deb").unlink()
    prefix = tmp_path / "opt/rediacc/criu"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin/keep").write_text("old")
    with pytest.raises(InstallError) as e:
        hostsetup.install_criu(debs, prefix, tmp_path)
    assert "libc6_2.41-12+deb13u5_amd64.deb has SHA-256" in e.value.user_message
    assert "libmd0_1.1.0-2+b1_amd64.deb is missing" in e.value.user_message
    assert (prefix / "bin/keep").read_text() == "old"


@pytest.mark.parametrize("where", ["usr/local/criu", "opt"])
def test_install_criu_refuses_outside_opt(tmp_path: Path, where: str) -> None:
    with pytest.raises(InstallError, match="only under"):
        hostsetup.install_criu(VENDOR, tmp_path / where, tmp_path)
    assert not (tmp_path / "usr").exists()


def test_missing_debs_dir_is_named(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="--criu-debs .*nope: no such directory"):
        hostsetup.install_criu(tmp_path / "nope", tmp_path / "opt/criu", tmp_path)
