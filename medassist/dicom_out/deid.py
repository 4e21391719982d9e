"""De-identification: DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile.

``deidentify_dataset(ds, uid_map)`` returns a de-identified copy of one data set:

* every attribute of Table E.1-1 (``_basic_profile.BASIC_PROFILE``) gets its action, at any depth
  of nesting: X removed, Z emptied, D replaced by a dummy of its VR, U remapped through ``uid_map``;
  compound actions take the choice that keeps the object usable (X/Z -> Z, X/D -> D, Z/D -> D,
  X/Z/D -> Z, X/Z/U* -> references kept with their UIDs remapped);
* PatientName and PatientID become one keyed pseudonym (``ANON-`` + 10 hex), the same for the
  same patient across files and runs given the same secret, so a de-identified data set still
  groups by patient;
* private attributes, curves (50xx) and overlays (60xx, whose data and comments can carry text)
  are removed, and so is any UID-valued attribute outside the table that is not a class or
  transfer-syntax UID (they are remapped, not removed);
* SR content (ContentSequence) is cleaned rather than removed (Clean Structured Content Option):
  codes and numbers stay, UIDs are remapped, person names and dates become dummies, and free
  TEXT items other than algorithm name/version and tracking identifiers become "REMOVED";
* PatientIdentityRemoved = YES, DeidentificationMethod and DeidentificationMethodCodeSequence
  (113100, plus 113104 when SR content was cleaned), LongitudinalTemporalInformationModified =
  REMOVED.

UIDs are remapped with a keyed hash (HMAC-SHA256 of the original UID under a secret, as a
``2.25.`` UID), so the same input UID always gives the same output UID, across files and runs,
and references inside sequences stay consistent. The secret comes from ``MEDASSIST_DEID_SECRET``
or a file created once under the user's config folder (never beside the exported data).

Pixel data is not inspected: files that declare burned-in annotation (or, for modalities that
usually have it such as US and secondary capture, do not declare its absence) are refused unless
the caller allows them.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from medassist.atomic import dicom_bytes, write_atomic
from medassist.datamodel import IngestProblem
from medassist.dicom_out._basic_profile import BASIC_PROFILE
from medassist.errors import MedassistError

logger = logging.getLogger(__name__)

SECRET_ENV = "MEDASSIST_DEID_SECRET"
DEID_METHOD = "medassist: PS3.15 Basic Application Confidentiality Profile"
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
CLEAN_STRUCTURED_CONTENT_CODE = ("113104", "DCM", "Clean Structured Content Option")

# Modalities whose pixels commonly carry burned-in patient text; without an explicit
# BurnedInAnnotation "NO" they are refused by default.
BURNED_IN_LIKELY = {"US", "SC", "OT", "XC", "ES", "GM", "SM", "DOC"}

# Keep these UI attributes: they name classes, syntaxes and coding schemes, not instances.
_KEEP_UID_KEYWORD = re.compile(r"(ClassUID|SyntaxUID|ClassUIDInFile|SyntaxUIDInFile)$")
_KEEP_UID_KEYWORDS = {
    "CodingSchemeUID",
    "ContextUID",
    "MappingResourceUID",
    "ImplementationClassUID",
    "SOPClassesInStudy",
    "PrivateInformationCreatorUID",
    "SOPClassesSupported",
}
# SR TEXT items whose concept names are safe to keep (they name software, not people).
_SAFE_TEXT_CONCEPTS = {
    ("111001", "DCM"),  # Algorithm Name
    ("111003", "DCM"),  # Algorithm Version
    ("111002", "DCM"),  # Algorithm Parameters
    ("112039", "DCM"),  # Tracking Identifier
}

_DUMMY_TEXT = "ANONYMIZED"
_DUMMY_BY_VR: dict[str, object] = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "PN": "ANONYMOUS",
    "AS": "000D",
    "IS": "0",
    "DS": "0",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "UV": 0,
    "SV": 0,
    "FL": 0.0,
    "FD": 0.0,
    "OB": b"\x00\x00",
    "OW": b"\x00\x00",
    "OD": b"\x00" * 8,
    "OF": b"\x00" * 4,
    "OL": b"\x00" * 4,
    "OV": b"\x00" * 8,
    "UN": b"\x00\x00",
}


def _profile_by_tag() -> tuple[dict[int, str], list[tuple[int, int, str]]]:
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, str]] = []  # (mask, value, action) for "50XXXXXX"-style keys
    for key, action in BASIC_PROFILE.items():
        if "X" in key:
            mask = int("".join("0" if c == "X" else "F" for c in key), 16)
            value = int(key.replace("X", "0"), 16)
            masked.append((mask, value, action))
        else:
            exact[int(key, 16)] = action
    return exact, masked


_EXACT, _MASKED = _profile_by_tag()


def profile_action(tag: int) -> str | None:
    """The Basic Profile's action for a tag, or None when the table does not list it (keep)."""
    tag = int(tag)
    if tag in _EXACT:
        return _EXACT[tag]
    for mask, value, action in _MASKED:
        if tag & mask == value:
            return action
    return None


# --------------------------------------------------------------------------- secrets and UIDs


def default_secret_path() -> Path:
    """Where the de-identification secret lives when MEDASSIST_DEID_SECRET is not set."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "medassist" / "deid_secret"


def load_secret(secret: str | bytes | None = None) -> bytes:
    """The project secret for UID remapping and pseudonyms.

    An explicit ``secret`` wins; then the ``MEDASSIST_DEID_SECRET`` environment variable; then the
    file ``default_secret_path()``, created (mode 0600, 32 random bytes) the first time. Keep that
    file: the same secret is what makes a later export map the same UIDs the same way.
    """
    if secret:
        return secret.encode() if isinstance(secret, str) else bytes(secret)
    env = os.environ.get(SECRET_ENV)
    if env:
        return env.encode()
    path = default_secret_path()
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
            logger.warning("created a new de-identification secret in %s; keep it to map UIDs "
                           "consistently in later exports", path)
        return path.read_text().strip().encode()
    except OSError as exc:
        raise MedassistError(f"{path}: cannot read or create the de-identification secret ({exc}); "
                             f"set {SECRET_ENV} instead") from exc


class UidMap:
    """Consistent, keyed remapping of UIDs (and patient pseudonyms) for de-identification.

    ``uid_map(uid)`` is ``2.25.<128-bit HMAC-SHA256 of uid under the secret>``: the same UID gives
    the same result in every file and every run with the same secret, and the original cannot be
    recovered or checked without the secret. ``mapping`` records what was remapped in this run.
    """

    def __init__(self, secret: str | bytes | None = None):
        self._key = load_secret(secret)
        self.mapping: dict[str, str] = {}

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()

    def __call__(self, uid: str) -> str:
        uid = str(uid).strip().rstrip("\x00")
        if not uid:
            return uid
        if uid not in self.mapping:
            self.mapping[uid] = "2.25." + str(int.from_bytes(self._digest("uid", uid)[:16], "big"))
        return self.mapping[uid]

    def pseudonym(self, patient_key: str) -> str:
        """A stable pseudonym for a patient (from PatientID, else name): ``ANON-`` + 10 hex."""
        return "ANON-" + self._digest("patient", patient_key).hex()[:10].upper()


class _DictUidMap:
    """Adapter so a plain dict can serve as ``uid_map``: unknown UIDs get new random UIDs."""

    def __init__(self, mapping: MutableMapping[str, str]):
        self.mapping = mapping

    def __call__(self, uid: str) -> str:
        uid = str(uid).strip().rstrip("\x00")
        if uid and uid not in self.mapping:
            self.mapping[uid] = pydicom.uid.generate_uid(prefix="2.25.")
        return self.mapping.get(uid, uid)

    def pseudonym(self, patient_key: str) -> str:
        key = "patient:" + patient_key
        if key not in self.mapping:
            self.mapping[key] = "ANON-" + secrets.token_hex(5).upper()
        return self.mapping[key]


UidMapLike = UidMap | MutableMapping[str, str] | Callable[[str], str]


def _as_uid_map(uid_map: UidMapLike):
    if isinstance(uid_map, UidMap) or (callable(uid_map) and hasattr(uid_map, "pseudonym")):
        return uid_map
    if isinstance(uid_map, MutableMapping):
        return _DictUidMap(uid_map)
    raise TypeError("uid_map must be a UidMap or a dict")


# --------------------------------------------------------------------------- the profile


@dataclass
class _Context:
    uid_map: object
    pseudonym: str
    cleaned_content: bool = False


def deidentify_dataset(ds: Dataset, uid_map: UidMapLike, *, allow_burned_in: bool = False) -> Dataset:
    """A de-identified copy of ``ds`` per the Basic Profile (see the module docstring).

    ``uid_map``: a ``UidMap`` (keyed, consistent across runs) or a dict shared between calls
    (consistent within the dict). Raises MedassistError if the pixels may carry burned-in text
    and ``allow_burned_in`` is false.
    """
    check_burned_in(ds, allow_burned_in=allow_burned_in)
    uid_map = _as_uid_map(uid_map)
    out = copy.deepcopy(ds)
    patient_key = str(ds.get("PatientID", "") or ds.get("PatientName", "") or "")
    ctx = _Context(uid_map=uid_map, pseudonym=uid_map.pseudonym(patient_key))
    _clean_dataset(out, ctx)

    out.PatientName = ctx.pseudonym
    out.PatientID = ctx.pseudonym
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = DEID_METHOD
    codes = [BASIC_PROFILE_CODE] + ([CLEAN_STRUCTURED_CONTENT_CODE] if ctx.cleaned_content else [])
    out.DeidentificationMethodCodeSequence = DicomSequence([_code_item(*c) for c in codes])
    out.LongitudinalTemporalInformationModified = "REMOVED"
    _rebuild_file_meta(out, ds)
    return out


def check_burned_in(ds: Dataset, *, allow_burned_in: bool = False) -> None:
    """Refuse images whose pixels may carry identifying text (the profile does not clean pixels)."""
    if allow_burned_in or "PixelData" not in ds and "FloatPixelData" not in ds:
        return
    burned = str(ds.get("BurnedInAnnotation", "")).upper()
    modality = str(ds.get("Modality", "")).upper()
    what = f"SOP instance {ds.get('SOPInstanceUID', '?')}"
    if burned == "YES":
        raise MedassistError(f"{what}: BurnedInAnnotation is YES; its pixels may show identifying "
                             "text, which this de-identification does not remove")
    if burned != "NO" and modality in BURNED_IN_LIKELY:
        raise MedassistError(f"{what}: {modality} images often carry burned-in patient text and this "
                             "one does not declare BurnedInAnnotation NO; not exported")


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _clean_dataset(ds: Dataset, ctx: _Context) -> None:
    for tag in list(ds.keys()):
        tag = BaseTag(tag)
        elem = ds[tag]
        group = tag.group
        if tag.is_private or (0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF) and group % 2 == 0:
            del ds[tag]  # private attributes, curves and whole overlay groups
            continue
        action = profile_action(tag)
        if action is None:
            if elem.VR == "SQ":
                for item in elem.value or []:
                    _clean_dataset(item, ctx)
            elif elem.VR == "UI" and _remap_unlisted_uid(elem):
                elem.value = _mapped_uid_value(elem.value, ctx)
            continue
        _apply(ds, tag, elem, action, ctx)


def _remap_unlisted_uid(elem) -> bool:
    keyword = elem.keyword or ""
    return not (_KEEP_UID_KEYWORD.search(keyword) or keyword in _KEEP_UID_KEYWORDS)


def _mapped_uid_value(value, ctx: _Context):
    def one(uid):
        uid = str(uid)
        if not uid or uid.startswith("1.2.840.10008."):
            return uid  # empty, or a UID the DICOM standard itself defines
        return UID(ctx.uid_map(uid))

    if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, str):
        return [one(v) for v in value]
    return one(value)


def _apply(ds: Dataset, tag: BaseTag, elem, action: str, ctx: _Context) -> None:
    vr = elem.VR
    if action == "X":
        del ds[tag]
    elif action == "U":
        elem.value = _mapped_uid_value(elem.value, ctx) if vr == "UI" else _dummy(vr)
    elif action in ("Z", "X/Z", "X/Z/D"):
        _empty(elem)
    elif action in ("D", "X/D", "Z/D"):
        if vr == "SQ":
            if tag == Tag("ContentSequence"):
                _clean_content(elem.value, ctx)
            else:
                elem.value = DicomSequence([])
        elif vr == "UI":
            elem.value = _mapped_uid_value(elem.value, ctx)
        else:
            elem.value = _dummy(vr)
    elif action == "X/Z/U*":
        if vr == "SQ":
            for item in elem.value or []:
                _clean_dataset(item, ctx)
        elif vr == "UI":
            elem.value = _mapped_uid_value(elem.value, ctx)
        else:
            _empty(elem)
    else:  # an action this code does not know: remove, the safe default
        del ds[tag]


def _empty(elem) -> None:
    elem.value = DicomSequence([]) if elem.VR == "SQ" else None


def _dummy(vr: str):
    return _DUMMY_BY_VR.get(vr, _DUMMY_TEXT)


def _clean_content(items, ctx: _Context) -> None:
    """Clean Structured Content: keep the tree and its codes, scrub people, dates and free text."""
    ctx.cleaned_content = True
    for item in items or []:
        _clean_dataset(item, ctx)  # nested ContentSequence comes back here via the D action
        if str(item.get("ValueType", "")).upper() == "TEXT" and "TextValue" in item:
            concept = item.get("ConceptNameCodeSequence")
            key = (str(concept[0].get("CodeValue", "")), str(concept[0].get("CodingSchemeDesignator", ""))) \
                if concept else ("", "")
            if key not in _SAFE_TEXT_CONCEPTS:
                item.TextValue = "REMOVED"


def _rebuild_file_meta(out: Dataset, original: Dataset) -> None:
    old = getattr(original, "file_meta", None)
    meta = FileMetaDataset()
    if old is not None and "TransferSyntaxUID" in old:
        meta.TransferSyntaxUID = old.TransferSyntaxUID
    sop_class = out.get("SOPClassUID") or (old.get("MediaStorageSOPClassUID") if old is not None else None)
    if sop_class:
        meta.MediaStorageSOPClassUID = sop_class
    if "SOPInstanceUID" in out:
        meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    out.file_meta = meta


# --------------------------------------------------------------------------- export


@dataclass
class ExportReport:
    """What ``export_deidentified`` wrote and what it could not use (with reasons)."""

    written: list[Path] = field(default_factory=list)
    problems: list[IngestProblem] = field(default_factory=list)
    uid_map: UidMap | None = None


def export_deidentified(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    results_dir: str | Path | None = None,
    secret: str | bytes | None = None,
    allow_burned_in: bool = False,
) -> ExportReport:
    """De-identify every DICOM series in ``inputs`` (and, if given, the DICOM results under
    ``results_dir``: SR, SC and SEG made by ``medassist.dicom_out``) into ``out_dir``.

    Files are written as ``out_dir/<study>/<series>/<sop>.dcm`` with the remapped UIDs, so the
    results land in their de-identified study and still reference its images. NIfTI inputs are
    reported as problems (they are not DICOM); unreadable files and images refused for burned-in
    text too. Raises MedassistError only when nothing at all could be exported.
    """
    from medassist.ingest import discover_series  # the ingest stage finds and groups the files

    out_dir = Path(out_dir)
    uid_map = UidMap(secret)
    report = ExportReport(uid_map=uid_map)
    series, problems = discover_series(list(inputs))
    report.problems.extend(problems)
    files: list[str] = []
    for s in series:
        if not all(_looks_like_dicom(p) for p in s.paths):
            report.problems.append(IngestProblem(s.source_path, "not DICOM; only DICOM is de-identified"))
            continue
        files.extend(s.paths)
    if results_dir is not None:
        files.extend(str(p) for p in sorted(Path(results_dir).rglob("*")) if p.is_file() and _looks_like_dicom(p))

    for path in dict.fromkeys(files):
        try:
            ds = pydicom.dcmread(path)
            clean = deidentify_dataset(ds, uid_map, allow_burned_in=allow_burned_in)
            report.written.append(_write_deidentified(clean, out_dir))
        except MedassistError as exc:
            report.problems.append(IngestProblem(path, str(exc)))
        except Exception as exc:  # an unreadable or unwritable file: say which and why, go on
            report.problems.append(IngestProblem(path, f"cannot de-identify: {exc}"))
    for problem in report.problems:
        logger.warning("export: %s", problem)
    if files and not report.written:
        raise MedassistError(f"nothing exported; first problem: {report.problems[0]}")
    logger.info("export: %d file(s) written to %s, %d problem(s)", len(report.written), out_dir,
                len(report.problems))
    return report


def _looks_like_dicom(path: str | Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    try:
        pydicom.dcmread(path, stop_before_pixels=True, force=False)
        return True
    except Exception:
        return False


def _write_deidentified(ds: Dataset, out_dir: Path) -> Path:
    folder = out_dir / _safe(ds.get("StudyInstanceUID", "unknown-study")) / _safe(ds.get("SeriesInstanceUID", "unknown-series"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_safe(ds.get('SOPInstanceUID', 'unknown'))}.dcm"
    return write_atomic(path, dicom_bytes(ds))


def _safe(uid) -> str:
    text = str(uid)
    return text if re.fullmatch(r"[0-9.]{1,64}", text) else hashlib.sha256(text.encode()).hexdigest()[:16]
