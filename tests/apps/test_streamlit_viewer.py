"""The review app through Streamlit's AppTest: load, filter, open, view, decide, reload."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest
from streamlit import config
from streamlit.testing.v1 import AppTest

from medassist.review import accounts, throttle
from review_factory import PASSWORD, PATIENT_NAMES, Clock

APP = Path(__file__).resolve().parents[2] / "apps" / "streamlit_viewer.py"

TIMEOUT = 120


@pytest.fixture(autouse=True)
def loopback_app(tmp_path, monkeypatch):
    """As `medassist review` runs it: bound to 127.0.0.1, its own (empty) users file, no proxy."""
    previous = config.get_option("server.address")
    config.set_option("server.address", "127.0.0.1")
    monkeypatch.setenv(accounts.USERS_FILE_ENV, str(tmp_path / "conf" / "review-users.json"))
    monkeypatch.delenv("MEDASSIST_REVIEW_SESSION", raising=False)
    monkeypatch.delenv("MEDASSIST_REVIEW_PASSWORD", raising=False)
    yield
    config.set_option("server.address", previous)


@pytest.fixture()
def app(triage_out, monkeypatch):
    monkeypatch.setenv("MEDASSIST_OUT", str(triage_out))
    monkeypatch.setattr(sys, "argv", ["streamlit_viewer.py"])  # not pytest's arguments

    def start() -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
        assert not at.exception, at.exception
        return at

    return start


def all_text(at: AppTest) -> str:
    parts = []
    for kind in ("markdown", "caption", "success", "warning", "error", "info", "subheader", "title"):
        parts += [str(getattr(e, "value", "")) for e in getattr(at, kind)]
    for table in at.dataframe:
        parts.append(table.value.to_csv())
    for box in at.selectbox:
        parts += [str(o) for o in box.options]
    return "\n".join(parts)


def table_with(at: AppTest, column: str):
    """The first dataframe having ``column`` (dataframes without selection carry no key)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def select_study(at: AppTest, accession: str) -> AppTest:
    box = at.selectbox(key="study")
    index = next(i for i, label in enumerate(box.options) if accession in label)
    box.select_index(index).run()
    assert not at.exception, at.exception
    return at


def decision_radio(at: AppTest):
    return next(r for r in at.radio if r.key.startswith("dec_"))


def record_button(at: AppTest):
    return next(b for b in at.button if b.key.startswith("record_"))


def test_loads_the_worklist_in_priority_order(app):
    at = app()
    labels = at.selectbox(key="study").options
    assert [label.split(" · ")[0].lstrip("⚑ ") for label in labels] == ["ACC001", "ACC002", "ACC003", "ACC004"]
    table = table_with(at, "Accession")
    assert list(table["Accession"]) == ["ACC001", "ACC002", "ACC003", "ACC004"]
    assert list(table["Status"]) == ["unreviewed", "unreviewed", "unreviewed", "no findings"]
    sidebar = " ".join(m.value for m in at.sidebar.markdown)
    assert "**4** of **4** studies shown" in sidebar and "**2** flagged" in sidebar


def test_filters_narrow_the_worklist_and_counts_follow(app):
    at = app()
    at.checkbox(key="f_flagged").check().run()
    assert len(at.selectbox(key="study").options) == 2
    at.multiselect(key="f_modality").select("CT").run()
    assert [o.split(" · ")[0].lstrip("⚑ ") for o in at.selectbox(key="study").options] == ["ACC002"]
    assert "**1** of **4** studies shown" in " ".join(m.value for m in at.sidebar.markdown)
    at.checkbox(key="f_flagged").uncheck().run()
    at.multiselect(key="f_modality").unselect("CT").run()
    at.multiselect(key="f_status").select("no findings").run()
    assert [o.split(" · ")[0] for o in at.selectbox(key="study").options] == ["ACC004"]


def test_open_a_volume_study_shows_viewer_and_finding(app):
    at = select_study(app(), "ACC002")
    text = all_text(at)
    assert "bleed_ct" in text and "0.3.0" in text and "0.750" in text and "0.500" in text
    assert "Patient ID PID-002" in text
    # slice slider starts on the first flagged slice; jump buttons for each flagged slice
    slider = next(s for s in at.slider if s.key.startswith("slice_"))
    assert slider.value == 2
    next(b for b in at.button if b.key.endswith("_3") and b.key.startswith("jump_")).click().run()
    assert next(s for s in at.slider if s.key.startswith("slice_")).value == 3
    # window presets for CT include bone and brain
    window = next(s for s in at.selectbox if s.key.startswith("win_"))
    assert any(o.startswith("Bone (C 300 / W 1500)") for o in window.options)
    assert any(o.startswith("Brain (C 40 / W 80)") for o in window.options)
    window.set_value(next(o for o in window.options if o.startswith("Bone"))).run()
    assert not at.exception
    captions = " ".join(c.value for c in at.caption)
    assert "Bone (C 300 / W 1500)" in captions and "slice 3 of 4" in captions
    assert "How sure: no validation table ships for bleed_ct 0.3.0" in captions  # never a made-up confidence
    # overlay: a labelled, separate layer that can be switched off
    assert "Overlay layer" in captions
    toggle = next(t for t in at.toggle if t.key.startswith("ovl_"))
    assert toggle.value is True
    toggle.set_value(False).run()
    assert "Overlay layer" not in " ".join(c.value for c in at.caption)
    # manual window and zoom
    window = next(s for s in at.selectbox if s.key.startswith("win_"))
    window.set_value("Manual").run()
    assert any(s.key.startswith("wc_") for s in at.slider) and any(s.key.startswith("ww_") for s in at.slider)
    next(s for s in at.select_slider if s.key.startswith("zoom_")).set_value(2.0).run()
    assert not at.exception and "zoom 2x" in " ".join(c.value for c in at.caption)


def test_viewer_names_the_saliency_peak_it_rings(app, triage_out):
    import numpy as np

    from medassist.datamodel import read_worklist

    dx = next(r for r in read_worklist(triage_out) if r.accession == "ACC001")
    sal = np.load(dx.saliency_path)
    row, col = np.unravel_index(int(np.argmax(sal)), sal.shape)
    assert (row, col) == (26, 48)  # the factory's blob at 0.4 x 64, 0.6 x 80
    at = select_study(app(), "ACC001")
    captions = " ".join(c.value for c in at.caption)
    assert f"Yellow ring: the model's peak (row {row}, col {col}) — where the map is highest." in captions
    next(t for t in at.toggle if t.key.startswith("ovl_")).set_value(False).run()
    assert "Yellow ring" not in " ".join(c.value for c in at.caption)  # no map shown, no ring

    ct = select_study(at, "ACC002")  # a volume: the peak of the shown slice (2, a flagged one)
    captions = " ".join(c.value for c in ct.caption)
    assert "Yellow ring: the model's peak (row 24, col 24) — where the map is highest on this slice." in captions


def test_patient_names_never_appear(app):
    at = app()
    for accession in ("ACC001", "ACC002", "ACC003", "ACC004"):
        select_study(at, accession)
        text = all_text(at)
        for name in PATIENT_NAMES:
            assert name not in text and name.split("^")[0] not in text


def test_deciding_requires_a_reviewer(app):
    at = select_study(app(), "ACC001")
    decision_radio(at).set_value("accept").run()
    assert record_button(at).disabled
    at.text_input(key="reviewer").input("Dr Who").run()
    assert not record_button(at).disabled


def test_decide_persists_and_shows_after_reload(app, triage_out):
    at = app()
    at.text_input(key="reviewer").input("Dr Grey").run()
    select_study(at, "ACC002")
    decision_radio(at).set_value("correct").run()
    corrected = next(t for t in at.text_input if t.key.startswith("corr_"))
    corrected.input("calcification").run()
    next(n for n in at.number_input if n.key.startswith("loc_row_")).set_value(21).run()
    next(t for t in at.text_area if t.key.startswith("comment_")).input("dense, not blood").run()
    record_button(at).click().run()
    assert not at.exception
    assert any("Recorded: correct" in s.value for s in at.success)

    with sqlite3.connect(triage_out / "decisions.sqlite") as conn:
        rows = conn.execute(
            "SELECT model, finding, decision, corrected_finding, location, comment, reviewer, score, model_flagged "
            "FROM decisions"
        ).fetchall()
    assert rows == [("bleed_ct", "haemorrhage", "correct", "calcification", '{"col":24,"row":21,"slice":2}',
                     "dense, not blood", "Dr Grey (unauthenticated, loopback)", 0.75, 1)]

    fresh = app()  # a new session: nothing in session state, everything from SQLite
    table = table_with(fresh, "Accession")
    assert dict(zip(table["Accession"], table["Status"]))["ACC002"] == "reviewed"
    select_study(fresh, "ACC002")
    assert any("Current decision: **correct → calcification** by Dr Grey (unauthenticated, loopback)" in s.value
               for s in fresh.success)
    history = table_with(fresh, "Reviewer")
    assert list(history["Decision"]) == ["correct"] and list(history["Comment"]) == ["dense, not blood"]
    assert "Cyan cross: marked location (row 21, col 24)" in " ".join(c.value for c in fresh.caption)


def test_change_of_mind_appends_and_next_unreviewed(app, triage_out):
    at = app()
    at.text_input(key="reviewer").input("Dr A").run()
    select_study(at, "ACC001")
    decision_radio(at).set_value("accept").run()
    record_button(at).click().run()
    decision_radio(at).set_value("reject").run()
    record_button(at).click().run()
    history = table_with(at, "Reviewer")
    assert list(history["Decision"]) == ["accept", "reject"]
    at.button(key="next").click().run()
    assert [h.value for h in at.main.subheader] == ["Study ACC002"]
    with sqlite3.connect(triage_out / "decisions.sqlite") as conn:
        assert conn.execute("SELECT decision FROM decisions ORDER BY id").fetchall() == [("accept",), ("reject",)]


def test_export_button_writes_the_csv(app, triage_out):
    at = app()
    at.text_input(key="reviewer").input("Dr A").run()
    select_study(at, "ACC003")
    decision_radio(at).set_value("reject").run()
    record_button(at).click().run()
    at.button(key="export").click().run()
    exported = (triage_out / "decisions_export.csv").read_text()
    assert exported.splitlines()[0].startswith("id,study_uid,series_uid,model")
    assert ",reject," in exported and "Dr A" in exported


def test_error_study_shows_the_error_and_nothing_to_decide(app):
    at = select_study(app(), "ACC004")
    assert any("pixel data truncated" in e.value for e in at.error)
    assert any("nothing to decide" in i.value for i in at.info)
    assert not [b for b in at.button if b.key.startswith("record_")]


def test_missing_out_dir_and_worklist(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["streamlit_viewer.py"])
    monkeypatch.delenv("MEDASSIST_OUT", raising=False)
    monkeypatch.delenv("MEDASSIST_REVIEW_PASSWORD", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert any("No triage output folder" in e.value for e in at.error)
    monkeypatch.setenv("MEDASSIST_OUT", str(tmp_path))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert any("no worklist.json" in e.value for e in at.error)


def test_refuses_to_serve_beyond_loopback(app):
    config.set_option("server.address", "0.0.0.0")
    at = app()
    assert any("loopback only" in e.value for e in at.error)
    assert not at.selectbox and "PID-" not in all_text(at)


def sign_in(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input(key="signin_name").input(name)
    at.text_input(key="signin_password").input(password)
    at.button(key="signin").click().run()
    assert not at.exception, at.exception
    return at


def test_with_accounts_the_reviewer_is_the_signed_in_account(app, triage_out, monkeypatch):
    monkeypatch.setattr(throttle, "_shared", throttle.LoginThrottle(clock=Clock()))
    accounts.add_user("dr.grey", PASSWORD)
    at = app()
    assert not at.selectbox and "PID-" not in all_text(at)  # nothing before signing in
    sign_in(at, "dr.grey", "wrong password")
    assert any("Wrong account name or password" in e.value for e in at.error) and not at.selectbox
    assert at.text_input(key="signin_password").value == ""  # the password does not stay in the session
    sign_in(at, "dr.grey", PASSWORD)
    assert at.selectbox(key="study").options
    assert not [t for t in at.text_input if t.key == "reviewer"]  # no typed name to claim someone else's
    assert "Signed in as **dr.grey**" in " ".join(m.value for m in at.sidebar.markdown)
    select_study(at, "ACC001")
    decision_radio(at).set_value("reject").run()
    record_button(at).click().run()
    with sqlite3.connect(triage_out / "decisions.sqlite") as conn:
        assert conn.execute("SELECT decision, reviewer FROM decisions").fetchall() == [("reject", "dr.grey")]
    at.button(key="signout").click().run()
    assert not at.selectbox and at.text_input(key="signin_name")


def test_removed_account_is_signed_out_on_the_next_rerun(app, monkeypatch):
    monkeypatch.setattr(throttle, "_shared", throttle.LoginThrottle(clock=Clock()))
    accounts.add_user("dr.grey", PASSWORD)
    accounts.add_user("house", PASSWORD)
    at = sign_in(app(), "dr.grey", PASSWORD)
    assert at.selectbox(key="study").options
    accounts.remove_user("dr.grey")
    at.run()
    assert not at.selectbox and at.text_input(key="signin_name")


def test_failed_sign_ins_back_off_across_sessions(app, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(throttle, "_shared", throttle.LoginThrottle(clock=clock, free=3, base=5))
    accounts.add_user("dr.grey", PASSWORD)
    at = app()
    for _ in range(3):
        sign_in(at, "dr.grey", "a wrong guess")
        assert any("Wrong account name or password" in e.value for e in at.error)
    sign_in(at, "dr.grey", "a wrong guess")
    assert any("try again in 5 s" in e.value for e in at.error)
    sign_in(at, "dr.grey", PASSWORD)  # the right password is not even checked while locked
    assert any("try again in 5 s" in e.value for e in at.error) and not at.selectbox
    fresh = sign_in(app(), "dr.grey", PASSWORD)  # a new session (reload) waits all the same
    assert any("try again in 5 s" in e.value for e in fresh.error) and not fresh.selectbox
    clock.now += 5
    sign_in(fresh, "dr.grey", PASSWORD)
    assert fresh.selectbox(key="study").options


def test_behind_the_proxy_no_session_cookie_shows_nothing(app, monkeypatch):
    monkeypatch.setenv("MEDASSIST_REVIEW_SESSION", "proxy")
    accounts.add_user("dr.grey", PASSWORD)
    at = app()
    assert any("Not signed in" in e.value for e in at.error)
    assert not at.selectbox and not at.text_input and "PID-" not in all_text(at)
