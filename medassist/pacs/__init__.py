"""pacs stage: talk to a PACS. Pull studies over DICOMweb, receive them by C-STORE, send results back.

Map of the package:

* ``dicomweb`` - QIDO-RS search and WADO-RS retrieval (dicomweb-client), ``triage_from_pacs``;
* ``listener`` - pynetdicom C-STORE receiver that triages each study once it goes idle, ``listen``;
* ``guard``    - what the listener lets a peer do: allowed AEs, timeouts, association and size caps, TLS;
* ``send``     - store our DICOM results at a PACS: STOW-RS (http...) or C-STORE (dicom://AET@host:port).

dicomweb-client, requests and pynetdicom are imported when a function needs them.
"""

from medassist.pacs.dicomweb import find_studies, password_from_env, pull_studies, triage_from_pacs
from medassist.pacs.listener import StudyListener, listen
from medassist.pacs.send import SendReport, send, send_results

__all__ = [
    "find_studies",
    "pull_studies",
    "triage_from_pacs",
    "password_from_env",
    "StudyListener",
    "listen",
    "send",
    "SendReport",
    "send_results",
]
