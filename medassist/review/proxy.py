"""``medassist review --public``: nginx (TLS) in front of Streamlit, every path behind a sign-in.

Streamlit serves media (``/media/...``: the rendered radiographs, downloads), component files and
its WebSocket (the worklist table) to anyone who can reach it, so beyond loopback it never faces the
network itself:

* nginx listens on ``HOST:PORT`` with the site's TLS certificate and, for every request except the
  sign-in page, asks this project's auth endpoint first (``auth_request``); no valid session, no
  byte from Streamlit (a 303 to the sign-in page instead);
* the auth endpoint (``AuthService``, stdlib HTTP on a Unix socket in a private 0700 folder) shows
  the sign-in form, checks name and password against the users file (``accounts``), slows failed
  sign-ins down per account and per client address (``throttle``, the client address being what
  nginx saw), and sets a signed session cookie (``session``); signing out ends the session;
* Streamlit listens on 127.0.0.1 on a free port, and the app itself accepts only a session cookie
  whose signature verifies, and records that name as the reviewer.
"""

from __future__ import annotations

import contextlib
import html
import http.server
import logging
import os
import pwd
import shutil
import signal
import socket
import socketserver
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from pathlib import Path

from medassist.errors import MedassistError
from medassist.keys import KEY_FILE_ENV, load_site_key
from medassist.review import accounts, session
from medassist.review.throttle import LoginThrottle

log = logging.getLogger(__name__)

PREFIX = "/_medassist"
CHECK_PATH = f"{PREFIX}/check"
LOGIN_PATH = f"{PREFIX}/login"
LOGOUT_PATH = f"{PREFIX}/logout"
MODE_ENV = "MEDASSIST_REVIEW_SESSION"  # "proxy": the app takes its reviewer from the session cookie
MAX_FORM = 4096
START_TIMEOUT = 120.0


# -- the auth endpoint -----------------------------------------------------------------------------


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """One line, no traceback (a peer that hung up early is no error at all)."""
        error = sys.exc_info()[1]
        if not isinstance(error, (BrokenPipeError, ConnectionResetError)):
            log.warning("auth endpoint: %s: %s", type(error).__name__, error)


class AuthService:
    """Sign-in, sign-out and the per-request session check nginx asks for."""

    def __init__(self, socket_path: Path, *, users_file: Path, site_key: bytes,
                 throttle: LoginThrottle | None = None, lifetime: int = session.SESSION_SECONDS) -> None:
        self.socket_path = socket_path
        self.users_file = users_file
        self.key = session.session_key(site_key)
        self.throttle = throttle or LoginThrottle()
        self.lifetime = lifetime
        self._live: dict[str, session.Session] = {}
        self._lock = threading.Lock()
        service = self

        class Handler(_Handler):
            auth = service

        self._server = _UnixHTTPServer(str(socket_path), Handler)
        os.chmod(socket_path, 0o600)
        self._thread = threading.Thread(target=self._server.serve_forever, name="medassist-auth", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def sign_in(self, name: str, password: str, client: str) -> tuple[int, str]:
        """(HTTP status, token or message): 200 with a token, 401 wrong, 429 throttled."""
        result = accounts.sign_in(name, password, client, throttle=self.throttle, path=self.users_file)
        if result.user is None:
            log.warning("sign-in refused%s", " (throttled)" if result.retry_after else "")
            return (429 if result.retry_after else 401), result.message
        token, new = session.issue(self.key, result.user, lifetime=self.lifetime)
        with self._lock:
            self._live[new.nonce] = new
        log.info("signed in: %s", result.user)
        return 200, token

    def check(self, token: str | None) -> str | None:
        """The signed-in name when ``token`` is a live session of an existing account, else None."""
        found = session.verify(self.key, token)
        if found is None:
            return None
        with self._lock:
            live = self._live.get(found.nonce)
            if live is None or live.expires <= time.time():
                self._live.pop(found.nonce, None)
                return None
        return found.user if accounts.account_exists(found.user, self.users_file) else None

    def sign_out(self, token: str | None) -> None:
        """End the session ``token`` stands for (if any)."""
        found = session.verify(self.key, token)
        if found is not None:
            with self._lock:
                self._live.pop(found.nonce, None)


class _Handler(http.server.BaseHTTPRequestHandler):
    auth: AuthService
    server_version = "medassist"
    sys_version = ""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # nginx logs requests; this endpoint logs sign-ins only (never a password or cookie)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = urllib.parse.urlsplit(self.path).path
        if path == CHECK_PATH:
            user = self.auth.check(self._cookie())
            self._reply(204 if user else 401, "", headers={"X-Medassist-User": user} if user else None)
        elif path == LOGIN_PATH:
            self._page(200, "")
        elif path == LOGOUT_PATH:
            self.auth.sign_out(self._cookie())
            self._reply(303, "", headers={"Location": LOGIN_PATH, "Set-Cookie": _cookie_header("", 0)})
        else:
            self._reply(404, "not found")

    def do_POST(self) -> None:  # noqa: N802
        if urllib.parse.urlsplit(self.path).path != LOGIN_PATH:
            self._reply(404, "not found")
            return
        origin = self.headers.get("Origin")
        if origin and urllib.parse.urlsplit(origin).netloc != self.headers.get("Host", ""):
            self._reply(403, "sign-in from another site refused")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_FORM:
            self._reply(413, "form too large")
            return
        form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        name = form.get("name", [""])[0]
        password = form.get("password", [""])[0]
        client = self.headers.get("X-Real-IP") or "unknown"
        status, result = self.auth.sign_in(name, password, client)
        if status == 200:
            self._reply(303, "", headers={"Location": "/", "Set-Cookie": _cookie_header(result, self.auth.lifetime)})
        else:
            self._page(status, result, headers={"Retry-After": _seconds_in(result)} if status == 429 else None)

    def _cookie(self) -> str | None:
        try:
            jar = SimpleCookie(self.headers.get("Cookie") or "")
        except CookieError:
            return None
        morsel = jar.get(session.COOKIE_NAME)
        return morsel.value if morsel else None

    def _page(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._reply(status, _LOGIN_PAGE.format(message=html.escape(message)), content_type="text/html; charset=utf-8",
                    headers=headers)

    def _reply(self, status: int, body: str, *, content_type: str = "text/plain; charset=utf-8",
               headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)


def _seconds_in(message: str) -> str:
    """The N of "try again in N s"."""
    return message.rsplit("try again in ", 1)[-1].split(" ", 1)[0]


def _cookie_header(token: str, max_age: int) -> str:
    """The session cookie: TLS only, not readable by scripts, never sent from other sites."""
    return f"{session.COOKIE_NAME}={token}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict"


_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medassist review: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:sans-serif;max-width:22rem;margin:4rem auto}}label,input,button{{display:block;width:100%;
margin:.4rem 0}}p.msg{{color:#b00020}}</style></head>
<body><h1>medassist review</h1><p class="msg">{message}</p>
<form method="post" action="/_medassist/login">
<label>Account <input name="name" autocomplete="username" required autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button></form></body></html>
"""


# -- nginx -----------------------------------------------------------------------------------------


def nginx_binary() -> str | None:
    """The nginx executable (PATH, then /usr/sbin), or None."""
    return shutil.which("nginx") or (str(Path("/usr/sbin/nginx")) if Path("/usr/sbin/nginx").is_file() else None)


def nginx_config(*, run_dir: Path, host: str, port: int, cert: Path, key: Path, auth_socket: Path,
                 app_port: int) -> str:
    """The nginx configuration: TLS on HOST:PORT, every location behind ``auth_request``."""
    listen = f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"
    user = pwd.getpwuid(os.geteuid()).pw_name
    temp = run_dir / "tmp"
    return f"""# written by medassist review --public; regenerated on every start
{f'user {user};' if os.geteuid() == 0 else ''}
worker_processes 1;
pid {run_dir / 'nginx.pid'};
error_log stderr warn;
events {{ worker_connections 512; }}
http {{
  default_type application/octet-stream;
  server_tokens off;
  absolute_redirect off;
  # no query strings, cookies or bodies in the log: method, path (no identifiers in Streamlit's), status
  log_format medassist '$time_iso8601 $remote_addr "$request_method $uri" $status $body_bytes_sent';
  access_log /dev/stderr medassist;
  client_body_temp_path {temp / 'body'};
  proxy_temp_path {temp / 'proxy'};
  fastcgi_temp_path {temp / 'fastcgi'};
  uwsgi_temp_path {temp / 'uwsgi'};
  scgi_temp_path {temp / 'scgi'};
  client_max_body_size 1m;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream medassist_auth {{ server unix:{auth_socket}; }}
  upstream medassist_app {{ server 127.0.0.1:{app_port}; }}
  server {{
    listen {listen} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers on;
    add_header Strict-Transport-Security "max-age=31536000" always;
    add_header X-Content-Type-Options nosniff always;
    add_header X-Frame-Options DENY always;
    add_header Referrer-Policy no-referrer always;
    location = {CHECK_PATH} {{
      internal;
      proxy_pass http://medassist_auth;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Real-IP $remote_addr;
    }}
    location {PREFIX}/ {{
      proxy_pass http://medassist_auth;
      proxy_set_header Host $http_host;
      proxy_set_header X-Real-IP $remote_addr;
    }}
    location / {{
      auth_request {CHECK_PATH};
      error_page 401 = @signin;
      proxy_pass http://medassist_app;
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout 3600s;
      proxy_buffering off;
    }}
    location @signin {{ return 303 {LOGIN_PATH}; }}
  }}
}}
"""


# -- the whole public server -----------------------------------------------------------------------


@dataclass
class PublicServer:
    """A running ``review --public``: nginx, the auth endpoint and Streamlit; ``stop()`` ends them."""

    url: str
    run_dir: Path
    auth: AuthService
    app: subprocess.Popen
    nginx: subprocess.Popen
    _stopped: bool = field(default=False, repr=False)

    def wait(self) -> int:
        """Until nginx or Streamlit stops (or Ctrl-C, raised to the caller)."""
        while True:
            for process in (self.nginx, self.app):
                code = process.poll()
                if code is not None:
                    return code
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop nginx and Streamlit, then the auth endpoint; remove the private folder."""
        if self._stopped:
            return
        self._stopped = True
        for process in (self.nginx, self.app):
            _end(process)
        self.auth.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def check_tls_files(cert: Path | None, key: Path | None) -> tuple[Path, Path]:
    """The certificate and key files, or MedassistError (missing, or a key everyone can read)."""
    if cert is None or key is None:
        raise MedassistError("--public needs the site's TLS certificate and key: --tls-cert FILE --tls-key FILE")
    for path in (cert, key):
        if not Path(path).is_file():
            raise MedassistError(f"{path}: no such TLS file")
    if Path(key).stat().st_mode & stat.S_IRWXO:
        raise MedassistError(f"{key}: the TLS key is readable by everyone; run: chmod 600 {key}")
    return Path(cert).resolve(), Path(key).resolve()


def start_public(out_dir: str | os.PathLike[str], *, host: str, port: int, cert: Path, key: Path,
                 app_command: Callable[[int], list[str]], users_file: Path, key_file: Path | None = None,
                 throttle: LoginThrottle | None = None, log_file: Path | None = None) -> PublicServer:
    """Start Streamlit on loopback, the auth endpoint and nginx; returns once nginx answers."""
    nginx = nginx_binary()
    if nginx is None:
        raise MedassistError("--public needs nginx (Debian: apt-get install nginx; or make system-deps)")
    cert, key = check_tls_files(cert, key)
    if not accounts.has_accounts(users_file):
        raise MedassistError(f"{users_file}: no reviewer accounts; add one with: medassist users add NAME")
    site_key = load_site_key(key_file)
    run_dir = Path(tempfile.mkdtemp(prefix="medassist-review-"))  # 0700
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (run_dir / "tmp" / sub).mkdir(parents=True)
    auth = AuthService(run_dir / "auth.sock", users_file=users_file, site_key=site_key, throttle=throttle)
    auth.start()
    out = open(log_file, "ab") if log_file else None  # noqa: SIM115 - handed to the processes
    app_port = free_port()
    env = dict(os.environ, MEDASSIST_OUT=str(Path(out_dir).resolve()), **{MODE_ENV: "proxy"},
               **{accounts.USERS_FILE_ENV: str(Path(users_file).absolute())})
    if key_file is not None:
        env[KEY_FILE_ENV] = str(Path(key_file).expanduser().absolute())
    app = subprocess.Popen(app_command(app_port), env=env, stdout=out, stderr=out, start_new_session=True)
    proxy_process: subprocess.Popen | None = None
    try:
        _wait_for(lambda: _healthy(app_port), app, "Streamlit")
        conf = run_dir / "nginx.conf"
        conf.write_text(nginx_config(run_dir=run_dir, host=host, port=port, cert=cert, key=key,
                                     auth_socket=auth.socket_path, app_port=app_port))
        base = [nginx, "-p", str(run_dir), "-e", "stderr", "-c", str(conf)]
        test = subprocess.run(base + ["-t", "-q"], capture_output=True, text=True)
        if test.returncode != 0:
            raise MedassistError(f"nginx refused its configuration: {test.stderr.strip()[-800:]}")
        proxy_process = subprocess.Popen(base + ["-g", "daemon off;"], stdout=out, stderr=out, start_new_session=True)
        _wait_for(lambda: _accepts(host, port), proxy_process, "nginx")
    except BaseException:
        for process in (proxy_process, app):
            if process is not None:
                _end(process)
        auth.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        if out is not None:
            out.close()
    shown = f"[{host}]" if ":" in host else host
    return PublicServer(f"https://{shown}:{port}", run_dir, auth, app, proxy_process)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as reply:
            return reply.read() == b"ok"
    except OSError:
        return False


def _accepts(host: str, port: int) -> bool:
    target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host.strip("[]") == "::" else host.strip("[]")
    try:
        with socket.create_connection((target, port), timeout=2):
            return True
    except OSError:
        return False


def _wait_for(ready: Callable[[], bool], process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if process.poll() is not None:
            raise MedassistError(f"{what} stopped while starting (exit {process.returncode})")
        if time.monotonic() > deadline:
            raise MedassistError(f"{what} did not start within {START_TIMEOUT:.0f} s")
        time.sleep(0.3)


def _end(process: subprocess.Popen) -> None:
    """SIGTERM (nginx: fast shutdown), then SIGKILL after 10 s."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve_public(out_dir: str | os.PathLike[str], **options: object) -> int:
    """``start_public`` then wait until Ctrl-C, SIGTERM or a process stops; returns its exit code.
    nginx and Streamlit are stopped on the way out whichever way it ends."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server = start_public(out_dir, **options)  # type: ignore[arg-type]
        print(f"medassist review: {server.url}  (sign in with a reviewer account; TLS, nginx in front)", flush=True)
        try:
            return server.wait()
        except KeyboardInterrupt:
            return 130
        finally:
            server.stop()
    finally:
        signal.signal(signal.SIGTERM, previous)
