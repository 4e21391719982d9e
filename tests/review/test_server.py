"""review.server: the streamlit command line and the loopback / password rule."""

from __future__ import annotations

import socket
import subprocess

import pytest

from medassist.errors import MedassistError
from medassist.review import server


def test_command_is_headless_loopback_without_usage_stats(triage_out):
    cmd = server.build_command(triage_out, port=8765)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("apps/streamlit_viewer.py")

    def opt(name):
        return cmd[cmd.index(name) + 1]

    assert opt("--server.address") == "127.0.0.1" and opt("--server.port") == "8765"
    assert opt("--server.headless") == "true" and opt("--browser.gatherUsageStats") == "false"
    assert cmd[-2] == "--" and cmd[-1] == str(triage_out.resolve())


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.1.2.3", True), ("localhost", True),
                                            ("::1", True), ("0.0.0.0", False), ("192.168.1.5", False),
                                            ("example.org", False)])
def test_is_loopback(host, loopback):
    assert server.is_loopback(host) is loopback


def test_non_loopback_needs_a_password(triage_out, monkeypatch):
    monkeypatch.delenv(server.PASSWORD_ENV, raising=False)
    with pytest.raises(MedassistError, match="MEDASSIST_REVIEW_PASSWORD"):
        server.check_launch(triage_out, port=8501, host="0.0.0.0")
    monkeypatch.setenv(server.PASSWORD_ENV, "s3cret")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    server.check_launch(triage_out, port=free, host="0.0.0.0")  # allowed now


def test_refuses_missing_worklist_bad_port_and_busy_port(tmp_path, triage_out):
    with pytest.raises(MedassistError, match="no worklist"):
        server.check_launch(tmp_path, port=8501, host="127.0.0.1")
    with pytest.raises(MedassistError, match="not between"):
        server.check_launch(triage_out, port=70000, host="127.0.0.1")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(MedassistError, match="cannot listen"):
            server.check_launch(triage_out, port=busy.getsockname()[1], host="127.0.0.1")


def test_launch_runs_streamlit_and_returns_its_exit_code(triage_out, monkeypatch):
    seen = {}

    class FakeProcess:
        def __init__(self, cmd, env):
            seen["cmd"], seen["env"] = cmd, env

        def wait(self, timeout=None):
            return 3

    monkeypatch.setattr(server, "check_launch", lambda *a, **k: None)
    monkeypatch.setattr(subprocess, "Popen", FakeProcess)
    assert server.launch(triage_out, port=9999) == 3
    assert "--server.port" in seen["cmd"] and seen["env"]["MEDASSIST_OUT"] == str(triage_out.resolve())
