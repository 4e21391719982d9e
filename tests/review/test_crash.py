"""Decisions survive a reviewer's process killed with SIGKILL while another reviewer keeps deciding."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from medassist.review.store import DecisionStore, open_store, verify_chain

# A reviewer's app in miniature: record decisions in a loop, print each stored id once committed.
_WRITER = """
import sys
from medassist.review.store import DecisionStore
store, reviewer, n = DecisionStore(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(n):
    row = store.record_decision(
        study_uid="1.2.3", series_uid=f"1.2.3.{i}", model="fracture_xray", model_version="1.0.0",
        finding="fracture", score=0.91, threshold=0.5, model_flagged=True, decision="accept", reviewer=reviewer,
    )
    print(row.id, flush=True)
"""


def start_writer(db: str, reviewer: str, n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _WRITER, db, reviewer, str(n)], stdout=subprocess.PIPE, text=True)


def test_decisions_survive_a_sigkilled_reviewer_while_another_one_writes(tmp_path):
    db = str(open_store(tmp_path / "decisions.sqlite").path)
    survivor = start_writer(db, "survivor", 60)
    victim = start_writer(db, "victim", 10_000)
    acknowledged = []
    for line in victim.stdout:  # ids the victim saw committed
        acknowledged.append(int(line))
        if len(acknowledged) == 25:
            break
    os.kill(victim.pid, signal.SIGKILL)  # mid-stream: it may be inside a write transaction
    victim.wait(timeout=60)
    survivor_ids = [int(line) for line in survivor.stdout]
    assert survivor.wait(timeout=300) == 0

    store = DecisionStore(db)
    rows = {row.id: row for row in store.all_rows()}
    assert set(acknowledged) <= set(rows), "every decision a reviewer saw stored is still there"
    assert set(survivor_ids) <= set(rows) and len(survivor_ids) == 60
    assert {rows[i].reviewer for i in acknowledged} == {"victim"}
    assert verify_chain(db) == [], "the hash chain is intact after the kill"
    open_store(db)  # the app opens it again (and settles an anchor the kill left pending)
    after = store.record_decision(
        study_uid="1.2.3", series_uid="1.2.3.999", model="fracture_xray", model_version="1.0.0", finding="fracture",
        score=0.2, threshold=0.5, model_flagged=False, decision="reject", reviewer="next-day",
    )
    assert after.prev_hash == rows[max(rows)].row_hash and verify_chain(db) == []
    assert victim.returncode == -signal.SIGKILL
