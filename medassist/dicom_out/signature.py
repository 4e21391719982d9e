"""A DICOM Digital Signature (PS3.15 Annex C, PS3.3 C.12.1.1.3) over a whole dataset, and its check.

``sign_dataset(ds, private_key_pem=..., certificate_pem=...)`` adds one signature to ``ds``:

* a ``MACParametersSequence`` (4FFE,0001) item: MAC ID Number, MAC Calculation Transfer Syntax UID
  (Explicit VR Little Endian), MAC Algorithm SHA256 and Data Elements Signed, every top-level data
  element of the dataset that may be signed (all but group lengths, groups below 0008 such as the
  file meta information, Length to End, the MAC Parameters and Digital Signatures Sequences and
  Data Set Trailing Padding);
* a ``DigitalSignaturesSequence`` (FFFA,FFFA) item: the same MAC ID Number, a new Digital Signature
  UID, the Digital Signature DateTime (UTC), Certificate Type X509_1993_SIG, the signer's X.509
  certificate (DER) and the Signature: RSA PKCS #1 v1.5 (an EC key: ECDSA, DER) with SHA-256.

The bytes signed (``mac_bytes``) are the signed data elements in tag order, encoded in Explicit VR
Little Endian as in a file, except that a sequence has no length field (tag, "SQ", 2 reserved
bytes), each of its items is only the item tag followed by the item's data elements (no length, no
Item Delimitation Item), and the sequence ends with the Sequence Delimitation Item tag alone (no
length) -- so the signature does not depend on how the lengths are written. Then the signature
item's own MAC ID Number, Digital Signature UID, Digital Signature DateTime and Certificate Type
follow (Certificate of Signer and Signature are not included). This is the byte stream dcmtk's
``dcmsign`` computes (checked byte for byte against ``dcmsign --sign ... +d`` on a reviewed SR), and
``dcmsign --verify`` accepts the signatures made here (tests/dicom_out/test_signature.py).

``verify_dataset(ds)`` recomputes those bytes for every signature of ``ds`` and checks them with the
public key of the certificate the signature carries: a ``SignatureCheck`` (valid, the signer's
subject, the reason). It checks integrity and who holds the key, not whether the certificate is
trusted: that is for the receiver's certificate store (e.g. ``dcmsign --verify +cf CA.pem``).

Only the top-level dataset is signed (no signatures in sequence items). A signature made here
stays valid through a write that keeps the values (dcmtk rewriting a reviewed SR with undefined
lengths, or in Implicit VR Little Endian, was tried), not through one that changes them (another
character set, a private element whose VR is lost).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pydicom import config as pydicom_config
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medassist.errors import MedassistError

MAC_PARAMETERS_SEQUENCE = Tag(0x4FFE, 0x0001)
DIGITAL_SIGNATURES_SEQUENCE = Tag(0xFFFA, 0xFFFA)
LENGTH_TO_END = Tag(0x0008, 0x0001)
TRAILING_PADDING = Tag(0xFFFC, 0xFFFC)
ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000), little endian
SEQUENCE_DELIMITER_TAG = b"\xfe\xff\xdd\xe0"  # (FFFE,E0DD)
CERTIFICATE_TYPE = "X509_1993_SIG"
MAC_ALGORITHM = "SHA256"
_HASHES = {"SHA256": hashes.SHA256, "SHA384": hashes.SHA384, "SHA512": hashes.SHA512}
# the Digital Signatures Sequence item's elements that go into the MAC, after the signed data elements
_SIGNATURE_ITEM_SIGNED = ("MACIDNumber", "DigitalSignatureUID", "DigitalSignatureDateTime", "CertificateType")


class SigningError(ValueError):
    """A key or certificate that cannot be used: unreadable, wrong password, not matching each other.
    ``part`` says which: "key", "certificate" or "pair"."""

    def __init__(self, message: str, part: str = "pair") -> None:
        super().__init__(message)
        self.part = part


@dataclass(frozen=True)
class SignatureCheck:
    """The outcome of ``verify_dataset``: valid, whose certificate signed (its subject, RFC 4514) and why."""

    valid: bool
    signer: str | None
    reason: str


def signable(tag: BaseTag) -> bool:
    """Whether a data element may be listed in Data Elements Signed (PS3.15 C.1, as dcmtk has it)."""
    tag = Tag(tag)
    if tag.element == 0 or tag.group < 0x0008 or tag.group == 0xFFFA:
        return False
    return tag not in (LENGTH_TO_END, MAC_PARAMETERS_SEQUENCE, TRAILING_PADDING) and tag.group != 0xFFFE


def load_signer(private_key_pem: bytes, certificate_pem: bytes, password: bytes | None = None):
    """The private key and certificate, checked to belong together; SigningError otherwise."""
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=password or None)
    except TypeError as exc:  # a password given for a plain key, or none for an encrypted one
        hint = " (set its password in the environment)" if password is None else ""
        raise SigningError(f"cannot use the signing key: {exc}{hint}", "key") from exc
    except ValueError as exc:
        raise SigningError("not a PEM private key, or a wrong password", "key") from exc
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem)
    except ValueError as exc:
        raise SigningError("not a PEM X.509 certificate", "certificate") from exc
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise SigningError("only RSA and EC keys can sign a DICOM dataset here", "key")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise SigningError("the private key does not match the certificate's public key")
    return key, cert


@dataclass(frozen=True)
class Signer:
    """A signing key and its certificate, read and checked once (``from_files``), for signing many
    datasets (``sign``). Holds the loaded key, not its PEM or password; the key is kept out of the
    repr."""

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = field(repr=False)
    certificate: x509.Certificate
    subject: str = ""

    @classmethod
    def from_files(cls, key_file: str | os.PathLike[str], cert_file: str | os.PathLike[str],
                   password: bytes | None = None) -> Signer:
        """Read a PEM private key and a PEM X.509 certificate; MedassistError naming the file that
        cannot be read or used, or both when they do not belong together."""
        key_file, cert_file = Path(key_file), Path(cert_file)
        try:
            key_pem = key_file.read_bytes()
        except OSError as exc:
            raise MedassistError(f"{key_file}: cannot read the signing key ({exc.strerror or exc})") from exc
        try:
            cert_pem = cert_file.read_bytes()
        except OSError as exc:
            raise MedassistError(f"{cert_file}: cannot read the signing certificate ({exc.strerror or exc})") from exc
        try:
            key, cert = load_signer(key_pem, cert_pem, password)
        except SigningError as exc:
            named = {"key": f"{key_file}", "certificate": f"{cert_file}"}.get(exc.part, f"{key_file} and {cert_file}")
            raise MedassistError(f"{named}: {exc}") from exc
        return cls(key, cert, cert.subject.rfc4514_string())

    def sign(self, ds: Dataset) -> None:
        """Add this signer's digital signature to ``ds`` (see ``sign_dataset``)."""
        _sign_with(ds, self.key, self.certificate)


def sign_dataset(ds: Dataset, *, private_key_pem: bytes, certificate_pem: bytes,
                 password: bytes | None = None) -> None:
    """Add a digital signature over every signable top-level element of ``ds`` (see the module
    docstring). ``ds`` must be in its final form: any later change of a signed value breaks it.
    SigningError when the key or certificate cannot be read or do not match."""
    _sign_with(ds, *load_signer(private_key_pem, certificate_pem, password))


def _sign_with(ds: Dataset, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    """``sign_dataset`` with the key and certificate loaded and checked (``load_signer``)."""
    encodings = _encodings(ds, [default_encoding])
    signed = [Tag(t) for t in sorted(ds.keys()) if signable(t)]
    mac_params = ds.get("MACParametersSequence") or Sequence()
    signatures = ds.get("DigitalSignaturesSequence") or Sequence()
    used = {int(i.MACIDNumber) for i in list(mac_params) + list(signatures) if "MACIDNumber" in i}
    mac_id = next(n for n in range(0x10000) if n not in used)

    sig_item = Dataset()
    sig_item.MACIDNumber = mac_id
    sig_item.DigitalSignatureUID = generate_uid()
    sig_item.DigitalSignatureDateTime = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S.%f+0000")
    sig_item.CertificateType = CERTIFICATE_TYPE
    sig_item.CertificateOfSigner = cert.public_bytes(serialization.Encoding.DER)
    data = mac_bytes(ds, signed, sig_item, encodings)
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = key.sign(data, ec.ECDSA(hashes.SHA256()))
    sig_item.Signature = signature  # OB (an odd-length ECDSA DER value gets the usual pad byte)

    mac_item = Dataset()
    mac_item.MACIDNumber = mac_id
    mac_item.MACCalculationTransferSyntaxUID = ExplicitVRLittleEndian
    mac_item.MACAlgorithm = MAC_ALGORITHM
    mac_item.add(DataElement(0x04000020, "AT", [int(t) for t in signed]))  # Data Elements Signed
    mac_params.append(mac_item)
    signatures.append(sig_item)
    ds.MACParametersSequence = mac_params
    ds.DigitalSignaturesSequence = signatures


def verify_dataset(ds: Dataset) -> SignatureCheck:
    """Check every digital signature of ``ds`` against the bytes it covers and its certificate's key.

    Valid when there is at least one signature and all verify; otherwise the first failure's reason
    (no signature, no MAC parameters for it, an unsupported MAC or transfer syntax, a signed element
    missing, a certificate that cannot be read, a signature that does not match)."""
    signatures = ds.get("DigitalSignaturesSequence") or []
    if not signatures:
        return SignatureCheck(False, None, "no digital signature")
    mac_items = {int(i.MACIDNumber): i for i in ds.get("MACParametersSequence") or [] if "MACIDNumber" in i}
    encodings = _encodings(ds, [default_encoding])
    signer = None
    for n, sig_item in enumerate(signatures, 1):
        try:
            cert = x509.load_der_x509_certificate(_unpadded_der(bytes(sig_item.CertificateOfSigner)))
            signer = cert.subject.rfc4514_string()
        except (AttributeError, ValueError) as exc:
            return SignatureCheck(False, None, f"signature {n}: no readable signer certificate ({exc})")
        if str(sig_item.get("CertificateType", "")) != CERTIFICATE_TYPE:
            return SignatureCheck(False, signer, f"signature {n}: certificate type {sig_item.get('CertificateType')!r}")
        mac_item = mac_items.get(int(sig_item.get("MACIDNumber", -1)))
        if mac_item is None:
            return SignatureCheck(False, signer, f"signature {n}: no MAC parameters for its MAC ID number")
        if str(mac_item.get("MACCalculationTransferSyntaxUID", "")) != ExplicitVRLittleEndian:
            return SignatureCheck(False, signer, f"signature {n}: MAC calculation transfer syntax "
                                                 f"{mac_item.get('MACCalculationTransferSyntaxUID')} not supported")
        algorithm = _HASHES.get(str(mac_item.get("MACAlgorithm", "")))
        if algorithm is None:
            return SignatureCheck(False, signer, f"signature {n}: MAC algorithm {mac_item.get('MACAlgorithm')!r} "
                                                 "not supported")
        listed = mac_item.get("DataElementsSigned")
        tags = [Tag(listed)] if isinstance(listed, int) else [Tag(t) for t in listed or []]
        missing = [t for t in tags if t not in ds]
        if missing:
            return SignatureCheck(False, signer, f"signature {n}: signed element {missing[0]} is missing")
        if any(not signable(t) for t in tags) or tags != sorted(set(tags)):
            return SignatureCheck(False, signer, f"signature {n}: Data Elements Signed is not a sorted list "
                                                 "of signable tags")
        data = mac_bytes(ds, tags, sig_item, encodings)
        value = bytes(sig_item.get("Signature", b""))
        public = cert.public_key()
        try:
            if isinstance(public, rsa.RSAPublicKey):
                public.verify(value, data, padding.PKCS1v15(), algorithm())
            elif isinstance(public, ec.EllipticCurvePublicKey):
                public.verify(_unpadded_der(value), data, ec.ECDSA(algorithm()))
            else:
                return SignatureCheck(False, signer, f"signature {n}: unsupported public key type")
        except InvalidSignature:
            return SignatureCheck(False, signer, f"signature {n}: does not match the signed data "
                                                 "(the dataset was changed, or signed by another key)")
    return SignatureCheck(True, signer, f"{len(signatures)} signature(s) verified")


def mac_bytes(ds: Dataset, tags: list[BaseTag], sig_item: Dataset,
              encodings: list[str] | None = None) -> bytes:
    """The byte stream a signature covers: ``tags`` of ``ds`` then the signature item's signed
    elements, in the signature format (see the module docstring)."""
    encodings = encodings or _encodings(ds, [default_encoding])
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    for tag in tags:
        _write_signature_element(out, ds, Tag(tag), encodings)
    for keyword in _SIGNATURE_ITEM_SIGNED:
        tag = Tag(keyword)
        if tag in sig_item:
            _write_signature_element(out, sig_item, tag, encodings)
    return out.getvalue()


def _encodings(ds: Dataset, parent: list[str]) -> list[str]:
    charset = ds.get("SpecificCharacterSet")
    return convert_encodings(charset) if charset else parent


def _element(ds: Dataset, tag: BaseTag):
    """The element as it will be written: a raw value read from an Explicit VR Little Endian file
    as it is (its bytes are the file's), anything else decoded (and re-encoded by the writer)."""
    elem = ds.get_item(tag)
    if elem.is_raw and (elem.VR is None or elem.VR == "SQ" or ds.original_encoding != (False, True)):
        elem = ds[tag]
    return elem


def _write_signature_element(out: DicomBytesIO, ds: Dataset, tag: BaseTag, encodings: list[str]) -> None:
    elem = _element(ds, tag)
    if elem.VR != "SQ":
        if elem.VR and " or " in elem.VR:
            raise ValueError(f"{tag}: ambiguous VR {elem.VR!r}; set the VR before signing")
        with pydicom_config.disable_value_validation():
            write_data_element(out, elem, encodings)
        return
    out.write_tag(tag)
    out.write(b"SQ\x00\x00")  # no length: a sequence's length form does not change its signature
    for item in elem.value or []:
        out.write(ITEM_TAG)  # nor an item's
        item_encodings = _encodings(item, encodings)
        for item_tag in sorted(item.keys()):
            if Tag(item_tag).element == 0:  # group lengths are never written
                continue
            _write_signature_element(out, item, Tag(item_tag), item_encodings)
    out.write(SEQUENCE_DELIMITER_TAG)


def _unpadded_der(value: bytes) -> bytes:
    """A DER value (a certificate, an ECDSA signature) without the pad byte an odd-length OB value gets."""
    if len(value) >= 2 and value[0] == 0x30:
        length = value[1]
        if length < 0x80:
            return value[:2 + length]
        n = length & 0x7F
        return value[:2 + n + int.from_bytes(value[2:2 + n], "big")]
    return value


__all__ = ["SignatureCheck", "Signer", "SigningError", "load_signer", "mac_bytes", "sign_dataset", "signable",
           "verify_dataset"]
