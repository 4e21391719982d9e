"""What the DICOM listener lets a peer do: who may associate, for how long, how much at once.

``StudyListener`` (``medassist.pacs.listener``) puts these in front of pynetdicom:

* ``AssociationGate`` - on each association request (``evt.EVT_REQUESTED``): the calling AE title,
  and with ``AE@host`` the peer's address, must match an allow rule (else rejected permanently,
  "calling AE title not recognised"); then at most ``max_per_peer`` associations per peer (calling
  AE at one address; with ``allow_any`` per address) and ``max_associations`` in all (else rejected
  transiently, "local limit exceeded"). Each refusal is logged with the AE title and address only.
* ``ReceiveGuard`` - a PDU longer than ``read_limit`` is not read (the connection is closed);
  the data set of one C-STORE is passed on to pynetdicom's file (``STORE_RECV_CHUNKED_DATASET``)
  only up to one byte past ``max_instance_bytes``, so the disk an instance takes is bounded and the
  store handler sees that it was over the cap; the file of a transfer cut off mid-way is deleted.
* ``guarded_server()`` - every accepted socket gets a read/write timeout (``network_timeout``), and
  the TLS handshake runs in the connection's own thread under that timeout, so a peer that says
  nothing, or stops mid-PDU, holds one thread for seconds and never the accept loop.
* ``tls_server_context`` - the ``ssl_context`` for ``--tls-cert/--tls-key [--tls-ca]``.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from medassist.errors import MedassistError

logger = logging.getLogger(__name__)

MIB = 1024**2
# The largest PDU the listener asks peers to send (P-DATA-TF); reads allow READ_SLACK more, and at
# least MIN_READ_LIMIT for an association request with many presentation contexts.
MAX_PDU = 1 * MIB
READ_SLACK = 64 * 1024
MIN_READ_LIMIT = 1 * MIB

# A-ASSOCIATE-RJ (result, source, diagnostic): PS3.8 9.3.4.
REJECT_NOT_ALLOWED = (0x01, 0x01, 0x03)  # rejected-permanent, service-user, calling AE title not recognised
REJECT_BUSY = (0x02, 0x03, 0x02)  # rejected-transient, service-provider (presentation), local limit exceeded


@dataclass(frozen=True)
class ListenerLimits:
    """Timeouts (seconds) and caps of the listener; the defaults are the CLI's (README, listener)."""

    acse_timeout: float = 10.0  # connection open -> association request; release; rejected peer closing
    dimse_timeout: float = 30.0  # waiting on a DIMSE message inside an operation
    network_timeout: float = 15.0  # an association with no PDU for this long is aborted; socket read/write timeout
    max_associations: int = 16  # admitted associations at once, all peers together
    max_per_peer: int = 4  # admitted associations at once from one peer
    max_instance_bytes: int = 2048 * MIB  # one received instance, as a file
    max_pdu: int = MAX_PDU

    def __post_init__(self) -> None:
        for name in ("acse_timeout", "dimse_timeout", "network_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise MedassistError(f"{name}: a positive number of seconds, got {value!r}")
        for name in ("max_associations", "max_per_peer", "max_instance_bytes", "max_pdu"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise MedassistError(f"{name}: an integer of at least 1, got {getattr(self, name)!r}")

    @property
    def read_limit(self) -> int:
        """The longest PDU (bytes after its 6-byte header) the listener reads."""
        return max(self.max_pdu, MIN_READ_LIMIT) + READ_SLACK


@dataclass(frozen=True)
class PeerRule:
    """One ``--allow-ae``: a calling AE title, and optionally the addresses it must come from."""

    ae: str
    host: str | None = None
    addresses: frozenset[str] = field(default_factory=frozenset)

    def matches(self, ae: str, address: str) -> bool:
        """Whether a request from ``ae`` at ``address`` (normalised, ``normal_address``) is allowed."""
        return ae == self.ae and (self.host is None or address in self.addresses)

    def __str__(self) -> str:
        return self.ae if self.host is None else f"{self.ae}@{self.host}"


def valid_ae_title(text: str) -> str:
    """``text`` stripped, if it is an AE title (1-16 characters, no backslash or control character)."""
    ae = text.strip()
    if not 1 <= len(ae) <= 16 or "\\" in ae or any(ord(c) < 32 or ord(c) == 127 for c in ae):
        raise MedassistError(f"AE title {text!r}: 1 to 16 characters, no backslash or control character")
    return ae


def parse_peer_rule(text: str) -> PeerRule:
    """``AE`` or ``AE@host`` (the host after the last ``@``: an address, or a name resolved now)."""
    ae, at, host = text.rpartition("@")
    if not at:
        return PeerRule(valid_ae_title(text))
    host = host.strip().strip("[]")
    if not host:
        raise MedassistError(f"--allow-ae {text!r}: no host after '@'")
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise MedassistError(f"--allow-ae {text!r}: cannot resolve {host!r} ({exc})") from exc
    return PeerRule(valid_ae_title(ae), host, frozenset(normal_address(info[4][0]) for info in infos))


def normal_address(address: str) -> str:
    """An IP address as compared in allow rules: IPv4-mapped IPv6 as IPv4, no zone id."""
    try:
        ip = ipaddress.ip_address(str(address).split("%", 1)[0])
    except ValueError:
        return str(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def _printable(text: str) -> str:
    """A peer-supplied string for a log line: at most 16 characters, nothing unprintable."""
    return ascii(str(text)[:16])


def requestor_of(assoc: Any) -> tuple[str, str]:
    """(calling AE title, normalised address) of an association being requested."""
    ae = str(assoc.requestor.primitive.calling_ae_title).strip()
    return ae, normal_address(assoc.requestor.address)


class AssociationGate:
    """Admits or rejects association requests (``on_requested``, bound to ``evt.EVT_REQUESTED``)."""

    def __init__(self, rules: Iterable[PeerRule], *, allow_any: bool, limits: ListenerLimits):
        self.rules = tuple(rules)
        self.allow_any = allow_any
        self.limits = limits
        self._admitted: dict[Any, tuple[str, str]] = {}  # live association -> its peer key
        self._lock = threading.Lock()

    def allowed(self, ae: str, address: str) -> bool:
        """Whether this calling AE at this address may associate at all."""
        return self.allow_any or any(rule.matches(ae, address) for rule in self.rules)

    def peer_key(self, ae: str, address: str) -> tuple[str, str]:
        """What ``max_per_peer`` counts by: the AE at an address (any AE title: the address)."""
        return ("*" if self.allow_any else ae, address)

    def admit(self, assoc: Any, ae: str, address: str) -> str | None:
        """Count ``assoc`` in if a slot is free; else why not. Finished associations free theirs."""
        key = self.peer_key(ae, address)
        with self._lock:
            self._admitted = {a: k for a, k in self._admitted.items() if a.is_alive() and a is not assoc}
            if len(self._admitted) >= self.limits.max_associations:
                return f"{len(self._admitted)} associations open, the most the listener takes"
            same = sum(1 for k in self._admitted.values() if k == key)
            if same >= self.limits.max_per_peer:
                return f"{same} associations open from this peer, the most one peer may have"
            self._admitted[assoc] = key
        return None

    def on_requested(self, event: Any) -> None:
        """Reject the request unless the peer is allowed and under its limits (fails closed)."""
        assoc = event.assoc
        try:
            ae, address = requestor_of(assoc)
            if not self.allowed(ae, address):
                self._reject(assoc, REJECT_NOT_ALLOWED, f"refused an association from AE {_printable(ae)} at "
                             f"{address}: calling AE not allowed (--allow-ae)")
                return
            why = self.admit(assoc, ae, address)
            if why:
                self._reject(assoc, REJECT_BUSY, f"refused an association from AE {_printable(ae)} at {address}: {why}")
        except Exception as exc:  # never accept because the check itself broke
            self._reject(assoc, REJECT_NOT_ALLOWED, f"refused an association: the check failed ({type(exc).__name__})")

    @staticmethod
    def _reject(assoc: Any, reason: tuple[int, int, int], message: str) -> None:
        logger.warning("listener: %s", message)
        try:
            if not assoc.is_rejected:
                assoc.acse.send_reject(*reason)
        except Exception:  # could not even reject: abort instead
            assoc.is_aborted = True
        assoc.kill()  # as pynetdicom's own rejections: waits until the reply is sent and the peer gone


class ReceiveGuard:
    """Bounds what one connection may make the listener hold (PDU size, instance size, leftovers)."""

    def __init__(self, limits: ListenerLimits):
        self.limits = limits
        self._state = threading.local()  # per DUL thread, i.e. per association: data set bytes so far

    def on_connection_open(self, event: Any) -> None:
        """``evt.EVT_CONN_OPEN``: make the socket refuse a PDU longer than ``read_limit``."""
        sock = event.assoc.dul.socket
        sock.recv = _bounded_recv(sock.recv, self.limits.read_limit, str(event.address[0]))

    def on_pdu_received(self, event: Any) -> None:
        """``evt.EVT_PDU_RECV``: pass on the data set of a message only up to one byte past the cap.

        The P-DATA-TF PDU is trimmed in place before pynetdicom writes it to the instance's file;
        a command fragment starts a new message.
        """
        from pynetdicom.pdu import P_DATA_TF

        pdu = event.pdu
        if not isinstance(pdu, P_DATA_TF):
            return
        room_total = self.limits.max_instance_bytes + 1
        for item in pdu.presentation_data_value_items:
            value = item.presentation_data_value or b""
            if not value:
                continue
            if value[0] & 0x01:  # command set fragment
                self._state.dataset_bytes = 0
                continue
            seen = getattr(self._state, "dataset_bytes", 0)
            room = max(0, room_total - seen)
            if len(value) - 1 > room:
                item.presentation_data_value = value[: 1 + room]
            self._state.dataset_bytes = seen + len(value) - 1

    def on_connection_closed(self, event: Any) -> None:
        """``evt.EVT_CONN_CLOSE``: delete the file of an instance whose transfer was cut off."""
        message = getattr(getattr(event.assoc, "dimse", None), "message", None)
        path = getattr(message, "_data_set_path", None)  # pynetdicom's file for the message being received
        if isinstance(path, Path) and path.exists():
            path.unlink(missing_ok=True)
            logger.info("listener: deleted an instance whose transfer was cut off (%s)", _address_of(event))


def _address_of(event: Any) -> str:
    try:
        return normal_address(event.assoc.requestor.address)
    except Exception:
        return "?"


def _bounded_recv(read: Callable[[int], bytearray], limit: int, peer: str) -> Callable[[int], bytearray]:
    """``read`` that raises (the DUL then closes the connection) when asked for more than ``limit``
    bytes: pynetdicom reads each PDU whole, for the length its header claims."""

    def recv(nr_bytes: int) -> bytearray:
        if nr_bytes > limit:
            logger.warning("listener: closed the connection from %s: a PDU of %d bytes, over the %d byte limit",
                           peer, nr_bytes, limit)
            raise OSError(f"PDU of {nr_bytes} bytes over the {limit} byte limit")
        return read(nr_bytes)

    return recv


@cache
def guarded_server() -> type:
    """pynetdicom's threaded server, with socket timeouts and the TLS handshake off the accept loop.

    For ``AE.make_server(..., server_class=guarded_server())``, run with ``serve_forever`` in a
    thread; its ``shutdown`` does not expect the AE to know it (``AE.start_server`` is not used).
    Built on first use, so that pynetdicom is imported only when a listener starts.
    """
    from pynetdicom.transport import ThreadedAssociationServer

    class GuardedServer(ThreadedAssociationServer):
        def get_request(self) -> tuple[socket.socket, Any]:
            """Accept a connection; give it a timeout; wrap it for TLS without handshaking yet."""
            client, address = self.socket.accept()
            client.settimeout(self.ae.network_timeout)
            if self.ssl_context:
                client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
            return client, address

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            """In the connection's thread: the TLS handshake (bounded by the socket timeout), then pynetdicom."""
            if isinstance(request, ssl.SSLSocket):
                try:
                    request.do_handshake()
                except (OSError, ValueError) as exc:  # ssl.SSLError, a timeout, a plain DICOM peer
                    logger.warning("listener: TLS handshake with %s failed: %s", normal_address(client_address[0]),
                                   type(exc).__name__ if isinstance(exc, TimeoutError) else exc)
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)

        def shutdown(self) -> None:
            """Stop accepting and close the listening socket."""
            socketserver.BaseServer.shutdown(self)
            self.server_close()

    return GuardedServer


def tls_server_context(cert: str | Path, key: str | Path, ca: str | Path | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ server context with this certificate chain and key; with ``ca``, peers must
    present a certificate issued by it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise MedassistError(f"TLS certificate {cert} / key {key}: cannot load ({exc})") from exc
    try:
        if Path(key).stat().st_mode & 0o077:
            logger.warning("listener: the TLS key %s can be read by other users (chmod 600 it)", key)
    except OSError:
        pass
    if ca is not None:
        try:
            context.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise MedassistError(f"TLS CA {ca}: cannot load ({exc})") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def gate_rules(allow_ae: Sequence[str]) -> tuple[PeerRule, ...]:
    """The ``--allow-ae`` values as rules (each checked; host names resolved)."""
    return tuple(parse_peer_rule(text) for text in allow_ae)
