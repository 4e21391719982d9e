"""Run a throwaway local Orthanc PACS (the one the tests use) to try the PACS commands by hand.

    python scripts/orthanc_local.py [--load samples/export] [--workdir DIR]

Starts Debian's Orthanc (apt-get install orthanc orthanc-dicomweb orthanc-gdcm) on 127.0.0.1 with
free ports, basic auth and the DICOMweb plugin, optionally uploads DICOM files, prints how to
point medassist at it, and stops it cleanly on Ctrl-C. The storage is deleted afterwards unless
--workdir is given.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import conftest_orthanc  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", nargs="*", default=[], help="DICOM files or folders to upload")
    parser.add_argument("--workdir", help="keep Orthanc's config and storage here")
    args = parser.parse_args()
    if not conftest_orthanc.orthanc_available():
        print("Orthanc is not installed: apt-get install orthanc orthanc-dicomweb orthanc-gdcm", file=sys.stderr)
        return 1
    import requests

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        server = conftest_orthanc.start_orthanc(workdir)
        try:
            uploaded = 0
            for item in args.load:
                for path in ([Path(item)] if Path(item).is_file() else sorted(Path(item).rglob("*"))):
                    if path.is_file():
                        r = requests.post(f"{server.url}/instances", data=path.read_bytes(), auth=server.auth, timeout=60)
                        uploaded += r.status_code == 200
            user, password = server.auth
            print(f"Orthanc {server.url} (DICOM AET {server.aet} port {server.dicom_port}), {uploaded} file(s) uploaded")
            print(f"  export PACS_PASSWORD={password}")
            print(f"  medassist triage --pacs {server.dicomweb} --pacs-user {user} --pacs-password-env PACS_PASSWORD --out OUT")
            print(f"  its modality 'medassist' pushes to AET {conftest_orthanc.LISTENER_AET} on port {server.listener_port}:")
            print(f"  medassist listen --ae-title {conftest_orthanc.LISTENER_AET} --port {server.listener_port} "
                  f"--allow-ae {server.aet}@127.0.0.1 --out OUT")
            print("Ctrl-C stops it.")
            while server.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            print(f"stopped in {server.stop():.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
