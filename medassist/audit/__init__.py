"""audit stage: metrics with intervals, subgroups, calibration, review agreement, model cards.

Entry points (imported lazily, so importing the package stays light; the metrics live in ``medassist.metrics``):
``run_audit`` regenerates the model cards; ``verify_review_log`` checks the review log's chain.
"""

from __future__ import annotations

__all__ = ["run_audit", "verify_review_log"]


def __getattr__(name: str):
    if name == "run_audit":
        from medassist.audit.run import run_audit

        return run_audit
    if name == "verify_review_log":
        from medassist.audit.agreement import verify_review_log

        return verify_review_log
    raise AttributeError(f"module 'medassist.audit' has no attribute {name!r}")
