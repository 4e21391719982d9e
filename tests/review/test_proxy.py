"""`review --public` for real: nginx with TLS in front of Streamlit, the project's auth endpoint.

The media URLs come from a signed-in session driven over the real WebSocket (the app renders a
radiograph); then they are fetched with the session, without it, with a forged cookie and after
signing out. Skipped when nginx is not installed (make system-deps installs it).
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from medassist.review import accounts, proxy, session
from medassist.review.server import build_command
from medassist.review.throttle import LoginThrottle
from review_factory import PASSWORD, Clock

pytestmark = pytest.mark.skipif(proxy.nginx_binary() is None, reason="nginx is not installed (make system-deps)")



def self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (what a site's own certificate stands in for)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medassist test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Client:
    """HTTPS to the proxy, trusting only the test certificate, never following redirects."""

    def __init__(self, base: str, cert: Path) -> None:
        self.base = base
        self.context = ssl.create_default_context(cafile=str(cert))
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect(),
                                                  urllib.request.HTTPSHandler(context=self.context))

    def request(self, path: str, *, cookie: str | None = None, form: dict | None = None) -> tuple[int, dict, bytes]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(self.base + path, data=data)
        if cookie:
            request.add_header("Cookie", f"{session.COOKIE_NAME}={cookie}")
        try:
            with self.opener.open(request, timeout=30) as reply:
                return reply.status, dict(reply.headers), reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def sign_in(self, name: str, password: str) -> tuple[int, dict, bytes]:
        return self.request(proxy.LOGIN_PATH, form={"name": name, "password": password})


def token_of(headers: dict) -> str:
    cookie = headers["Set-Cookie"]
    return cookie.split(";")[0].split("=", 1)[1]


@pytest.fixture(scope="module")
def public(tmp_path_factory):
    """One `review --public` for the module: triage OUT, an account, a self-signed certificate."""
    from medassist.review import logic
    from review_factory import make_triage_out

    folder = tmp_path_factory.mktemp("public")
    logic.clear_caches()
    out = make_triage_out(folder / "run")
    users = folder / "conf" / "review-users.json"
    accounts.add_user("dr.grey", PASSWORD, users)
    cert, key = self_signed(folder)
    clock = Clock()
    port = proxy.free_port()
    server = proxy.start_public(
        out, host="127.0.0.1", port=port, cert=cert, key=key, users_file=users,
        app_command=lambda app_port: build_command(out, port=app_port, host="127.0.0.1"),
        throttle=LoginThrottle(clock=clock, free=3, base=5), log_file=folder / "server.log",
    )
    try:
        yield server, Client(server.url, cert), clock, out, folder / "server.log"
    finally:
        server.stop()


def drive_app(public_url: str, cert: Path, token: str | None) -> tuple[bytes, list[str]]:
    """Open the app's WebSocket as a browser would, open study ACC001; (all bytes received, media URLs)."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.sync.client import connect

    context = ssl.create_default_context(cafile=str(cert))
    url = public_url.replace("https://", "wss://") + "/_stcore/stream"
    headers = {"Cookie": f"{session.COOKIE_NAME}={token}"} if token else {}
    received, elements = b"", []
    with connect(url, ssl=context, origin=public_url, subprotocols=["streamlit"], additional_headers=headers,
                 proxy=None, max_size=None, open_timeout=30) as ws:

        def run(widget: tuple[str, str] | None = None) -> None:
            nonlocal received
            back = BackMsg()
            back.rerun_script.query_string = ""
            if widget:
                state = back.rerun_script.widget_states.widgets.add()
                state.id, state.string_value = widget
            ws.send(back.SerializeToString())
            while True:
                data = ws.recv(timeout=120)
                received += data
                message = ForwardMsg()
                message.ParseFromString(data)
                if message.WhichOneof("type") == "delta" and message.delta.WhichOneof("type") == "new_element":
                    elements.append(message.delta.new_element)
                if message.WhichOneof("type") == "script_finished":
                    return

        run()
        box = next(e.selectbox for e in elements if e.WhichOneof("type") == "selectbox" and e.selectbox.id.endswith("-study"))
        run((box.id, next(option for option in box.options if "ACC001" in option)))
    urls = [img.url for e in elements if e.WhichOneof("type") == "imgs" for img in e.imgs.imgs]
    return received, urls


def test_only_the_sign_in_page_is_served_without_a_session(public):
    server, client, *_ = public
    status, _, body = client.request(proxy.LOGIN_PATH)
    assert status == 200 and b"Sign in" in body
    for path in ("/", "/_stcore/health", "/_stcore/host-config", "/media/0123abcd.png", "/component/x/index.html",
                 "/_stcore/stream", "/app/static/x.png", "/_stcore/upload_file/x", "/_stcore/agent/interact",
                 "/static/js/main.js", "/?study=1"):
        status, headers, body = client.request(path)
        assert status == 303 and headers["Location"] == proxy.LOGIN_PATH, path
        assert b"streamlit" not in body.lower(), path
    assert client.request(proxy.CHECK_PATH)[0] == 404  # nginx's internal check is not reachable from outside


def test_sign_in_sets_a_private_cookie_and_refuses_wrong_passwords(public):
    server, client, *_ = public
    status, _, body = client.sign_in("dr.grey", "not the password")
    assert status == 401 and b"Wrong account name or password" in body
    status, headers, _ = client.sign_in("DR.GREY", PASSWORD)
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(session.COOKIE_NAME + "=")
    for attribute in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert attribute in cookie
    status, _, body = client.request("/_stcore/health", cookie=token_of(headers))
    assert status == 200 and body == b"ok"


def test_media_urls_need_the_session(public):
    server, client, _, out, log = public
    token = token_of(client.sign_in("dr.grey", PASSWORD)[1])
    received, urls = drive_app(server.url, cert_of(public), token)
    assert b"PID-001" in received  # the worklist table, with patient IDs, came over the signed-in WebSocket
    assert b"Signed in as **dr.grey**" in received and b"Recorded as: dr.grey" in received  # from the cookie
    media = [u for u in urls if re.fullmatch(r"/media/[0-9a-f]+\.png", u)]
    assert media, urls
    for url in media:
        status, headers, body = client.request(url, cookie=token)
        assert status == 200 and body.startswith(b"\x89PNG") and headers["Content-Type"] == "image/png"
        status, headers, body = client.request(url)  # the URL alone, as curl would fetch it
        assert status == 303 and not body.startswith(b"\x89PNG")
        payload, mac = token.split(".")
        forged = session.issue(b"x" * 32, "head.of.radiology")[0].split(".")[0] + "." + mac
        assert client.request(url, cookie=forged)[0] == 303
        assert client.request(url, cookie=payload + "." + "0" * 64)[0] == 303
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as refused:  # the WebSocket itself: no session, no worklist
        drive_app(server.url, cert_of(public), None)
    assert b"Sign in" in refused.value.response.body  # redirected to the sign-in page, never upgraded

    status, headers, _ = client.request(proxy.LOGOUT_PATH, cookie=token)
    assert status == 303 and "Max-Age=0" in headers["Set-Cookie"]
    assert client.request(media[0], cookie=token)[0] == 303  # signed out: the old cookie opens nothing
    text = log.read_text(errors="replace")
    assert PASSWORD not in text and token not in text and "PID-001" not in text  # nothing secret in the logs


def test_removed_account_loses_its_session(public, tmp_path):
    server, client, *_ = public
    accounts.add_user("house", PASSWORD, server.auth.users_file)
    token = token_of(client.sign_in("house", PASSWORD)[1])
    assert client.request("/_stcore/health", cookie=token)[0] == 200
    accounts.remove_user("house", server.auth.users_file)
    assert client.request("/_stcore/health", cookie=token)[0] == 303


def test_failed_sign_ins_are_slowed_down(public):
    server, client, clock, *_ = public
    for _ in range(3):
        assert client.sign_in("dr.grey", "a wrong guess")[0] == 401
    status, headers, body = client.sign_in("dr.grey", "a wrong guess")
    assert status == 429 and headers["Retry-After"] == "5" and b"try again in 5 s" in body
    status, _, body = client.sign_in("dr.grey", PASSWORD)  # not even checked while locked
    assert status == 429 and b"try again in 5 s" in body
    status, _, body = client.sign_in("someone.else", PASSWORD)  # this client is locked too
    assert status == 429
    clock.now += 5
    assert client.sign_in("dr.grey", PASSWORD)[0] == 303


def cert_of(public) -> Path:
    return public[4].parent / "cert.pem"
