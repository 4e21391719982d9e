"""A throwaway Orthanc PACS for tests: Debian's /usr/sbin/Orthanc on loopback, own config and storage.

Used by ``tests/pacs/conftest.py`` (session fixture ``orthanc``). Needs the Debian packages
``orthanc orthanc-dicomweb orthanc-gdcm``; without /usr/sbin/Orthanc the tests are skipped.

The server listens on 127.0.0.1 only (RemoteAccessAllowed false), on free ports, requires HTTP
basic auth (a test user), loads the DICOMweb and GDCM plugins, and knows one DICOM modality,
``medassist``, for our listener (AET ``MEDASSIST`` on a port reserved here), so a test can make
Orthanc push a study with ``POST /modalities/medassist/store``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ORTHANC = "/usr/sbin/Orthanc"
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
PLUGINS = ("libOrthancDicomWeb.so", "libOrthancGdcm.so")
USER, PASSWORD = "medassist-test", "not-a-secret-0"
LISTENER_AET = "MEDASSIST"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the usual bind-to-0 trick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_plugins() -> list[str]:
    """The plugin .so files (as ``dpkg -L orthanc-dicomweb orthanc-gdcm`` lists them)."""
    found = []
    for name in PLUGINS:
        for folder in PLUGIN_DIRS:
            path = Path(folder) / name
            if path.exists():
                found.append(str(path))
                break
    return found


@dataclass
class OrthancServer:
    """A running Orthanc; ``url`` is its REST root, ``dicomweb`` its DICOMweb root."""

    process: subprocess.Popen
    workdir: Path
    http_port: int
    dicom_port: int
    aet: str
    listener_port: int
    startup_seconds: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return USER, PASSWORD

    def log(self) -> str:
        path = self.workdir / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout: float = 60.0) -> float:
        """SIGTERM, then wait for Orthanc to close its database; returns the seconds it took."""
        start = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return time.monotonic() - start


def start_orthanc(workdir: Path, *, timeout: float = 120.0) -> OrthancServer:
    """Write a config into ``workdir``, start Orthanc and wait until ``/system`` answers."""
    import requests

    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    http_port, dicom_port, listener_port = free_port(), free_port(), free_port()
    config = {
        "Name": "medassist-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "HttpBindAddress": "127.0.0.1",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": find_plugins(),
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Host": f"127.0.0.1:{http_port}"},
        "DicomModalities": {"medassist": [LISTENER_AET, "127.0.0.1", listener_port]},
        "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": False,
        "ConcurrentJobs": 1,
        "HttpThreadsCount": 10,
        "StableAge": 2,
        "SaveJobs": False,
        "HttpTimeout": 30,
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = open(workdir / "orthanc.log", "wb")
    started = time.monotonic()
    process = subprocess.Popen([ORTHANC, str(config_path)], stdout=log, stderr=subprocess.STDOUT,
                               cwd=workdir, start_new_session=True)
    server = OrthancServer(process, workdir, http_port, dicom_port, "ORTHANC", listener_port)
    deadline = started + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}:\n{server.log()[-3000:]}")
        try:
            r = requests.get(f"{server.url}/system", auth=server.auth, timeout=5)
            if r.status_code == 200:
                server.startup_seconds = time.monotonic() - started
                return server
        except requests.exceptions.RequestException:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"Orthanc did not answer /system within {timeout:.0f} s:\n{server.log()[-3000:]}")


def orthanc_available() -> bool:
    return os.path.exists(ORTHANC) and shutil.which(ORTHANC) is not None


# --------------------------------------------------------------------------- a stand-in for run_triage


def fake_triage(inputs, out_dir, options=None):
    """Stands in for ``medassist.triage.run_triage`` (same call shape: ``options`` a TriageOptions,
    not used) where no model is needed.

    Finds the series with the real ingest stage, then writes the worklist contract's
    ``worklist.json`` (a list of records) and ``worklist.csv``: DX/CR series get a finding with
    a deterministic score and a saliency map (.npy, source geometry, a bright block), other
    series an error row. Returns the records.
    """
    import csv

    import numpy as np

    from medassist.datamodel import WORKLIST_COLUMNS, WorklistRow
    from medassist.ingest import discover_series

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    series, _ = discover_series([str(p) for p in inputs])
    records = []
    for s in series:
        if s.modality.upper() not in ("DX", "CR"):
            records.append(WorklistRow.for_series(s, error=f"no shipped model applies to {s.modality}").as_record())
            continue
        import pydicom

        header = pydicom.dcmread(s.paths[0], stop_before_pixels=True)
        rows, cols = int(header.Rows), int(header.Columns)
        saliency = np.zeros((len(s.paths), rows, cols), np.float32)
        saliency[:, rows // 4: rows // 2, cols // 4: cols // 2] = 1.0
        saliency_path = out_dir / "saliency" / f"{s.series_uid}.npy"
        saliency_path.parent.mkdir(exist_ok=True)
        np.save(saliency_path, saliency[0] if len(s.paths) == 1 else saliency)
        score = (int(s.series_uid.replace(".", "")[-4:]) % 1000) / 1000.0
        records.append(WorklistRow.for_series(
            s, model="fracture_xray", model_version="1.0.0", finding="fracture", score=score,
            threshold=0.5, flagged=score >= 0.5, saliency_path=str(saliency_path)).as_record())
    (out_dir / "worklist.json").write_text(json.dumps(records, indent=1))
    with open(out_dir / "worklist.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(WORKLIST_COLUMNS))
        writer.writeheader()
        writer.writerows(records)
    return records


def wait_until(predicate, timeout: float, interval: float = 0.1):
    """Poll ``predicate`` until it returns truthy (its value) or ``timeout`` passes (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None
