"""triage stage: batches series through the shipped models and writes the worklist, resumably.

Public API::

    from medassist.triage import run_triage, TriageOptions, TriageSummary
    summary = run_triage(["exports/"], "out/", TriageOptions(device="auto", batch_size=16, num_workers=1))

``run_triage`` (discover + score) and ``triage_series`` (score already-discovered series) live in
``run``; the options every backend and front end passes along (``TriageOptions``) in ``options``;
the worklist's row, ordering and file conventions in ``worklist``; the resume journal in
``journal``; how a model family turns a series into network inputs in ``inputs``.
"""

from medassist.triage.options import TriageOptions
from medassist.triage.run import TriageSummary, run_triage, triage_series
from medassist.triage.worklist import NOT_APPLICABLE, row_kind

__all__ = ["NOT_APPLICABLE", "TriageOptions", "TriageSummary", "row_kind", "run_triage", "triage_series"]
