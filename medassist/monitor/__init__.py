"""monitor stage: after go-live, how the shipped models behave on a site's own triage runs.

``medassist monitor RUN_DIR... --out REPORT_DIR [--reference RUN_DIR]`` reads triage output folders
(their ``worklist.csv`` and, where the review app was used, ``decisions.sqlite``) and reports, per
model and version, per run and per ISO week: studies, flag rate, score drift against a reference
(the --reference run, else the validation distribution of the version's model card; PSI with fixed
reference bins and a bootstrap interval, Kolmogorov-Smirnov), and
agreement with the reviewers (accept / reject / correct, Cohen's kappa, overrides) overall and by
body part, modality, manufacturer, sex and age band; alerts when a limit of ``configs/monitor.yaml``
is crossed.

Modules: :mod:`.limits` (the limits file), :mod:`.drift` (PSI, KS, flag-rate band),
:mod:`.card_reference` (a model card's validation score distribution),
:mod:`.agreement_view` (decision logs, read-only, through ``medassist.audit.agreement``),
:mod:`.run` (reading runs, figures and alerts), :mod:`.report` (monitor.json and report.html).
Entry point: :func:`medassist.monitor.run.run_monitor`.
"""

from __future__ import annotations

__all__ = ["run_monitor"]


def __getattr__(name: str):
    if name == "run_monitor":
        from medassist.monitor.run import run_monitor

        return run_monitor
    raise AttributeError(f"module 'medassist.monitor' has no attribute {name!r}")
