"""The reviewed SR's DICOM digital signature (PS3.15 Annex C): signed, read back and verified, broken by a
changed value, and judged the same way by dcmtk's ``dcmsign --verify``; ``review-sr --sign-key``."""

from __future__ import annotations

import copy
import datetime
import io
import subprocess
from pathlib import Path

import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from dicom_validators import validator_problems
from review_sr_run import run_with_decision

from medassist.cli import SIGN_KEY_PASSWORD_ENV, main
from medassist.dicom_out.reviewed_sr import write_reviewed_srs
from medassist.dicom_out.signature import SigningError, sign_dataset, verify_dataset
from medassist.errors import MedassistError

DCMSIGN = "/usr/bin/dcmsign"
COMMENT = "check the fifth rib, café"  # Latin-1: the SR stays ISO_IR 100


def _key_and_cert(tmp_path: Path, name: str = "dr.alice", *, kind: str = "rsa",
                  password: bytes | None = None) -> tuple[Path, Path]:
    """A throwaway private key and a self-signed certificate for it, as PEM files."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rsa" \
        else ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "General Hospital")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    key_path, cert_path = tmp_path / f"{name}-{kind}.key.pem", tmp_path / f"{name}-{kind}.cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           encryption))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _reviewed_sr(tmp_path: Path, comment: str = COMMENT) -> Path:
    """The reviewed SR of the run's one decision, written unsigned by write_reviewed_srs."""
    run, _ = run_with_decision(tmp_path, comment=comment)
    made = write_reviewed_srs(run, run / "decisions.sqlite", tmp_path / "plain",
                              verifying_organization="General Hospital")
    [path] = made.written
    return path


def _file_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _comment_item(ds: pydicom.Dataset):
    """The TEXT item DCM 121106 Comment, wherever it is in the content tree."""
    stack = list(ds.ContentSequence)
    while stack:
        item = stack.pop()
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106":
            return item
        stack.extend(item.get("ContentSequence") or [])
    raise AssertionError("no comment item")


def _dcmsign(path: Path, cert: Path) -> subprocess.CompletedProcess:
    """dcmsign --verify with the self-signed certificate trusted (+cf), so that only the signature is judged."""
    return subprocess.run([DCMSIGN, "--verify", "--verbose", "--require-sig", "+cf", str(cert), str(path)],
                          capture_output=True, text=True, errors="replace", timeout=60)


needs_dcmsign = pytest.mark.skipif(not Path(DCMSIGN).exists(),
                                   reason=f"{DCMSIGN} (Debian dcmtk) is not installed: no independent check")


def _clean(path: Path) -> None:
    problems = validator_problems(path)
    assert all(v == [] for v in problems.values()), problems


def test_signed_sr_verifies_after_a_round_trip_and_not_once_changed(tmp_path):
    key, cert = _key_and_cert(tmp_path)
    ds = pydicom.dcmread(_reviewed_sr(tmp_path))
    sign_dataset(ds, private_key_pem=key.read_bytes(), certificate_pem=cert.read_bytes())
    back = pydicom.dcmread(io.BytesIO(_file_bytes(ds)))
    check = verify_dataset(back)
    assert check.valid, check.reason
    assert check.signer == "O=General Hospital,CN=dr.alice"
    [mac] = back.MACParametersSequence
    assert (mac.MACIDNumber, mac.MACCalculationTransferSyntaxUID, mac.MACAlgorithm) == (0, "1.2.840.10008.1.2.1",
                                                                                        "SHA256")
    signed = {pydicom.tag.Tag(t) for t in mac.DataElementsSigned}
    assert {pydicom.tag.Tag(k) for k in ("SOPInstanceUID", "VerifyingObserverSequence", "ContentSequence",
                                         "PatientID")} <= signed
    assert not signed & {pydicom.tag.Tag(0x4FFE0001), pydicom.tag.Tag(0xFFFAFFFA)}
    assert all(t.group >= 0x0008 for t in signed)
    [sig] = back.DigitalSignaturesSequence
    assert sig.MACIDNumber == 0 and sig.CertificateType == "X509_1993_SIG"
    assert x509.load_der_x509_certificate(sig.CertificateOfSigner) == x509.load_pem_x509_certificate(cert.read_bytes())
    assert len(sig.Signature) == 256  # RSA 2048

    _comment_item(back).TextValue = "nothing to see"
    tampered = pydicom.dcmread(io.BytesIO(_file_bytes(back)))
    check = verify_dataset(tampered)
    assert not check.valid and "does not match" in check.reason
    (tmp_path / "again").mkdir()
    unsigned = verify_dataset(pydicom.dcmread(_reviewed_sr(tmp_path / "again")))
    assert not unsigned.valid and unsigned.reason == "no digital signature"
    del back.PatientID  # a signed element removed
    assert "missing" in verify_dataset(back).reason


@needs_dcmsign
@pytest.mark.parametrize("comment", [COMMENT, "fracture → pneumothorax; 気胸あり"], ids=["latin-1", "utf-8"])
def test_dcmsign_verifies_the_signature_and_rejects_a_changed_comment(tmp_path, comment):
    key, cert = _key_and_cert(tmp_path)
    ds = pydicom.dcmread(_reviewed_sr(tmp_path, comment=comment))
    sign_dataset(ds, private_key_pem=key.read_bytes(), certificate_pem=cert.read_bytes())
    signed = tmp_path / "signed.dcm"
    signed.write_bytes(_file_bytes(ds))
    out = _dcmsign(signed, cert)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 signatures verified in dataset, 0 corrupted" in out.stdout + out.stderr
    if comment == COMMENT:  # a UTF-8 SR draws dsrdump's one note that it does not check UTF-8 (test_reviewed_sr)
        _clean(signed)
    else:
        assert validator_problems(signed).get("dciodvfy", []) == []

    back = pydicom.dcmread(signed)
    _comment_item(back).TextValue = "nothing to see"
    tampered = tmp_path / "tampered.dcm"
    tampered.write_bytes(_file_bytes(back))
    out = _dcmsign(tampered, cert)
    assert out.returncode != 0
    assert "signature is invalid" in out.stdout + out.stderr


def test_an_ec_key_signs_with_ecdsa_that_dcmsign_accepts_odd_lengths_too(tmp_path):
    # DER certificates and ECDSA signatures vary in length; an odd one gets a pad byte in its OB value.
    plain = pydicom.dcmread(_reviewed_sr(tmp_path))
    lengths = set()
    for attempt in range(40):
        key, cert = _key_and_cert(tmp_path, f"ec{attempt}", kind="ec")
        cert_len = len(x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER))
        ds = copy.deepcopy(plain)
        sign_dataset(ds, private_key_pem=key.read_bytes(), certificate_pem=cert.read_bytes())
        parity = (cert_len % 2, len(ds.DigitalSignaturesSequence[0].Signature) % 2)
        if parity in lengths:
            continue
        lengths.add(parity)
        signed = tmp_path / f"ec{attempt}.dcm"
        signed.write_bytes(_file_bytes(ds))
        check = verify_dataset(pydicom.dcmread(signed))
        assert check.valid, (parity, check.reason)
        if Path(DCMSIGN).exists():
            out = _dcmsign(signed, cert)
            assert out.returncode == 0, out.stdout + out.stderr
        if (1, 1) in lengths:
            break
    assert (1, 1) in lengths  # an odd certificate and an odd signature were both seen


def test_a_key_and_a_certificate_that_do_not_match_are_refused(tmp_path):
    key, _ = _key_and_cert(tmp_path, "dr.alice")
    _, other_cert = _key_and_cert(tmp_path, "dr.bob")
    ds = pydicom.dcmread(_reviewed_sr(tmp_path))
    with pytest.raises(SigningError, match="does not match"):
        sign_dataset(ds, private_key_pem=key.read_bytes(), certificate_pem=other_cert.read_bytes())
    assert "DigitalSignaturesSequence" not in ds and "MACParametersSequence" not in ds


def test_review_sr_signs_with_the_given_key_and_refuses_a_mismatched_pair(tmp_path, capsys, monkeypatch):
    run, _ = run_with_decision(tmp_path, comment=COMMENT)
    password = b"correct horse battery"
    key, cert = _key_and_cert(tmp_path, password=password)
    _, other_cert = _key_and_cert(tmp_path, "dr.bob")
    base = ["review-sr", str(run), "--db", str(run / "decisions.sqlite"), "--organization", "General Hospital"]

    monkeypatch.delenv(SIGN_KEY_PASSWORD_ENV, raising=False)
    assert main([*base, "--out", str(tmp_path / "o1"), "--sign-key", str(key), "--sign-cert", str(cert)]) == 2
    err = capsys.readouterr().err
    assert str(key) in err and "encrypted" in err  # no password given for an encrypted key

    monkeypatch.setenv(SIGN_KEY_PASSWORD_ENV, password.decode())
    assert main([*base, "--out", str(tmp_path / "signed"), "--sign-key", str(key), "--sign-cert", str(cert)]) == 0
    captured = capsys.readouterr()
    assert "1 reviewed SR(s) written" in captured.out and "signed by O=General Hospital,CN=dr.alice" in captured.out
    assert password.decode() not in captured.out + captured.err
    [path] = list((tmp_path / "signed").glob("*/SR_*.dcm"))
    assert verify_dataset(pydicom.dcmread(path)).valid
    _clean(path)
    if Path(DCMSIGN).exists():
        out = _dcmsign(path, cert)
        assert out.returncode == 0, out.stdout + out.stderr

    assert main([*base, "--out", str(tmp_path / "o2"), "--sign-key", str(key), "--sign-cert", str(other_cert)]) == 2
    err = capsys.readouterr().err
    assert str(key) in err and str(other_cert) in err and "does not match" in err
    assert not (tmp_path / "o2").exists()  # refused before anything is written
    assert main([*base, "--out", str(tmp_path / "o3"), "--sign-key", str(key)]) == 2
    assert "--sign-key and --sign-cert go together" in capsys.readouterr().err
    missing = tmp_path / "no-such.pem"
    assert main([*base, "--out", str(tmp_path / "o4"), "--sign-key", str(missing), "--sign-cert", str(cert)]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "o5"), "--sign-key", str(key), "--sign-cert", str(key)]) == 2
    assert f"{key}: not a PEM X.509 certificate" in capsys.readouterr().err

    # Without --sign-key the SR is written as before, unsigned.
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    [plain] = list((tmp_path / "plain").glob("*/SR_*.dcm"))
    assert "DigitalSignaturesSequence" not in pydicom.dcmread(plain)


def test_signer_errors_are_medassist_errors(tmp_path):
    from medassist.dicom_out.signature import Signer

    password = b"s3cret-Passw0rd!"
    key, cert = _key_and_cert(tmp_path, password=password)
    with pytest.raises(MedassistError, match="wrong password") as refused:
        Signer.from_files(key, cert, b"not it")
    assert str(key) in str(refused.value)
    signer = Signer.from_files(key, cert, password)
    assert password.decode() not in repr(signer) and "PRIVATE KEY" not in repr(signer)
    assert signer.subject == "O=General Hospital,CN=dr.alice"
