"""Start the review app: ``streamlit run apps/streamlit_viewer.py`` bound to loopback.

The viewer shows patient IDs and images, so by default it listens on 127.0.0.1 only. Binding to
any other address needs ``MEDASSIST_REVIEW_PASSWORD`` in the environment; the app then asks for
that password before showing anything. (A shared password over plain HTTP is a stopgap: put a
TLS reverse proxy with real accounts in front for anything beyond a trusted network.)
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from medassist.datamodel import worklist_path
from medassist.errors import MedassistError
from medassist.keys import KEY_FILE_ENV
from medassist.review.store import default_db_path, open_store

PASSWORD_ENV = "MEDASSIST_REVIEW_PASSWORD"
APP = Path(__file__).resolve().parents[2] / "apps" / "streamlit_viewer.py"


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build_command(out_dir: str | os.PathLike[str], *, port: int = 8501, host: str = "127.0.0.1") -> list[str]:
    """The ``streamlit run`` command line: headless, no usage statistics, no file watcher."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--client.toolbarMode", "minimal",
        "--client.showErrorDetails", "type",
        "--",
        str(Path(out_dir).resolve()),
    ]


def check_launch(out_dir: str | os.PathLike[str], *, port: int, host: str,
                 key_file: str | os.PathLike[str] | None = None) -> None:
    """Refuse what would not work or would expose the app: raises MedassistError.

    The decision log is opened (created on first use) and verified here, so a log that fails
    verification stops the command before the app starts.
    """
    if not APP.is_file():
        raise MedassistError(f"{APP}: the review app is missing (run from a source checkout)")
    worklist_path(out_dir)  # raises when OUT has no worklist
    if not 1 <= int(port) <= 65535:
        raise MedassistError(f"port {port}: not between 1 and 65535")
    if not is_loopback(host) and not os.environ.get(PASSWORD_ENV):
        raise MedassistError(
            f"host {host}: refusing to serve patient images beyond this machine without a login; "
            f"set {PASSWORD_ENV} (the app will ask for it) or use --host 127.0.0.1"
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host.strip("[]"), int(port)))
        except OSError as exc:
            raise MedassistError(f"{host}:{port}: cannot listen there ({exc.strerror or exc})") from exc
    open_store(default_db_path(out_dir), key_file=key_file)


def launch(out_dir: str | os.PathLike[str], *, port: int = 8501, host: str = "127.0.0.1",
           key_file: str | os.PathLike[str] | None = None) -> int:
    """Run the review app until it stops (Ctrl-C); returns streamlit's exit code."""
    check_launch(out_dir, port=port, host=host, key_file=key_file)
    env = dict(os.environ, MEDASSIST_OUT=str(Path(out_dir).resolve()))
    if key_file is not None:
        env[KEY_FILE_ENV] = str(Path(key_file).expanduser().absolute())
    print(f"medassist review: http://{host}:{port}  (decisions in {Path(out_dir) / 'decisions.sqlite'})", flush=True)
    process = subprocess.Popen(build_command(out_dir, port=port, host=host), env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()
