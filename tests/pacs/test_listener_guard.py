"""The listener serves its peers, not its attackers (issue 17, item 5).

Real sockets on loopback, pynetdicom SCUs (and raw sockets for peers no SCU would be): who may
associate, how long a silent peer is kept, how many associations one peer may hold, how large an
instance may be and what is left when it is refused or cut off, memory while an instance streams
in, TLS. Each test fails if its defence is taken away.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import ipaddress
import logging
import socket
import ssl
import struct
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from conftest_orthanc import free_port, wait_until
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import CTImageStorage, Verification

from medassist.errors import MedassistError
from medassist.pacs import listener as listener_module
from medassist.pacs.guard import MIB, ListenerLimits, parse_peer_rule, tls_server_context
from medassist.pacs.listener import STATUS_OUT_OF_RESOURCES, StudyListener
from medassist.pacs.send import store_cstore

LISTENER = "MEDASSIST"
CT = pydicom.data.get_testdata_file("CT_small.dcm")


def no_triage(inputs, out_dir, options):
    return None


@contextlib.contextmanager
def running(tmp_path: Path, **kwargs) -> Iterator[tuple[StudyListener, int]]:
    """A started listener (studies never go idle, so nothing is triaged) and its port."""
    port = free_port()
    kwargs.setdefault("allow_ae", ["GOOD"])
    listener = StudyListener(LISTENER, port, tmp_path / "out", idle_seconds=3600, triage=no_triage, **kwargs)
    with listener:
        yield listener, port


def requestor(ae_title: str, timeout: float = 20.0) -> AE:
    """A pynetdicom SCU for CT and C-ECHO whose own timeouts stay out of the way."""
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    return ae


def ct_instance(pixel_bytes: int | None = None) -> pydicom.Dataset:
    """CT_small with a fresh SOP instance UID, optionally with ``pixel_bytes`` of pixel data."""
    ds = pydicom.dcmread(CT)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if pixel_bytes is not None:
        ds.Rows, ds.Columns = 1024, pixel_bytes // 2048
        ds.PixelData = bytes(ds.Rows * ds.Columns * 2)
    return ds


def ct_file(tmp_path: Path, pixel_bytes: int) -> Path:
    ds = ct_instance(pixel_bytes)
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def spooled(listener: StudyListener) -> list[Path]:
    return sorted(listener.spool_dir.rglob("*.dcm")) + sorted(listener.spool_dir.rglob(".*.part"))


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Whether the other end closes ``sock`` within ``within`` seconds (nothing is sent)."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


# ---------------------------------------------------------------------------------- who may send


def test_a_stranger_ae_is_rejected_and_the_reason_logged_without_patient_data(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="medassist"), running(tmp_path, allow_ae=["GOOD"]) as (listener, port):
        stranger = requestor("STRANGER").associate("127.0.0.1", port, ae_title=LISTENER)
        assert stranger.is_rejected and not stranger.is_established
        rj = stranger.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)  # calling AE not recognised
        ds = ct_instance()
        assert store_cstore("127.0.0.1", port, LISTENER, [ds], calling_aet="GOOD").ok
        assert [p.name for p in spooled(listener)] == [f"{ds.SOPInstanceUID}.dcm"]
    [refusal] = [r for r in caplog.records if "refused an association" in r.getMessage()]
    assert refusal.levelno == logging.WARNING
    assert "'STRANGER'" in refusal.getMessage() and "127.0.0.1" in refusal.getMessage()
    assert "not allowed" in refusal.getMessage()
    for identifier in (str(ds.PatientID), str(ds.PatientName), str(ds.StudyInstanceUID)):
        assert identifier not in caplog.text


def test_allow_ae_at_host_takes_that_ae_from_that_address_only(tmp_path):
    with running(tmp_path, allow_ae=["GOOD@127.0.0.2"]) as (listener, port):
        elsewhere = requestor("GOOD").associate("127.0.0.1", port, ae_title=LISTENER, bind_address=("127.0.0.1", 0))
        assert elsewhere.is_rejected
        there = requestor("GOOD").associate("127.0.0.1", port, ae_title=LISTENER, bind_address=("127.0.0.2", 0))
        assert there.is_established
        assert there.send_c_echo().Status == 0x0000
        there.release()


def test_without_allowed_aes_the_listener_does_not_start(tmp_path, capsys):
    from medassist.cli import main

    with pytest.raises(MedassistError, match="--allow-ae"):
        StudyListener(LISTENER, free_port(), tmp_path)
    assert main(["listen", "--out", str(tmp_path), "--port", str(free_port())]) == 2
    assert "--allow-ae AE[@HOST]" in capsys.readouterr().err


def test_listen_options_reach_the_listener(tmp_path, monkeypatch):
    from medassist.cli import main

    seen = {}
    monkeypatch.setattr(listener_module, "listen", lambda *args, **kwargs: seen.update(kwargs))
    argv = ["listen", "--out", str(tmp_path), "--allow-ae", "PACS", "--allow-ae", "CT1@127.0.0.1",
            "--max-associations", "8", "--max-per-peer", "2", "--max-instance-mb", "5", "--acse-timeout", "3",
            "--dimse-timeout", "7", "--network-timeout", "4.5"]
    assert main(argv) == 0
    assert seen["allow_ae"] == ["PACS", "CT1@127.0.0.1"] and seen["allow_any_ae"] is False and seen["tls"] is None
    assert seen["limits"] == ListenerLimits(acse_timeout=3, dimse_timeout=7, network_timeout=4.5, max_associations=8,
                                            max_per_peer=2, max_instance_bytes=5 * MIB)
    assert main(["listen", "--out", str(tmp_path), "--allow-any-ae"]) == 0
    assert seen["allow_any_ae"] is True and seen["limits"] == ListenerLimits()


def test_allow_rules_are_checked_when_read():
    rule = parse_peer_rule("CT1@127.0.0.1")
    assert (rule.ae, rule.addresses) == ("CT1", frozenset({"127.0.0.1"}))
    assert rule.matches("CT1", "127.0.0.1") and not rule.matches("CT1", "127.0.0.2") and not rule.matches("CT2", "127.0.0.1")
    assert parse_peer_rule(" PACS ").matches("PACS", "10.1.2.3")
    for bad in ("", "A" * 17, "BAD\\AE", "CT1@", "CT1@no-such-host.invalid"):
        with pytest.raises(MedassistError):
            parse_peer_rule(bad)


# ---------------------------------------------------------------------------------- holding on


def test_ten_silent_associations_from_an_allowed_peer_do_not_lock_out_another(tmp_path):
    limits = ListenerLimits(max_associations=10, max_per_peer=3, network_timeout=60)
    with running(tmp_path, allow_ae=["NOISY", "GOOD"], limits=limits) as (listener, port):
        noisy = requestor("NOISY", timeout=60)
        held = [noisy.associate("127.0.0.1", port, ae_title=LISTENER) for _ in range(10)]
        try:
            open_ones = [a for a in held if a.is_established]
            assert len(open_ones) == 3
            for refused in (a for a in held if not a.is_established):
                rj = refused.acceptor.primitive
                assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)  # transient: local limit
            ds = ct_instance()
            report = store_cstore("127.0.0.1", port, LISTENER, [ds], calling_aet="GOOD", timeout=20)
            assert report.ok and report.stored == [str(ds.SOPInstanceUID)]
            assert all(a.is_established for a in open_ones)  # stored while they were holding on
        finally:
            for assoc in held:
                if assoc.is_established:
                    assoc.release()


def test_connections_that_never_ask_do_not_lock_out_an_allowed_peer(tmp_path):
    limits = ListenerLimits(max_associations=10, acse_timeout=60)
    with running(tmp_path, limits=limits) as (listener, port):
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(10)]
        try:
            assert wait_until(lambda: len(listener._server.active_associations) >= 10, timeout=10)
            assert store_cstore("127.0.0.1", port, LISTENER, [ct_instance()], calling_aet="GOOD", timeout=20).ok
        finally:
            for sock in silent:
                sock.close()


def test_silent_peers_are_dropped_within_seconds(tmp_path):
    limits = ListenerLimits(acse_timeout=1, network_timeout=1)
    with running(tmp_path, limits=limits) as (listener, port):
        never_asks = socket.create_connection(("127.0.0.1", port), timeout=5)
        stalls = socket.create_connection(("127.0.0.1", port), timeout=5)
        stalls.sendall(b"\x01\x00" + struct.pack(">L", 1000) + b"\x00" * 10)  # 10 bytes of a 1000-byte request
        idle = requestor("GOOD", timeout=60).associate("127.0.0.1", port, ae_title=LISTENER)
        assert idle.is_established
        try:
            assert closed_by_peer(never_asks, within=8)
            assert closed_by_peer(stalls, within=8)
            assert wait_until(lambda: idle.is_aborted, timeout=8)
        finally:
            never_asks.close()
            stalls.close()


def test_a_pdu_longer_than_the_limit_is_not_read(tmp_path):
    with running(tmp_path) as (listener, port):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"\x01\x00" + struct.pack(">L", 64 * MIB))  # an association request of 64 MiB
        sent = 0
        with pytest.raises(OSError):  # the listener closed the connection instead of reading on
            while sent < 32 * MIB:
                sock.sendall(bytes(MIB))
                sent += MIB
        sock.close()
        assert sent < 32 * MIB


# ---------------------------------------------------------------------------------- instances


@pytest.fixture
def pynetdicom_tmp(tmp_path, monkeypatch) -> Path:
    """The folder pynetdicom streams incoming instances to (the process's temporary folder)."""
    folder = tmp_path / "pynetdicom-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_an_instance_over_the_size_cap_is_refused_and_nothing_of_it_kept(tmp_path, pynetdicom_tmp):
    cap = 1 * MIB
    sizes: list[int] = []

    class Recording(StudyListener):
        def _handle_store(self, event):
            sizes.append(Path(event.dataset_path).stat().st_size)  # what reached the disk
            return super()._handle_store(event)

    port = free_port()
    listener = Recording(LISTENER, port, tmp_path / "out", idle_seconds=3600, triage=no_triage, allow_ae=["GOOD"],
                         limits=ListenerLimits(max_instance_bytes=cap))
    with listener:
        assoc = requestor("GOOD").associate("127.0.0.1", port, ae_title=LISTENER)
        assert assoc.is_established
        big, small = ct_instance(3 * MIB), ct_instance()
        assert assoc.send_c_store(big).Status == STATUS_OUT_OF_RESOURCES
        assert assoc.send_c_store(small).Status == 0x0000  # the association goes on
        assoc.release()
        assert sizes[0] <= cap + 4096 and sizes[1] < cap  # the refused one never took more than the cap
        assert [p.name for p in spooled(listener)] == [f"{small.SOPInstanceUID}.dcm"]
        assert wait_until(lambda: not any(pynetdicom_tmp.iterdir()), timeout=10)


def test_a_transfer_cut_off_midway_leaves_no_file(tmp_path, pynetdicom_tmp, monkeypatch):
    source = ct_file(tmp_path, 8 * MIB)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    sent = []

    def cut_off(event):
        if type(event.pdu).__name__ == "P_DATA_TF":
            sent.append(1)
            if len(sent) == 3:  # about 2 MiB in: the connection drops
                event.assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)

    with running(tmp_path) as (listener, port):
        assoc = requestor("GOOD", timeout=5).associate("127.0.0.1", port, ae_title=LISTENER,
                                                       evt_handlers=[(evt.EVT_PDU_SENT, cut_off)])
        assert assoc.is_established
        with contextlib.suppress(Exception):
            assoc.send_c_store(source)
        assert len(sent) >= 3
        assert wait_until(lambda: not any(pynetdicom_tmp.iterdir()), timeout=15), list(pynetdicom_tmp.iterdir())
        assert spooled(listener) == []


# The sender runs in its own process, so only the listener's memory is traced here (pynetdicom's
# SCU queues every chunk of a file it sends).
SENDER = """
import sys
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage
from pydicom.uid import ExplicitVRLittleEndian
_config.STORE_SEND_CHUNKED_DATASET = True
ae = AE(ae_title="GOOD")
ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
assoc = ae.associate("127.0.0.1", int(sys.argv[1]), ae_title="MEDASSIST")
status = assoc.send_c_store(sys.argv[2]) if assoc.is_established else None
print(f"status=0x{status.Status:04X}" if status else "no association")
assoc.release()
"""


def test_memory_stays_bounded_while_an_instance_streams_in(tmp_path):
    import subprocess
    import sys

    source = ct_file(tmp_path, 24 * MIB)
    gc.collect()
    with running(tmp_path) as (listener, port):
        tracemalloc.start()
        try:
            sent = subprocess.run([sys.executable, "-c", SENDER, str(port), str(source)], capture_output=True,
                                  text=True, timeout=120)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert "status=0x0000" in sent.stdout, sent.stdout + sent.stderr
        [stored] = spooled(listener)
    assert peak < 8 * MIB, f"peak {peak / MIB:.1f} MiB while receiving a 24 MiB instance"
    from pynetdicom.dsutils import split_dataset

    (_, at_stored), (_, at_source) = split_dataset(stored), split_dataset(source)
    assert stored.read_bytes()[at_stored:] == source.read_bytes()[at_source:]  # the data set as sent


def test_an_instance_is_moved_into_the_spool_atomically_across_file_systems(tmp_path, monkeypatch):
    import errno
    import os

    source = tmp_path / "elsewhere.dcm"
    source.write_bytes(b"instance")
    target = tmp_path / "spool" / "1.2" / "1.2.3.dcm"
    target.parent.mkdir(parents=True)
    replace = os.replace

    def no_cross_device(src, dst):
        if Path(src) == source:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", no_cross_device)
    listener_module._move_into(source, target)
    assert target.read_bytes() == b"instance" and not source.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["1.2.3.dcm"]  # no .part left


# ---------------------------------------------------------------------------------- TLS


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def client_context(server_cert: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(server_cert))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


def test_tls_store_works_and_a_plain_connection_is_refused(tmp_path):
    server_cert, server_key = self_signed(tmp_path, "listener")
    tls = tls_server_context(server_cert, server_key)
    with running(tmp_path, tls=tls, limits=ListenerLimits(network_timeout=60)) as (listener, port):
        silent = socket.create_connection(("127.0.0.1", port), timeout=5)  # never says hello, for a minute
        try:
            assoc = requestor("GOOD").associate("127.0.0.1", port, ae_title=LISTENER,
                                                tls_args=(client_context(server_cert), "localhost"))
            assert assoc.is_established  # the silent one holds no one up
            ds = ct_instance()
            assert assoc.send_c_store(ds).Status == 0x0000
            assoc.release()
            assert [p.name for p in spooled(listener)] == [f"{ds.SOPInstanceUID}.dcm"]
            plain = requestor("GOOD", timeout=5).associate("127.0.0.1", port, ae_title=LISTENER)
            assert not plain.is_established
        finally:
            silent.close()


def test_tls_with_a_ca_requires_a_client_certificate(tmp_path):
    server_cert, server_key = self_signed(tmp_path, "listener")
    client = self_signed(tmp_path, "modality")
    tls = tls_server_context(server_cert, server_key, ca=client[0])
    with running(tmp_path, tls=tls) as (listener, port):
        anonymous = requestor("GOOD").associate("127.0.0.1", port, ae_title=LISTENER,
                                                tls_args=(client_context(server_cert), "localhost"))
        assert not (anonymous.is_established and "Status" in anonymous.send_c_echo())
        known = requestor("GOOD").associate("127.0.0.1", port, ae_title=LISTENER,
                                            tls_args=(client_context(server_cert, client), "localhost"))
        assert known.is_established
        assert known.send_c_echo().Status == 0x0000
        known.release()


def test_tls_files_that_cannot_be_loaded_are_a_clear_error(tmp_path):
    (tmp_path / "empty.pem").write_text("")
    with pytest.raises(MedassistError, match="cannot load"):
        tls_server_context(tmp_path / "empty.pem", tmp_path / "empty.pem")
    with pytest.raises(MedassistError, match="cannot load"):
        tls_server_context(tmp_path / "missing.crt", tmp_path / "missing.key")
