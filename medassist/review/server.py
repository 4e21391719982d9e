"""Start the review app: ``streamlit run apps/streamlit_viewer.py`` bound to loopback.

The viewer shows patient IDs and images. Without ``--public`` it listens on 127.0.0.1 only: with
reviewer accounts in the users file (``accounts``) the app asks each reviewer to sign in; without
any, it runs in single-user mode and marks every decision "(unauthenticated, loopback)". Beyond
loopback Streamlit never faces the network itself: ``--public`` puts nginx with TLS and a sign-in
in front of every path (``proxy``), and needs accounts.
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
from medassist.optional import require_extra
from medassist.review import accounts
from medassist.review.store import default_db_path, open_store

PASSWORD_ENV = "MEDASSIST_REVIEW_PASSWORD"  # the shared password of old: refused now, accounts instead
PUBLIC_PORT = 8443
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
        "--server.enableXsrfProtection", "true",
        "--server.enableStaticServing", "false",
        "--server.enableAgentApi", "false",
        "--",
        str(Path(out_dir).resolve()),
    ]


def check_launch(out_dir: str | os.PathLike[str], *, port: int, host: str,
                 key_file: str | os.PathLike[str] | None = None,
                 users_file: str | os.PathLike[str] | None = None, public: bool = False) -> None:
    """Refuse what would not work or would expose the app: raises MedassistError.

    The decision log is opened (created on first use) and verified here, so a log that fails
    verification stops the command before the app starts.
    """
    if not APP.is_file():
        raise MedassistError(f"{APP}: the review app is missing (run from a source checkout)")
    worklist_path(out_dir)  # raises when OUT has no worklist
    if not 1 <= int(port) <= 65535:
        raise MedassistError(f"port {port}: not between 1 and 65535")
    if os.environ.get(PASSWORD_ENV):
        raise MedassistError(
            f"{PASSWORD_ENV} is set: the shared password is gone, reviewers sign in with their own accounts; "
            f"add them with 'medassist users add NAME' and unset {PASSWORD_ENV}"
        )
    if not public and not is_loopback(host):
        raise MedassistError(
            f"host {host}: refusing to serve patient images beyond this machine from Streamlit itself; "
            "use --public (nginx with TLS and a sign-in in front, reviewer accounts) or --host 127.0.0.1"
        )
    users = accounts.users_path(users_file)
    if Path(out_dir).resolve() in users.resolve().parents:
        raise MedassistError(f"{users}: the users file is inside the output folder {out_dir}; keep it elsewhere "
                             f"({accounts.USERS_FILE_ENV} or --users-file)")
    if public and not accounts.has_accounts(users):
        raise MedassistError(f"{users}: no reviewer accounts; --public needs them: medassist users add NAME")
    accounts.read_users(users)  # raises on a users file others can read, or one that is not one
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host.strip("[]"), int(port)))
        except OSError as exc:
            raise MedassistError(f"{host}:{port}: cannot listen there ({exc.strerror or exc})") from exc
    open_store(default_db_path(out_dir), key_file=key_file)


def launch(out_dir: str | os.PathLike[str], *, port: int | None = None, host: str = "127.0.0.1",
           key_file: str | os.PathLike[str] | None = None, users_file: str | os.PathLike[str] | None = None,
           public: bool = False, tls_cert: str | os.PathLike[str] | None = None,
           tls_key: str | os.PathLike[str] | None = None) -> int:
    """Run the review app until it stops (Ctrl-C); returns streamlit's (or nginx's) exit code.

    Needs the review extra (Streamlit, argon2-cffi): ``MissingDependency`` before anything is opened."""
    require_extra("review", feature="medassist review")
    port = port or (PUBLIC_PORT if public else 8501)
    check_launch(out_dir, port=port, host=host, key_file=key_file, users_file=users_file, public=public)
    users = accounts.users_path(users_file).absolute()
    if public:
        from medassist.review import proxy

        proxy.check_tls_files(Path(tls_cert) if tls_cert else None, Path(tls_key) if tls_key else None)
        return proxy.serve_public(
            out_dir, host=host, port=port, cert=Path(tls_cert), key=Path(tls_key), users_file=users,
            key_file=Path(key_file) if key_file is not None else None,
            app_command=lambda app_port: build_command(out_dir, port=app_port, host="127.0.0.1"),
        )
    env = dict(os.environ, MEDASSIST_OUT=str(Path(out_dir).resolve()), **{accounts.USERS_FILE_ENV: str(users)})
    env.pop("MEDASSIST_REVIEW_SESSION", None)
    if key_file is not None:
        env[KEY_FILE_ENV] = str(Path(key_file).expanduser().absolute())
    mode = "reviewers sign in" if accounts.has_accounts(users) else "single-user mode, no accounts"
    print(f"medassist review: http://{host}:{port}  ({mode}; decisions in {Path(out_dir) / 'decisions.sqlite'})",
          flush=True)
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
