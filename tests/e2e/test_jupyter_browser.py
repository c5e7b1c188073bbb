"""The seed's "Jupyter Notebook Environment", run the way its users run it: JupyterLab in Chromium
through the whole product (``hub start``, per-user dockerd, policy socket, npm oidc-provider,
real CRIU), with JupyterLab from PyPI in a locally built image
(``scripts/build-jupyter-image.sh``: images/jupyterlab/Dockerfile).

The default template is the seed's labels word for word but the image (its
``jupyter/datascience-notebook`` is on a registry this host cannot reach; ours is shaped like it:
user jovyan 1000:100, ``jupyter`` on PATH). A second template, ``ckpt``, is the same command and
workspace as root with checkpointing on: this machine's root lacks CAP_SYS_RESOURCE, so CRIU can
dump only root's processes here (docs/checkpoint.md), and the seed's example, which runs as
1000:100, cannot be checkpointed on such a host.

Code runs the way JupyterLab's own client runs it, from the JupyterLab page in Chromium: REST to
create a session (and with it a kernel, the ``_xsrf`` cookie echoed in ``X-XSRFToken``), then an
``execute_request`` over the kernel's channels WebSocket, through the hub's proxy.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.browser import goto, launch_chromium
from tests.support.hubprocess import CLIENT_SECRET, HubSite, new_site
from tests.support.oidc_provider import free_port, npm_oidc_provider

pytestmark = [
    pytest.mark.docker,
    pytest.mark.criu,
    pytest.mark.browser,
    pytest.mark.oidc,
    pytest.mark.slow,
    pytest.mark.timeout(420),
]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "e2e"
IDLE_TIMEOUT = 10  # seconds
JUPYTER_IMAGE = "rediacc-hub/jupyterlab:latest"
# The seed's "Jupyter Notebook Environment" labels, word for word but the image.
SEED_COMMAND = (
    "exec jupyter lab --ip=__SERVICE_IP__ --port=8888 --no-browser "
    "--NotebookApp.token='' --NotebookApp.password=''"
)
SEED_LABELS = {
    "rediacc.install_as": "systemd",
    "rediacc.hub.route.notebook": "8888",
    "rediacc.hub.image": JUPYTER_IMAGE,
    "rediacc.hub.command": SEED_COMMAND,
    "rediacc.hub.user": "1000:100",
    "rediacc.hub.workspace": "/home/jovyan/work",
    "rediacc.hub.limits.cpu": "400%",
    "rediacc.hub.limits.memory": "16G",
}
# What JupyterLab's client does to run code: a session (POST /api/sessions, the _xsrf cookie
# echoed in X-XSRFToken) unless a kernel is given, then execute_request on the kernel's channels
# WebSocket; resolves when the reply and the kernel's "idle" for it have both arrived.
RUN_CODE_JS = """
async ({code, kernel}) => {
  const xsrf = decodeURIComponent((document.cookie.match(/(?:^|; )_xsrf=([^;]*)/) || [])[1] || "");
  const uid = () => Math.random().toString(16).slice(2) + Date.now().toString(16);
  if (!kernel) {
    const r = await fetch("/api/sessions", {
      method: "POST",
      headers: {"Content-Type": "application/json", "X-XSRFToken": xsrf},
      body: JSON.stringify({path: "hub-test.ipynb", name: "hub-test.ipynb", type: "notebook",
                            kernel: {name: "python3"}}),
    });
    if (!r.ok) throw new Error(`POST /api/sessions: ${r.status} ${await r.text()}`);
    kernel = (await r.json()).kernel.id;
  }
  const session = uid();
  const url = location.origin.replace(/^http/, "ws") + `/api/kernels/${kernel}/channels?session_id=${session}`;
  const ws = new WebSocket(url);
  return await new Promise((resolve, reject) => {
    const msgId = uid();
    let output = "", reply = null, idle = false;
    const timer = setTimeout(() => reject(new Error(`no reply in 60 s; output so far: ${output}`)), 60000);
    const done = () => {
      if (reply && idle) { clearTimeout(timer); ws.close(); resolve({kernel, status: reply, output}); }
    };
    ws.onerror = () => reject(new Error("the kernel WebSocket failed: " + url));
    ws.onopen = () => ws.send(JSON.stringify({
      header: {msg_id: msgId, username: "hub-test", session, msg_type: "execute_request",
               version: "5.3", date: new Date().toISOString()},
      parent_header: {}, metadata: {}, channel: "shell", buffers: [],
      content: {code, silent: false, store_history: true, user_expressions: {},
                allow_stdin: false, stop_on_error: true},
    }));
    ws.onmessage = (event) => {
      const m = JSON.parse(event.data);
      if (!m.parent_header || m.parent_header.msg_id !== msgId) return;
      if (m.msg_type === "stream") output += m.content.text;
      if (m.msg_type === "error") output += `${m.content.ename}: ${m.content.evalue}`;
      if (m.msg_type === "execute_reply") reply = m.content.status;
      if (m.msg_type === "status" && m.content.execution_state === "idle") idle = true;
      done();
    };
  });
}
"""


def labels(path: Path) -> Path:
    t = "rediacc.hub.templates.ckpt"
    pairs = {
        **SEED_LABELS,
        "rediacc.hub.docker": "per-user",  # the seed's recommendation for every template
        # the same stack as root, checkpointed (module docstring: why root on this host)
        f"{t}.image": JUPYTER_IMAGE,
        f"{t}.command": SEED_COMMAND,
        f"{t}.user": "root",
        f"{t}.workspace": "/home/jovyan/work",
        f"{t}.checkpoint": "true",
    }
    lines = ["version: 1", "service: hub", "labels:"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in pairs.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class JupyterSite(HubSite):
    @property
    def flags(self) -> dict:
        return {**super().flags, "idle_timeout": f"{IDLE_TIMEOUT}s"}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    subprocess.run([str(ROOT / "scripts/build-jupyter-image.sh")], check=True)
    root = tmp_path_factory.mktemp("e2e-jupyter")
    port = free_port()
    redirects = [f"http://notebook.localhost:{port}/_hub/oauth/callback"]
    client = {"client_id": "hub", "client_secret": CLIENT_SECRET, "redirect_uris": redirects}
    with npm_oidc_provider([client], groups={}) as issuer:
        base = new_site(root, issuer, "localhost", port)
        s = JupyterSite(root=root, port=port, domain="localhost",
                        labels=labels(root / "hub.labels.yaml"), env=base.env)  # fmt: skip
        s.start()
        try:
            yield s
        finally:
            s.stop()
            s.cleanup()


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            yield browser
        finally:
            browser.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"jupyter-{name}.png"))


def open_lab(page, site: HubSite, user: str, template: str | None = None) -> None:
    """Log in (the provider's form the first time) and wait for JupyterLab's own UI."""
    query = f"?template={template}" if template else ""
    goto(page, site.url("notebook", f"/_hub/login{query}"))
    page.wait_for_load_state()
    if page.locator("input[name=login]").count():
        page.fill("input[name=login]", user)
        page.fill("input[name=password]", "any password")
        page.click("button[type=submit]")
    goto(page, site.url("notebook", "/lab"))  # the hub's progress page until JupyterLab answers
    page.wait_for_selector("#jp-main-dock-panel", timeout=180_000)
    page.wait_for_selector(".jp-Launcher", timeout=60_000)


def run_code(page, code: str, kernel: str | None = None) -> dict:
    return page.evaluate(RUN_CODE_JS, {"code": code, "kernel": kernel})


def record(site: HubSite, user: str) -> dict:
    path = site.root / "state" / "users" / f"{user}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def wait_record(site: HubSite, user: str, timeout: float = 90, **want) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rec = record(site, user)
        if all(rec.get(k) == v for k, v in want.items()):
            return rec
        if time.monotonic() > deadline:
            raise AssertionError(f"{user}: {rec} is not {want}:\n{site.read_log()[-3000:]}")
        time.sleep(0.25)


def test_the_seed_jupyter_labels_run_code_in_a_kernel_over_its_websocket(site, chromium):
    context = chromium.new_context()
    page = context.new_page()
    open_lab(page, site, "jo")
    shot(page, "lab")
    code = (
        "import os, pathlib\n"
        "pathlib.Path('from-kernel.txt').write_text('written by the kernel')\n"
        "print(os.getuid(), os.getgid(), os.getcwd(), 6 * 7)"
    )
    result = run_code(page, code)
    assert result["status"] == "ok", result
    # the seed's user and workspace: uid 1000, gid 100, in /home/jovyan/work
    assert result["output"].split() == ["1000", "100", "/home/jovyan/work", "42"], result
    written = site.root / "workspaces" / "jo" / "from-kernel.txt"
    assert written.read_text() == "written by the kernel"
    assert (written.stat().st_uid, written.stat().st_gid) == (1000, 100)
    assert record(site, "jo")["template"] == "default"
    context.close()


def test_a_kernel_keeps_its_variables_across_idle_checkpoint_and_restore(site, chromium):
    context = chromium.new_context()
    page = context.new_page()
    open_lab(page, site, "kim", template="ckpt")
    first = run_code(page, "import os\nsecret = os.urandom(8).hex()\nprint(os.getpid(), secret)")
    assert first["status"] == "ok", first
    kernel_pid, secret = first["output"].split()
    kernel = first["kernel"]
    # JupyterLab's page polls the server (sessions, kernel specs): that is activity, so the user
    # goes quiet only once the page is gone, as when a user closes the tab
    page.close()

    rec = wait_record(site, "kim", timeout=IDLE_TIMEOUT + 120, state="checkpointed")
    assert not rec.get("checkpoint_error"), rec

    # back: the next visit restores the environment, kernel and all
    page = context.new_page()
    open_lab(page, site, "kim")
    rec = wait_record(site, "kim", timeout=30, state="running")
    assert "processes restored with their memory" in rec["restored"]["detail"], rec
    again = run_code(page, "import os\nprint(os.getpid(), secret)", kernel=kernel)
    assert again["status"] == "ok", again
    assert again["output"].split() == [kernel_pid, secret], again  # the same process, its memory
    assert rec["last_start"]["outcome"] == "restored"
    shot(page, "restored")
    context.close()
