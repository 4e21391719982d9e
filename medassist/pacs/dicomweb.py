"""Pull studies from a PACS over DICOMweb (QIDO-RS to find, WADO-RS to fetch), then triage them.

``triage_from_pacs(url, out_dir, ...)`` is what ``medassist triage --pacs URL`` calls:

1. QIDO-RS ``/studies`` filtered by StudyDate range and ModalitiesInStudy (all pages);
2. for each study, QIDO-RS its series (only the filtered modality's when one is given) and
   WADO-RS the instances into ``<out_dir>/pacs/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``, asking for
   the stored transfer syntax (no transcoding); instances already there are not fetched again;
3. ``medassist.triage.run_triage`` on that folder, writing the worklist into ``out_dir``.

Authentication is HTTP basic over a ``requests`` session. Network and HTTP failures become a
MedassistError that names the server and the reason (unreachable, refused credentials, no
DICOMweb service at that path).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pydicom.dataset import Dataset

from medassist.atomic import dicom_bytes, write_atomic
from medassist.errors import MedassistError
from medassist.optional import require
from medassist.sanitize import redact_credentials

if TYPE_CHECKING:  # the triage stage (torch) is imported only when a pull is triaged
    from medassist.triage.options import TriageOptions

DICOMWEB = "DICOMweb (triage --pacs, sending to a DICOMweb URL)"  # what needs requests + dicomweb-client

logger = logging.getLogger(__name__)

ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)
PAGE_SIZE = 100
MAX_PAGES = 1000
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass(frozen=True)
class StudyRef:
    """One study a QIDO-RS search found."""

    study_uid: str
    patient_id: str = ""
    accession: str = ""
    study_date: str = ""
    modalities: tuple[str, ...] = ()
    n_instances: int | None = None

    @classmethod
    def from_json(cls, item: dict) -> "StudyRef":
        ds = Dataset.from_json(item)
        n = ds.get("NumberOfStudyRelatedInstances")
        mods = ds.get("ModalitiesInStudy") or []
        return cls(
            study_uid=str(ds.get("StudyInstanceUID", "")),
            patient_id=str(ds.get("PatientID", "") or ""),
            accession=str(ds.get("AccessionNumber", "") or ""),
            study_date=str(ds.get("StudyDate", "") or ""),
            modalities=tuple(str(m) for m in ([mods] if isinstance(mods, str) else mods)),
            n_instances=int(n) if n not in (None, "") else None,
        )


@dataclass
class PullResult:
    """What ``pull_studies`` found and wrote."""

    folder: Path
    studies: list[StudyRef] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    fetched: int = 0
    already_there: int = 0


def connect(url: str, *, username: str | None = None, password: str | None = None, timeout: float = 60.0):
    """A ``dicomweb_client.DICOMwebClient`` for ``url`` (the DICOMweb root, e.g. ``.../dicom-web``)."""
    requests = require("requests", extra="pacs", feature=DICOMWEB)
    DICOMwebClient = require("dicomweb_client.api", extra="pacs", feature=DICOMWEB).DICOMwebClient

    if not re.match(r"^https?://", url or ""):
        raise MedassistError(redact_credentials(f"{url!r}: a DICOMweb URL starts with http:// or https://"))
    session = requests.Session()
    if username:
        session.auth = requests.auth.HTTPBasicAuth(username, password or "")
    client = DICOMwebClient(url=url.rstrip("/"), session=session, timeout=timeout)
    # dicomweb-client retries failed requests (also refused connections) with exponential
    # back-off; 3 attempts (about 6 s) rather than its default 5 (about 30 s) before giving up.
    client.set_http_retry_params(retry=True, max_attempts=3)
    return client


def check_date(value: str | None, name: str) -> str | None:
    """A YYYYMMDD date, or None; anything else raises MedassistError naming the option."""
    if value in (None, ""):
        return None
    try:
        datetime.strptime(str(value), "%Y%m%d")
    except ValueError:
        raise MedassistError(f"{name} {value!r}: expected a date as YYYYMMDD") from None
    return str(value)


def study_filters(date_from: str | None = None, date_to: str | None = None, modality: str | None = None) -> dict:
    """QIDO-RS search filters for a date range (either end open) and a modality."""
    date_from, date_to = check_date(date_from, "--date-from"), check_date(date_to, "--date-to")
    if date_from and date_to and date_from > date_to:
        raise MedassistError(f"--date-from {date_from} is after --date-to {date_to}")
    filters: dict = {}
    if date_from or date_to:
        filters["StudyDate"] = f"{date_from or ''}-{date_to or ''}"
    if modality:
        if not re.fullmatch(r"[A-Za-z0-9]{1,16}", modality):
            raise MedassistError(f"--modality-filter {modality!r}: expected a DICOM modality such as DX, CR or CT")
        filters["ModalitiesInStudy"] = modality.upper()
    return filters


def _pacs_call(url: str, what: str, call: Callable):
    """Run a dicomweb-client call; turn network/HTTP errors into MedassistError (credentials redacted)."""
    requests = require("requests", extra="pacs", feature=DICOMWEB)

    try:
        return call()
    except requests.exceptions.RequestException as exc:
        raise MedassistError(redact_credentials(f"{url}: {_pacs_failure(what, exc)}")) from exc


def _pacs_failure(what: str, exc: Exception) -> str:
    """Why a PACS request failed, in words."""
    requests = require("requests", extra="pacs", feature=DICOMWEB)

    if isinstance(exc, requests.exceptions.HTTPError):
        status = exc.response.status_code if exc.response is not None else None
        reason = {
            401: "the PACS refused the credentials (check --pacs-user and --pacs-password-env)",
            403: "the PACS does not allow this user to do that",
            404: "not found (is the URL the DICOMweb root, e.g. http://host:8042/dicom-web?)",
        }.get(status, f"HTTP {status}: {exc}")
        return f"{what} failed: {reason}"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return f"PACS unreachable ({_first_line(exc)})"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"PACS did not answer in time during {what}"
    return f"{what} failed: {_first_line(exc)}"


def _search_all(url: str, what: str, search: Callable, uid_tag: str, **kwargs) -> list[dict]:
    """Every result of a QIDO-RS search, page by page.

    Paging is done here rather than with dicomweb-client's ``get_remaining``: some servers (Orthanc
    1.10 with a ModalitiesInStudy filter) ignore ``offset`` and would answer the same page forever.
    A page that brings no new UID, or a short page, ends the search; so does ``MAX_PAGES``.
    """
    results: list[dict] = []
    seen: set[str] = set()
    for page in range(MAX_PAGES):
        batch = _pacs_call(url, what, lambda: search(limit=PAGE_SIZE, offset=page * PAGE_SIZE, **kwargs)) or []
        new = []
        for item in batch:
            uid = str((item.get(uid_tag) or {}).get("Value", [""])[0])
            if uid not in seen:
                seen.add(uid)
                new.append(item)
        results.extend(new)
        if len(batch) < PAGE_SIZE or not new:
            break
    else:
        logger.warning("%s: %s stopped after %d pages", redact_credentials(url), what, MAX_PAGES)
    return results


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def find_studies(
    client,
    *,
    date_from: str | None = None,
    date_to: str | None = None,
    modality: str | None = None,
    limit: int | None = None,
) -> list[StudyRef]:
    """QIDO-RS: the studies matching the filters (every page), sorted by date then UID."""
    filters = study_filters(date_from, date_to, modality)
    fields = ["StudyInstanceUID", "PatientID", "AccessionNumber", "StudyDate", "ModalitiesInStudy",
              "NumberOfStudyRelatedInstances"]
    found = _search_all(client.base_url, "QIDO-RS study search", client.search_for_studies, "0020000D",
                        search_filters=filters, fields=fields)
    studies = [StudyRef.from_json(item) for item in found]
    studies = [s for s in studies if _UID.match(s.study_uid)]
    if modality:  # some servers ignore ModalitiesInStudy; filter here too
        studies = [s for s in studies if not s.modalities or modality.upper() in s.modalities]
    studies.sort(key=lambda s: (s.study_date, s.study_uid))
    logger.info("pacs: %d stud%s match %s", len(studies), "y" if len(studies) == 1 else "ies", filters or "no filter")
    return studies[:limit] if limit else studies


def retrieve_study(client, study_uid: str, folder: str | Path, *, modality: str | None = None) -> tuple[list[Path], int]:
    """WADO-RS: a study's instances (only ``modality``'s series when given) into ``folder``.

    Returns (all files of the study now in the folder, how many were fetched this time).
    """
    url = client.base_url
    study_dir = Path(folder) / _checked_uid(study_uid)
    series_list = _search_all(url, f"QIDO-RS series search in study {study_uid}", client.search_for_series,
                              "0020000E", study_instance_uid=study_uid)
    files: list[Path] = []
    fetched = 0
    for item in series_list or []:
        ds = Dataset.from_json(item)
        series_uid = str(ds.get("SeriesInstanceUID", ""))
        if not _UID.match(series_uid):
            continue
        if modality and str(ds.get("Modality", "")).upper() != modality.upper():
            continue
        series_dir = study_dir / _checked_uid(series_uid)
        instances = _search_all(url, f"QIDO-RS instance search in series {series_uid}", client.search_for_instances,
                                "00080018", study_instance_uid=study_uid, series_instance_uid=series_uid)
        wanted = {}
        for inst in instances or []:
            sop_uid = str(Dataset.from_json(inst).get("SOPInstanceUID", ""))
            if _UID.match(sop_uid):
                wanted[sop_uid] = series_dir / f"{sop_uid}.dcm"
        missing = [uid for uid, path in wanted.items() if not path.is_file()]
        if missing:
            series_dir.mkdir(parents=True, exist_ok=True)
        if missing and len(missing) == len(wanted):  # nothing there yet: one WADO-RS call for the series
            for ds_inst in _pacs_call(url, f"WADO-RS retrieve of series {series_uid}",
                                      lambda: list(client.iter_series(study_uid, series_uid, media_types=ANY_TRANSFER_SYNTAX))):
                path = wanted.get(str(ds_inst.SOPInstanceUID)) or series_dir / f"{_checked_uid(str(ds_inst.SOPInstanceUID))}.dcm"
                _write(ds_inst, path)
                fetched += 1
        else:
            for sop_uid in missing:
                ds_inst = _pacs_call(url, f"WADO-RS retrieve of instance {sop_uid}",
                                     lambda: client.retrieve_instance(study_uid, series_uid, sop_uid, media_types=ANY_TRANSFER_SYNTAX))
                _write(ds_inst, wanted[sop_uid])
                fetched += 1
        files.extend(p for p in wanted.values() if p.is_file())
    return files, fetched


def pull_studies(
    url: str,
    folder: str | Path,
    *,
    username: str | None = None,
    password: str | None = None,
    date_from: str | None = None,
    date_to: str | None = None,
    modality: str | None = None,
    limit: int | None = None,
    client=None,
) -> PullResult:
    """Find the matching studies on the PACS and fetch them into ``folder`` (see module docstring)."""
    client = client or connect(url, username=username, password=password)
    result = PullResult(folder=Path(folder))
    result.studies = find_studies(client, date_from=date_from, date_to=date_to, modality=modality, limit=limit)
    for study in result.studies:
        files, fetched = retrieve_study(client, study.study_uid, folder, modality=modality)
        result.files.extend(files)
        result.fetched += fetched
        result.already_there += len(files) - fetched
        logger.debug("pacs: study %s: %d file(s), %d fetched", study.study_uid, len(files), fetched)
    logger.info("pacs: %d stud%s, %d file(s): %d fetched, %d already there", len(result.studies),
                "y" if len(result.studies) == 1 else "ies", len(result.files), result.fetched, result.already_there)
    return result


def triage_from_pacs(
    url: str,
    out_dir: str | Path,
    *,
    username: str | None = None,
    password: str | None = None,
    date_from: str | None = None,
    date_to: str | None = None,
    modality: str | None = None,
    limit: int | None = None,
    download_dir: str | Path | None = None,
    triage: Callable | None = None,
    options: TriageOptions | None = None,
):
    """Pull the matching studies from ``url`` and triage them into ``out_dir``.

    ``download_dir`` defaults to ``out_dir/pacs`` (kept, so a rerun fetches only what is new).
    ``options`` (``TriageOptions``; None: the defaults) go to ``medassist.triage.run_triage``;
    ``triage`` replaces that function (the Ray backend's ``run_triage_ray``, tests), called as
    ``triage(inputs, out_dir, options)``.
    Returns (PullResult, what run_triage returned). No matching study is not an error: the
    triage stage is still run on the (empty) folder so the worklist says so.
    """
    out_dir = Path(out_dir)
    folder = Path(download_dir) if download_dir is not None else out_dir / "pacs"
    folder.mkdir(parents=True, exist_ok=True)
    pulled = pull_studies(url, folder, username=username, password=password, date_from=date_from,
                          date_to=date_to, modality=modality, limit=limit)
    if triage is None:
        from medassist.triage import run_triage as triage
    if options is None:
        from medassist.triage.options import TriageOptions

        options = TriageOptions()
    result = triage([str(folder)], out_dir, options)
    return pulled, result


def _checked_uid(uid: str) -> str:
    """A UID used as a file name: digits and dots only (a server's answer is not trusted)."""
    if not _UID.match(uid) or len(uid) > 64:
        raise MedassistError(f"PACS returned an invalid UID {uid[:80]!r}")
    return uid


def _write(ds: Dataset, path: Path) -> None:
    write_atomic(path, dicom_bytes(ds))


def password_from_env(var: str | None) -> str | None:
    """The PACS password from the environment variable the user named (never from argv)."""
    if not var:
        return None
    value = os.environ.get(var)
    if value is None:
        raise MedassistError(f"--pacs-password-env {var}: that environment variable is not set")
    return value


def studies_summary(studies: Iterable[StudyRef]) -> str:
    """One line per study, for the CLI."""
    return "\n".join(f"{s.study_date or '--------'}  {','.join(s.modalities) or '?':8s}  {s.study_uid}" for s in studies)
