"""A DICOM C-STORE receiver that triages each study once it has stopped arriving.

``listen(ae_title, port, out_dir)`` (what ``medassist listen`` calls) runs until interrupted:

* a pynetdicom storage SCP on ``host:port`` (loopback by default) accepts every storage SOP class
  in any transfer syntax but the deflated ones, plus C-ECHO, from the calling AEs in ``allow_ae``
  (``AE`` or ``AE@host``; ``allow_any_ae`` to take any), within ``ListenerLimits`` (timeouts, caps
  on associations per peer and in all, on the size of one instance), optionally over TLS
  (``medassist.pacs.guard`` has the details);
* each received instance is streamed to a file as it arrives (pynetdicom's
  ``STORE_RECV_CHUNKED_DATASET``, set for the process when a listener starts), never held whole in
  memory, and moved, as received (no decoding), to ``<spool>/<StudyInstanceUID>/<SOPInstanceUID>.dcm``
  (spool defaults to ``out_dir/spool``); one over ``max_instance_bytes`` is refused with status
  0xA700 and nothing of it is kept;
* a study is complete when no instance of it has arrived for ``idle_seconds``; it is then
  triaged (``medassist.triage.run_triage``) into ``out_dir/studies/<StudyInstanceUID>/``, and
  ``out_dir/worklist.{csv,json}`` is rewritten with the rows of every study there (a restarted
  listener keeps the earlier ones), highest priority first across studies;
* instances that arrive for a study after it was triaged make it due again: it is re-triaged
  once idle, on all its instances;
* an instance lands in the spool by one rename (from ``.<SOPInstanceUID>.part`` when pynetdicom's
  temporary folder is on another file system); ``.part`` files an interrupted run left behind are
  deleted when the listener starts, and the file of a transfer cut off mid-way at once.

Studies are triaged one at a time in a background thread, so receiving never waits on a model.
UIDs from the network are checked (digits and dots) before they become file names.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from medassist.errors import MedassistError
from medassist.optional import require
from medassist.pacs.guard import AssociationGate, ListenerLimits, ReceiveGuard, gate_rules, guarded_server

if TYPE_CHECKING:  # the triage stage (torch) is imported only when a study is triaged
    from medassist.triage.options import TriageOptions

logger = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
STATUS_SUCCESS = 0x0000
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_OUT_OF_RESOURCES = 0xA700
PART_SUFFIX = ".part"  # an instance being received; renamed to .dcm when complete


@dataclass
class StudyState:
    """Bookkeeping for one study in the spool."""

    study_uid: str
    received: int = 0
    last_seen: float = 0.0
    triaged_count: int = 0  # instances present at the last triage
    runs: int = 0
    error: str = ""


@dataclass
class TriagedStudy:
    """A study the listener triaged: where its results are, or why it failed."""

    study_uid: str
    out_dir: Path
    instances: int
    error: str = ""
    result: object = None


class StudyListener:
    """The C-STORE SCP and the idle watcher; ``start()``/``stop()`` or use as a context manager."""

    def __init__(
        self,
        ae_title: str,
        port: int,
        out_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        idle_seconds: float = 30.0,
        spool_dir: str | Path | None = None,
        triage: Callable | None = None,
        options: TriageOptions | None = None,
        on_study: Callable[[TriagedStudy], None] | None = None,
        allow_ae: Sequence[str] = (),
        allow_any_ae: bool = False,
        limits: ListenerLimits | None = None,
        tls: ssl.SSLContext | None = None,
    ):
        if not 1 <= len(ae_title.strip()) <= 16:
            raise MedassistError(f"AE title {ae_title!r}: 1 to 16 characters")
        if not allow_ae and not allow_any_ae:
            raise MedassistError("no calling AE is allowed to send: give each sender with --allow-ae AE[@HOST] "
                                 "(or --allow-any-ae to accept any calling AE title)")
        self.ae_title = ae_title.strip()
        self.limits = limits or ListenerLimits()
        self.gate = AssociationGate(gate_rules(allow_ae), allow_any=allow_any_ae, limits=self.limits)
        self.receive_guard = ReceiveGuard(self.limits)
        self.tls = tls
        self.host, self.port = host, int(port)
        self.out_dir = Path(out_dir)
        self.spool_dir = Path(spool_dir) if spool_dir is not None else self.out_dir / "spool"
        self.idle_seconds = float(idle_seconds)
        self.triage = triage
        self.options = options
        self.on_study = on_study
        self.studies: dict[str, StudyState] = {}
        self.triaged: list[TriagedStudy] = []
        self._lock = threading.Lock()
        self._merge_lock = threading.Lock()  # one merged-worklist write at a time
        self._stop = threading.Event()
        self._server = None
        self._accepting: threading.Thread | None = None
        self._watcher: threading.Thread | None = None

    # ------------------------------------------------------------------ receiving

    def _handle_store(self, event) -> int:
        """``evt.EVT_C_STORE``: move the instance pynetdicom wrote to a file into the spool."""
        received = _received_file(event)
        if received is None:
            logger.error("listener: no file for an instance from %s (STORE_RECV_CHUNKED_DATASET off?)", _peer(event))
            return STATUS_OUT_OF_RESOURCES
        size = received.stat().st_size
        if size > self.limits.max_instance_bytes:
            logger.warning("listener: refused an instance from %s: more than %d bytes (the instance size cap)",
                           _peer(event), self.limits.max_instance_bytes)
            return STATUS_OUT_OF_RESOURCES
        try:
            study_uid = _study_uid(received)
            sop_uid = str(event.request.AffectedSOPInstanceUID)
        except Exception as exc:
            logger.warning("listener: unreadable instance from %s: %s", _peer(event), type(exc).__name__)
            return STATUS_CANNOT_UNDERSTAND
        if not (_UID.match(study_uid) and _UID.match(sop_uid)) or len(study_uid) > 64 or len(sop_uid) > 64:
            logger.warning("listener: refused instance with invalid UIDs from %s", _peer(event))
            return STATUS_CANNOT_UNDERSTAND
        folder = self.spool_dir / study_uid
        path = folder / f"{sop_uid}.dcm"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _move_into(received, path)
        except OSError as exc:
            logger.error("listener: cannot store %s: %s", path, exc)
            return STATUS_OUT_OF_RESOURCES
        with self._lock:
            state = self.studies.setdefault(study_uid, StudyState(study_uid))
            state.received += 1
            state.last_seen = time.monotonic()
        logger.debug("listener: stored %s", path)
        return STATUS_SUCCESS

    def start(self) -> "StudyListener":
        """Start accepting associations and watching for idle studies; returns at once."""
        require("pynetdicom", extra="pacs", feature="medassist listen (the DICOM C-STORE receiver)")
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
        from pynetdicom.sop_class import Verification
        from pydicom.uid import UID

        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._remove_partial_files()
        self._recover_spool()
        _config.STORE_RECV_CHUNKED_DATASET = True  # instances go to a file as they arrive, not to memory
        ae = AE(ae_title=self.ae_title)
        # pydicom inflates a deflated data set whole in memory (even to read one attribute): not taken
        syntaxes = [ts for ts in ALL_TRANSFER_SYNTAXES if not UID(ts).is_deflated]
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, syntaxes)
        ae.add_supported_context(Verification)
        limits = self.limits
        ae.maximum_pdu_size = limits.max_pdu
        ae.acse_timeout, ae.dimse_timeout = limits.acse_timeout, limits.dimse_timeout
        ae.network_timeout = limits.network_timeout
        # The gate admits associations; pynetdicom's own cap (which also counts connections still to
        # ask, each dropped after acse_timeout) is only a backstop, as is its calling AE check.
        ae.maximum_associations = 4 * limits.max_associations
        if not self.gate.allow_any:
            ae.require_calling_aet = sorted({rule.ae for rule in self.gate.rules})
        handlers = [
            (evt.EVT_CONN_OPEN, self.receive_guard.on_connection_open),
            (evt.EVT_REQUESTED, self.gate.on_requested),
            (evt.EVT_PDU_RECV, self.receive_guard.on_pdu_received),
            (evt.EVT_CONN_CLOSE, self.receive_guard.on_connection_closed),
            (evt.EVT_C_STORE, self._handle_store),
        ]
        try:
            server = ae.make_server((self.host, self.port), ssl_context=self.tls, evt_handlers=handlers,
                                    server_class=guarded_server())
        except OSError as exc:
            raise MedassistError(f"cannot listen on {self.host}:{self.port} ({exc})") from exc
        self._server = server
        self._accepting = threading.Thread(target=server.serve_forever, name="medassist-listener-accept", daemon=True)
        self._accepting.start()
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="medassist-listener-watch", daemon=True)
        self._watcher.start()
        logger.info("listener: %s listening on %s:%d%s, spool %s, studies triaged after %.0f s idle",
                    self.ae_title, self.host, self.port, " (TLS)" if self.tls else "", self.spool_dir,
                    self.idle_seconds)
        if self.gate.allow_any:
            logger.warning("listener: accepting any calling AE title (--allow-any-ae): whoever can reach %s:%d "
                           "can send studies", self.host, self.port)
        else:
            logger.info("listener: calling AEs allowed: %s", ", ".join(str(rule) for rule in self.gate.rules))
        return self

    def _remove_partial_files(self) -> int:
        """Delete the ``.part`` files of transfers an earlier run did not finish (killed, crashed);
        called before receiving starts, so none of them is being written. Returns how many."""
        removed = 0
        for part in self.spool_dir.glob(f"*/.*{PART_SUFFIX}"):
            if _UID.match(part.parent.name) and part.is_file():
                part.unlink(missing_ok=True)
                removed += 1
        if removed:
            logger.info("listener: removed %d unfinished transfer(s) left in %s", removed, self.spool_dir)
        return removed

    def _recover_spool(self) -> None:
        """Studies left in the spool by an earlier run are due again (triaged once idle)."""
        for folder in sorted(p for p in self.spool_dir.iterdir() if p.is_dir() and _UID.match(p.name)):
            count = sum(1 for f in folder.glob("*.dcm"))
            if count and folder.name not in self.studies:
                self.studies[folder.name] = StudyState(folder.name, received=count, last_seen=time.monotonic())

    # ------------------------------------------------------------------ triage

    def _due(self, now: float) -> list[str]:
        with self._lock:
            return [s.study_uid for s in self.studies.values()
                    if s.received > s.triaged_count and now - s.last_seen >= self.idle_seconds]

    def _watch(self) -> None:
        poll = max(0.05, min(1.0, self.idle_seconds / 4))
        while not self._stop.wait(poll):
            for study_uid in self._due(time.monotonic()):
                if self._stop.is_set():
                    return
                self.triage_study(study_uid)

    def triage_study(self, study_uid: str) -> TriagedStudy:
        """Triage one spooled study now (the watcher calls this when the study is idle)."""
        with self._lock:
            state = self.studies.setdefault(study_uid, StudyState(study_uid))
            count = state.received
        folder = self.spool_dir / study_uid
        target = self.out_dir / "studies" / study_uid
        target.mkdir(parents=True, exist_ok=True)
        triage, options = self.triage, self.options
        if triage is None:
            from medassist.triage import run_triage as triage
        if options is None:
            from medassist.triage.options import TriageOptions

            options = TriageOptions()
        done = TriagedStudy(study_uid=study_uid, out_dir=target, instances=count)
        logger.info("listener: triaging a study (%d instance(s))", count)
        logger.debug("listener: triaging study %s", study_uid)
        try:
            done.result = triage([str(folder)], target, options)
        except Exception as exc:  # one bad study must not stop the listener
            done.error = str(exc) if isinstance(exc, MedassistError) else f"{type(exc).__name__}: {exc}"
            logger.error("listener: triage failed for the study in %s: %s", folder, done.error)
        with self._lock:
            state.triaged_count = count
            state.runs += 1
            state.error = done.error
            self.triaged = [t for t in self.triaged if t.study_uid != study_uid] + [done]
        self._merge_worklists()
        if self.on_study is not None:
            try:
                self.on_study(done)
            except Exception:
                logger.exception("listener: on_study callback failed for %s", study_uid)
        return done

    def _merge_worklists(self) -> None:
        """``out_dir/worklist.{csv,json}`` and ``quarantine.csv``: the rows of every study folder
        under ``out_dir/studies/`` (earlier runs' too), in priority order across studies, written
        by triage's own atomic writer. Saliency paths are made relative to ``out_dir``."""
        from medassist.datamodel import WorklistRow
        from medassist.triage.worklist import write_worklist

        merged: list[WorklistRow] = []
        for path in sorted((self.out_dir / "studies").glob("*/worklist.json")):
            folder = path.parent.relative_to(self.out_dir)
            try:
                records = json.loads(path.read_text(encoding="utf-8"))
                rows = [WorklistRow.from_record(record, where=f"{path}: row {number}", as_written=True)
                        for number, record in enumerate(records, start=1)]
            except (OSError, ValueError, MedassistError) as exc:
                logger.error("listener: %s left out of the merged worklist: %s", path, exc)
                continue
            for row in rows:
                if row.saliency_path:
                    row = replace(row, saliency_path=str(folder / row.saliency_path))
                merged.append(row)
        with self._merge_lock:
            write_worklist(self.out_dir, merged)

    # ------------------------------------------------------------------ stopping

    def stop(self, *, flush: bool = False) -> None:
        """Stop receiving; with ``flush``, triage studies still waiting, without the idle wait."""
        self._stop.set()
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()
            for assoc in server.active_associations:  # no instance arrives after stop()
                try:
                    assoc.abort()
                except Exception:
                    logger.debug("listener: abort on stop failed", exc_info=True)
        if self._accepting is not None:
            self._accepting.join(timeout=10)
            self._accepting = None
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        if flush:
            with self._lock:
                pending = [s.study_uid for s in self.studies.values() if s.received > s.triaged_count]
            for study_uid in pending:
                self.triage_study(study_uid)

    def wait_for(self, n_studies: int, timeout: float) -> bool:
        """Block until ``n_studies`` studies have been triaged (True) or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.triaged) >= n_studies:
                    return True
            time.sleep(0.05)
        return False

    def __enter__(self) -> "StudyListener":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def listen(
    ae_title: str,
    port: int,
    out_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    idle_seconds: float = 30.0,
    spool_dir: str | Path | None = None,
    triage: Callable | None = None,
    on_study: Callable[[TriagedStudy], None] | None = None,
    stop_event: threading.Event | None = None,
    send_to: str | None = None,
    send_username: str | None = None,
    send_password: str | None = None,
    allow_ae: Sequence[str] = (),
    allow_any_ae: bool = False,
    limits: ListenerLimits | None = None,
    tls: ssl.SSLContext | None = None,
    options: TriageOptions | None = None,
) -> list[TriagedStudy]:
    """Receive and triage until Ctrl-C (or ``stop_event`` is set); see the module docstring.

    ``options`` (``TriageOptions``; None: the defaults) go to ``run_triage`` (or ``triage``, called
    as ``triage(inputs, out_dir, options)``).
    ``send_to``: after each study, send its SR and saliency captures there (``pacs.send`` targets).
    ``allow_ae``/``allow_any_ae``, ``limits``, ``tls``: who may send and how much (``StudyListener``).
    On stop, studies still waiting are triaged before returning. Returns what was triaged.
    """
    if send_to:
        on_study = _sending(on_study, send_to, send_username, send_password)
    listener = StudyListener(ae_title, port, out_dir, host=host, idle_seconds=idle_seconds, spool_dir=spool_dir,
                             triage=triage, options=options, on_study=on_study, allow_ae=allow_ae,
                             allow_any_ae=allow_any_ae, limits=limits, tls=tls)
    listener.start()
    stop_event = stop_event or threading.Event()
    try:
        while not stop_event.wait(0.5):
            pass
    except KeyboardInterrupt:
        logger.info("listener: interrupted; triaging studies still waiting")
    finally:
        listener.stop(flush=True)
    return listener.triaged


def _sending(then: Callable | None, target: str, username: str | None, password: str | None) -> Callable:
    """An ``on_study`` callback that sends the study's DICOM results, then calls ``then``."""
    from medassist.pacs.send import send_results

    def callback(done: TriagedStudy) -> None:
        if not done.error:
            try:
                made, report = send_results(done.out_dir, target, username=username, password=password)
                failed = len(made.problems) + len(report.failed)
                logger.log(logging.WARNING if failed else logging.INFO, "listener: %d result instance(s) sent to %s, "
                           "%d could not be built or sent", len(report.stored), report.target, failed)
            except MedassistError as exc:
                logger.error("listener: results of the study in %s not sent: %s", done.out_dir, exc)
        if then is not None:
            then(done)

    return callback


def _received_file(event) -> Path | None:
    """The file pynetdicom streamed this C-STORE's data set into, if there is one."""
    try:
        path = event.dataset_path
    except AttributeError:
        return None
    return Path(path) if path is not None and Path(path).is_file() else None


def _study_uid(path: Path) -> str:
    """StudyInstanceUID of a received file, read without its pixel data or other large values."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, defer_size=64 * 1024, specific_tags=["StudyInstanceUID"])
    return str(ds.StudyInstanceUID)


def _move_into(source: Path, target: Path) -> None:
    """Put ``source`` at ``target`` atomically: one rename, or (across file systems) a copy to
    ``.<name>.part`` beside ``target`` and a rename; the copy is removed if anything fails."""
    try:
        os.replace(source, target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    part = target.with_name(f".{target.stem}{PART_SUFFIX}")
    try:
        shutil.copyfile(source, part)
        os.chmod(part, 0o600)
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    source.unlink(missing_ok=True)


def _peer(event) -> str:
    try:
        info = event.assoc.requestor
        return f"{info.ae_title}@{info.address}:{info.port}"
    except Exception:
        return "?"
