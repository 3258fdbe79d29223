"""JupyterLab runs the project kernel: start Lab headless, execute code through the REST API
and the kernel's websocket channel (tornado client), check the results, shut down (< 30 s)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_PY = Path(sys.executable)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, token: str, path: str, method: str = "GET", body: dict | None = None):
    req = urllib.request.Request(
        f"{base}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=20) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    port, token = _free_port(), secrets.token_hex(16)
    log = tmp_path_factory.mktemp("lab") / "lab.log"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(log.parent / "runtime")}
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [
                str(VENV_PY.with_name("jupyter")),
                "lab",
                "--no-browser",
                "--allow-root",
                "--ip=127.0.0.1",
                f"--port={port}",
                f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={ROOT}",
                "--ServerApp.open_browser=False",
                "--LabApp.news_url=",
                "--LabApp.collaborative=False",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 25
        while True:
            try:
                _api(base, token, "/api/status")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
        yield base, token, port
    finally:
        try:
            _api(base, token, "/api/shutdown", method="POST")
            proc.wait(timeout=10)
        except Exception:
            os.killpg(proc.pid, signal.SIGTERM)  # only the Lab we started, by its own group id
            proc.wait(timeout=10)


async def _execute(port: int, token: str, kernel_id: str, code: str) -> list[dict]:
    from tornado.websocket import websocket_connect

    url = f"ws://127.0.0.1:{port}/api/kernels/{kernel_id}/channels?token={token}"
    ws = await websocket_connect(url)
    msg_id = uuid.uuid4().hex
    ws.write_message(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "username": "test",
                    "session": uuid.uuid4().hex,
                    "msg_type": "execute_request",
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "content": {"code": code, "silent": False, "store_history": False},
                "channel": "shell",
            }
        )
    )
    replies: list[dict] = []
    idle = reply = False
    while not (idle and reply):
        raw = await asyncio.wait_for(ws.read_message(), timeout=20)
        assert raw is not None, "kernel websocket closed"
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        replies.append(msg)
        kind = msg["msg_type"]
        idle |= kind == "status" and msg["content"]["execution_state"] == "idle"
        reply |= kind == "execute_reply"
    ws.close()
    return replies


def test_lab_runs_project_code_on_project_kernel(lab):
    base, token, port = lab
    specs = _api(base, token, "/api/kernelspecs")["kernelspecs"]
    # `make venv` registers the project kernel; on a bare venv fall back to python3 (same python)
    name = "mtlc" if "mtlc" in specs else "python3"
    if (ROOT / ".venv" / ".installed").exists():
        assert "mtlc" in specs, f"project kernel not registered; have {sorted(specs)}"
    kernel = _api(base, token, "/api/kernels", method="POST", body={"name": name})
    try:
        code = (
            "import sys, numpy as np\n"
            "from mtlc import splits\n"
            "from mtlc.report import glue, repo_root\n"
            "glue('answer', np.int64(42), display=False)\n"
            "print(sys.executable)\n"
            "print(repo_root())\n"
            "splits.size_grid(64).tolist()"
        )
        msgs = asyncio.run(_execute(port, token, kernel["id"], code))
    finally:
        _api(base, token, f"/api/kernels/{kernel['id']}", method="DELETE")
    by = {m["msg_type"]: m for m in msgs}
    assert by["execute_reply"]["content"]["status"] == "ok", by.get("error", {}).get("content")
    out = "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream")
    exe, top = out.strip().splitlines()[:2]
    assert Path(exe).parent == VENV_PY.parent  # the venv python, not a system one
    assert Path(top) == ROOT
    assert by["execute_result"]["content"]["data"]["text/plain"] == "[16, 23, 32, 45, 64]"
    glued = [m for m in msgs if m["msg_type"] == "display_data"]
    assert glued and glued[0]["content"]["metadata"]["scrapbook"]["name"] == "answer"
    assert glued[0]["content"]["data"]["application/papermill.record/text/plain"] == "42"
