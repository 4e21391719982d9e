"""review.server: the streamlit command line, the loopback rule, accounts and --public checks."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from medassist.errors import MedassistError
from medassist.review import accounts, server


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_streamlit_never_serves_beyond_loopback_itself(triage_out, monkeypatch):
    monkeypatch.delenv(server.PASSWORD_ENV, raising=False)
    with pytest.raises(MedassistError, match="--public"):
        server.check_launch(triage_out, port=free_port(), host="0.0.0.0")
    monkeypatch.setenv(server.PASSWORD_ENV, "s3cret")  # the old shared password opens nothing now
    with pytest.raises(MedassistError, match="shared password is gone"):
        server.check_launch(triage_out, port=free_port(), host="127.0.0.1")


def test_public_needs_accounts_and_users_file_outside_out(triage_out, tmp_path, monkeypatch):
    monkeypatch.delenv(server.PASSWORD_ENV, raising=False)
    users = tmp_path / "conf" / "users.json"
    with pytest.raises(MedassistError, match="no reviewer accounts"):
        server.check_launch(triage_out, port=free_port(), host="0.0.0.0", users_file=users, public=True)
    accounts.add_user("dr.grey", "correct horse battery", users)
    server.check_launch(triage_out, port=free_port(), host="0.0.0.0", users_file=users, public=True)
    inside = triage_out / "users.json"
    accounts.add_user("dr.grey", "correct horse battery", inside)
    with pytest.raises(MedassistError, match="inside the output folder"):
        server.check_launch(triage_out, port=free_port(), host="127.0.0.1", users_file=inside)
    os.chmod(users, 0o644)
    with pytest.raises(MedassistError, match="accessible to others"):
        server.check_launch(triage_out, port=free_port(), host="127.0.0.1", users_file=users)


def test_public_needs_tls_files(triage_out, tmp_path, monkeypatch):
    monkeypatch.delenv(server.PASSWORD_ENV, raising=False)
    users = tmp_path / "users.json"
    accounts.add_user("dr.grey", "correct horse battery", users)
    with pytest.raises(MedassistError, match="--tls-cert FILE --tls-key FILE"):
        server.launch(triage_out, port=free_port(), host="0.0.0.0", users_file=users, public=True)
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    os.chmod(key, 0o644)
    with pytest.raises(MedassistError, match="readable by everyone"):
        server.launch(triage_out, port=free_port(), host="0.0.0.0", users_file=users, public=True,
                      tls_cert=cert, tls_key=key)


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


def test_launch_runs_streamlit_and_returns_its_exit_code(triage_out, tmp_path, monkeypatch):
    seen = {}

    class FakeProcess:
        def __init__(self, cmd, env):
            seen["cmd"], seen["env"] = cmd, env

        def wait(self, timeout=None):
            return 3

    monkeypatch.setattr(server, "check_launch", lambda *a, **k: None)
    monkeypatch.setattr(subprocess, "Popen", FakeProcess)
    users = tmp_path / "users.json"
    assert server.launch(triage_out, port=9999, users_file=users) == 3
    assert "--server.port" in seen["cmd"] and seen["env"]["MEDASSIST_OUT"] == str(triage_out.resolve())
    assert seen["env"][accounts.USERS_FILE_ENV] == str(users.absolute())
    assert "MEDASSIST_REVIEW_SESSION" not in seen["env"]  # only --public's app trusts session cookies
    assert seen["cmd"][seen["cmd"].index("--server.enableAgentApi") + 1] == "false"
