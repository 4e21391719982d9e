"""Send DICOM instances (our SR / SC / SEG results) to a PACS: STOW-RS or C-STORE.

``send(target, paths, ...)`` picks the protocol from the target:

* ``http://host:8042/dicom-web`` (or https): STOW-RS with dicomweb-client, HTTP basic auth;
* ``dicom://AET@host:port``: C-STORE with pynetdicom (our AE title ``MEDASSIST`` by default).

Both report per-instance failures in the returned ``SendReport`` and raise MedassistError only
when the PACS cannot be reached or refuses everything.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from medassist.errors import MedassistError
from medassist.optional import require
from medassist.pacs.dicomweb import _pacs_call, connect
from medassist.sanitize import redact_credentials

logger = logging.getLogger(__name__)

DEFAULT_CALLING_AET = "MEDASSIST"
_DICOM_URL = re.compile(r"^dicom://(?P<aet>[^@/]{1,16})@(?P<host>[^:/]+):(?P<port>\d{1,5})/?$")


@dataclass
class SendReport:
    """What a send stored and what it could not (SOP Instance UID -> reason); ``target`` without credentials."""

    target: str
    stored: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def _datasets(items: Iterable[str | Path | Dataset]) -> list[Dataset]:
    out = []
    for item in items:
        if isinstance(item, Dataset):
            out.append(item)
            continue
        try:
            out.append(pydicom.dcmread(item))
        except Exception as exc:
            raise MedassistError(f"{item}: not a readable DICOM file ({exc})") from exc
    return out


def send(
    target: str,
    items: Sequence[str | Path | Dataset],
    *,
    username: str | None = None,
    password: str | None = None,
    calling_aet: str = DEFAULT_CALLING_AET,
) -> SendReport:
    """Store ``items`` (paths or datasets) at ``target``; see the module docstring for targets."""
    if re.match(r"^https?://", target):
        return store_dicomweb(target, items, username=username, password=password)
    match = _DICOM_URL.match(target)
    if match:
        return store_cstore(match["host"], int(match["port"]), match["aet"], items, calling_aet=calling_aet)
    raise MedassistError(redact_credentials(f"{target!r}: send to an http(s):// DICOMweb root or dicom://AET@host:port"))


def store_dicomweb(
    url: str,
    items: Sequence[str | Path | Dataset],
    *,
    username: str | None = None,
    password: str | None = None,
    client=None,
    batch_size: int = 20,
) -> SendReport:
    """STOW-RS ``items`` to the DICOMweb root ``url`` (in batches, grouped by study)."""
    client = client or connect(url, username=username, password=password)
    report = SendReport(target=redact_credentials(url))
    datasets = _datasets(items)
    by_study: dict[str, list[Dataset]] = {}
    for ds in datasets:
        by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    for study_uid, group in by_study.items():
        for start in range(0, len(group), batch_size):
            batch = group[start:start + batch_size]
            response = _pacs_call(url, f"STOW-RS to study {study_uid}",
                                  lambda: client.store_instances(batch, study_instance_uid=study_uid))
            failed = {}
            for item in (response.get("FailedSOPSequence") or []) if response is not None else []:
                reason = item.get("FailureReason", "")
                failed[str(item.get("ReferencedSOPInstanceUID", "?"))] = f"STOW-RS failure reason {reason}"
            report.failed.update(failed)
            report.stored.extend(str(ds.SOPInstanceUID) for ds in batch if str(ds.SOPInstanceUID) not in failed)
    _log(report)
    if datasets and not report.stored:
        raise MedassistError(f"{report.target}: the PACS stored none of {len(datasets)} instance(s): {next(iter(report.failed.values()), '')}")
    return report


def store_cstore(
    host: str,
    port: int,
    called_aet: str,
    items: Sequence[str | Path | Dataset],
    *,
    calling_aet: str = DEFAULT_CALLING_AET,
    timeout: float = 30.0,
) -> SendReport:
    """C-STORE ``items`` to ``called_aet`` at ``host:port`` over one association."""
    AE = require("pynetdicom", extra="pacs", feature="sending over DICOM (C-STORE)").AE

    target = f"dicom://{called_aet}@{host}:{port}"
    datasets = _datasets(items)
    report = SendReport(target=target)
    if not datasets:
        return report
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    contexts = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
    for sop_class, syntax in contexts[:128]:  # 128: the most presentation contexts one association may propose
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        raise MedassistError(f"{target}: association rejected or PACS unreachable (check AE title, host and port)")
    try:
        for ds in datasets:
            uid = str(ds.SOPInstanceUID)
            try:
                status = assoc.send_c_store(ds)
            except Exception as exc:  # e.g. no accepted presentation context for this SOP class
                report.failed[uid] = str(exc)
                continue
            code = getattr(status, "Status", None)
            if code is None:
                report.failed[uid] = "no response (connection lost or timed out)"
            elif code in (0x0000, 0xB000, 0xB006, 0xB007):  # success or warning
                report.stored.append(uid)
            else:
                report.failed[uid] = f"C-STORE status 0x{code:04X}"
    finally:
        assoc.release()
    _log(report)
    if not report.stored:
        raise MedassistError(f"{target}: the PACS stored none of {len(datasets)} instance(s): {next(iter(report.failed.values()), '')}")
    return report


def _log(report: SendReport) -> None:
    logger.info("send: %d instance(s) stored at %s, %d failed", len(report.stored), report.target, len(report.failed))
    for uid, reason in report.failed.items():
        logger.debug("send: %s: %s", uid, reason)
    if report.failed:
        logger.warning("send: %d instance(s) refused, e.g. %s", len(report.failed), next(iter(report.failed.values())))


def send_results(
    results_dir: str | Path,
    target: str,
    *,
    username: str | None = None,
    password: str | None = None,
    saliency_as: Sequence[str] = ("sc",),
    calling_aet: str = DEFAULT_CALLING_AET,
):
    """Make a triage run's DICOM results (SR per study, saliency SC/SEG) and send them to ``target``.

    What ``--send`` does after a triage. Returns (``DicomResults``, ``SendReport``); nothing to
    send (no scored row) is not an error.
    """
    from medassist.dicom_out.results import write_dicom_results

    made = write_dicom_results(results_dir, saliency_as=saliency_as)
    if not made.paths:
        return made, SendReport(target=redact_credentials(target))
    return made, send(target, made.paths, username=username, password=password, calling_aet=calling_aet)
