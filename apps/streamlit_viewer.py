"""medassist review: the radiologist's viewer over a triage output folder.

    medassist review OUT_DIR                               (binds 127.0.0.1, see review/server.py)
    streamlit run apps/streamlit_viewer.py --server.address 127.0.0.1 -- OUT_DIR   (or MEDASSIST_OUT=OUT_DIR)

Who records a decision: behind ``medassist review --public`` (nginx) the name in the signed session
cookie; on loopback with reviewer accounts, the account that signed in here (failed sign-ins slowed
down by ``review.throttle``); on loopback without accounts, a typed name marked
"(unauthenticated, loopback)". The app refuses to serve on anything but loopback itself.

A thin layout over ``medassist.review.logic`` (worklist, windowing, overlay, zoom) and
``medassist.review.store`` (decisions in OUT/decisions.sqlite). The model only proposes: every
finding waits for a person's accept / reject / correct, and nothing is final until then.
Never shows a patient name (it is never read); patient ID is shown, never logged.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import streamlit as st

from medassist.datamodel import WorklistRow, read_worklist, worklist_path
from medassist.errors import MedassistError
from medassist.keys import load_site_key
from medassist.review import accounts, logic, session
from medassist.review.server import is_loopback
from medassist.review.store import DecisionStore, default_db_path, open_store
from medassist.review.throttle import shared_throttle

MODE_ENV = "MEDASSIST_REVIEW_SESSION"  # "proxy": set by `medassist review --public`
UNVERIFIED = "(unauthenticated, loopback)"
LOGIN_URL, LOGOUT_URL = "/_medassist/login", "/_medassist/logout"
DECISION_LABELS = {
    "accept": "Accept - the finding is right",
    "reject": "Reject - no such finding",
    "correct": "Correct - change the label / mark the location",
}
ZOOMS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
CENTRES = ("Image centre", "Saliency peak", "Custom")
MANUAL = "Manual"


def _k(*parts: object) -> str:
    """A short stable widget key from identifiers (UIDs are long)."""
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:12]


@st.cache_data(show_spinner=False, max_entries=4)
def _load_rows(path: str, mtime_ns: int, size: int) -> list[WorklistRow]:
    del mtime_ns, size  # cache keys: a rewritten worklist is read again
    return read_worklist(path)


@st.cache_resource(show_spinner=False)
def _store(path: str) -> DecisionStore:
    return open_store(path)


def _mode() -> str:
    """proxy (signed cookie from nginx's sign-in), accounts (sign in here) or single (no accounts)."""
    if os.environ.get(MODE_ENV) == "proxy":
        return "proxy"
    return "accounts" if accounts.has_accounts() else "single"


def _proxy_user() -> str | None:
    """The account named by a valid session cookie (signature, expiry, account still there)."""
    token = st.context.cookies.get(session.COOKIE_NAME)
    found = session.verify(session.session_key(load_site_key(create=False)), token) if token else None
    return found.user if found and accounts.account_exists(found.user) else None


def current_reviewer() -> str | None:
    """The reviewer recorded with a decision now, or None when nobody may record one."""
    mode = _mode()
    if mode == "proxy":
        return _proxy_user()
    if mode == "accounts":
        user = st.session_state.get("signed_in")
        return user if user and accounts.account_exists(user) else None
    typed = " ".join(str(st.session_state.get("reviewer", "")).split())
    return f"{typed} {UNVERIFIED}" if typed else None


def _sign_in(name_key: str, password_key: str) -> None:
    """Button callback: check the account's password (throttled); the password leaves the state."""
    state = st.session_state
    name, password = state.get(name_key, ""), state.get(password_key, "")
    state[password_key] = ""
    result = accounts.sign_in(name, password, st.context.ip_address or "loopback", throttle=shared_throttle())
    if result.user:
        state["signed_in"] = result.user
        state.pop("signin_error", None)
    else:
        state["signin_error"] = result.message


def _sign_out() -> None:
    st.session_state.pop("signed_in", None)


def _identity_gate() -> bool:
    """Show the sign-in where one is needed; True when the page may be shown."""
    mode = _mode()
    if current_reviewer() is not None or mode == "single":
        return True
    st.title("medassist review")
    if mode == "proxy":
        st.error("Not signed in (or the session has ended).")
        st.markdown(f"[Sign in]({LOGIN_URL})")
        return False
    st.caption("Sign in with your reviewer account.")
    st.text_input("Account", key="signin_name")
    st.text_input("Password", type="password", key="signin_password")
    st.button("Sign in", key="signin", type="primary", on_click=_sign_in, args=("signin_name", "signin_password"))
    error = st.session_state.get("signin_error")
    if error:
        st.error(error)
    return False


def _flash(kind: str, text: str) -> None:
    st.session_state["flash"] = (kind, text)


def _record(store: DecisionStore, row: WorklistRow, fk: str) -> None:
    """Button callback: store the decision held in the finding's widgets (before the rerun), under
    the reviewer of this moment (never a name the widgets hold when accounts are in use)."""
    state = st.session_state
    try:
        reviewer = current_reviewer()
    except MedassistError as exc:  # the users file became unreadable meanwhile
        _flash("error", f"Not recorded: {exc}")
        return
    if reviewer is None:
        _flash("error", "Not recorded: sign in (or enter your name) first.")
        return
    decision = state.get(f"dec_{fk}")
    corrected = location = None
    if decision == "correct":
        corrected = (state.get(f"corr_{fk}") or "").strip() or None
        if corrected == row.finding:
            corrected = None
        if state.get(f"mark_{fk}"):
            location = {name: int(state.get(f"loc_{name}_{fk}") or 0) for name in ("slice", "row", "col")}
    try:
        logic.record_for_row(
            store,
            row,
            decision=decision or "",
            reviewer=reviewer,
            corrected_finding=corrected,
            location=location,
            comment=state.get(f"comment_{fk}") or None,
        )
    except MedassistError as exc:
        _flash("error", str(exc))
        return
    _flash("success", f"Recorded: {decision} for {row.finding} ({row.model} {row.model_version}).")
    state[f"comment_{fk}"] = ""


def _go_to(study_uid: str | None) -> None:
    if study_uid:
        st.session_state["study"] = study_uid


def _sidebar(studies: list[logic.Study], store: DecisionStore, out_dir: Path) -> logic.StudyFilter:
    side = st.sidebar
    side.title("medassist review")
    mode = _mode()
    if mode == "single":
        side.text_input("Reviewer name", key="reviewer", help="Required before recording a decision.")
        side.caption(f"Single-user mode: no reviewer accounts, loopback only; decisions are marked {UNVERIFIED}.")
        if not current_reviewer():
            side.warning("Enter your name to record decisions.")
    else:
        side.markdown(f"Signed in as **{current_reviewer()}**")
        if mode == "proxy":
            side.markdown(f"[Sign out]({LOGOUT_URL})")
        else:
            side.button("Sign out", key="signout", on_click=_sign_out)

    counts = logic.count_studies(studies)
    side.subheader("Filters")
    flagged_only = side.checkbox("Flagged by a model only", key="f_flagged")
    modalities = side.multiselect(
        "Modality", list(counts.by_modality), key="f_modality",
        format_func=lambda m: f"{m} ({counts.by_modality.get(m, 0)})",
    )
    models = side.multiselect(
        "Model", list(counts.by_model), key="f_model",
        format_func=lambda m: f"{m} ({counts.by_model.get(m, 0)})",
    )
    statuses = side.multiselect("Review status", list(logic.STATUSES), key="f_status")
    study_filter = logic.StudyFilter(
        flagged_only=flagged_only, modalities=tuple(modalities), models=tuple(models), statuses=tuple(statuses)
    )
    shown = logic.count_studies(studies, study_filter).shown
    by = counts.by_status
    side.markdown(
        f"**{shown}** of **{counts.total}** studies shown · ⚑ **{counts.flagged}** flagged  \n"
        f"Reviewed **{by['reviewed']}** · in progress **{by['in progress']}** · "
        f"unreviewed **{by['unreviewed']}** · no findings **{by['no findings']}**  \n"
        f"Findings decided **{counts.decided}** / {counts.findings}"
        + (f" · series with errors **{counts.errors}**" if counts.errors else "")
    )

    side.subheader("Decisions")
    if side.button("Export decisions CSV", key="export"):
        try:
            path = store.export_csv(out_dir / "decisions_export.csv")
            _flash("success", f"Exported decisions to {path}")
        except (OSError, MedassistError) as exc:
            _flash("error", f"Could not export: {exc}")
    side.download_button(
        "Download decisions CSV", data=store.to_csv, file_name="decisions.csv", mime="text/csv", key="download",
        on_click="ignore",  # the CSV is built when clicked, not on every rerun
    )
    side.caption(f"Output folder: {out_dir}  \nDecisions: {store.path.name}")
    return study_filter


def _worklist_table(studies: list[logic.Study]) -> None:
    table = {
        "Priority": list(range(1, len(studies) + 1)),
        "Accession": [s.accession for s in studies],
        "Patient ID": [s.patient_id for s in studies],
        "Modality": ["/".join(s.modalities) for s in studies],
        "Body part": ["/".join(s.body_parts) for s in studies],
        "Flagged": ["⚑" if s.flagged else "" for s in studies],
        "Top score": [s.max_score for s in studies],
        "Status": [s.status for s in studies],
        "Decided": [f"{s.decided}/{len(s.findings)}" for s in studies],
        "Errors": [len(s.errors) for s in studies],
    }
    st.dataframe(table, hide_index=True, key="worklist_table",
                 column_config={"Top score": st.column_config.NumberColumn(format="%.3f")})


def _viewer(row: WorklistRow, fk: str, marker: tuple[int, int, int] | None) -> None:
    """Image with window/level, zoom, slices and the saliency overlay as its own layer."""
    try:
        with st.spinner("Decoding the series..."):
            view = logic.open_series(row.source_path, row.series_uid, row.modality)
    except MedassistError as exc:
        st.error(f"Cannot display this series: {exc}")
        return
    saliency, overlay_problem = None, ""
    if row.saliency_path:
        try:
            saliency = logic.expand_slice_maps(logic.load_saliency(row.saliency_path), row.slices, view.n_slices)
            logic.saliency_for_slice(saliency, view, 0)
        except MedassistError as exc:
            saliency, overlay_problem = None, str(exc)
    else:
        overlay_problem = "the model wrote no saliency map for this finding"

    presets = logic.window_presets(view)
    sk = _k(row.source_path, row.series_uid)
    c1, c2, c3 = st.columns([3, 2, 2])
    preset = c1.selectbox("Window", list(presets) + [MANUAL], key=f"win_{sk}")
    zoom = c2.select_slider("Zoom", ZOOMS, value=1.0, key=f"zoom_{sk}", format_func=lambda z: f"{z:g}x")
    centre_mode = c3.selectbox("Zoom centre", CENTRES, key=f"centre_{sk}", disabled=zoom == 1.0)

    if preset == MANUAL:
        default = next(iter(presets.values()))
        span = max(view.vmax - view.vmin, 1.0)
        m1, m2 = st.columns(2)
        center = m1.slider("Level (centre)", float(view.vmin - span / 2), float(view.vmax + span / 2),
                           float(default.center), key=f"wc_{sk}")
        width = m2.slider("Width", 1.0, float(span * 2), float(min(default.width, span * 2)), key=f"ww_{sk}")
        window = logic.Window(center, width, f"Manual (C {center:.0f} / W {width:.0f})")
    else:
        window = presets[preset]

    slice_index = 0
    if view.n_slices > 1:
        slice_key = f"slice_{sk}"
        if slice_key not in st.session_state:
            st.session_state[slice_key] = row.slices[0] if row.slices and row.slices[0] < view.n_slices else 0
        flagged = [s for s in row.slices if 0 <= s < view.n_slices]
        if flagged:
            st.caption("Jump to a flagged slice:")
            jump = st.columns(min(len(flagged), 8))
            for i, s in enumerate(flagged[:8]):
                jump[i].button(f"Slice {s}", key=f"jump_{sk}_{s}",
                               on_click=st.session_state.__setitem__, args=(slice_key, s))
        slice_index = st.slider("Slice", 0, view.n_slices - 1, key=slice_key)

    o1, o2, o3 = st.columns([2, 2, 2])
    show = o1.toggle("Saliency overlay", value=saliency is not None, key=f"ovl_{fk}",
                     disabled=saliency is None, help="The model's saliency map, drawn as a separate layer.")
    opacity = o2.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key=f"opa_{fk}", disabled=not show)
    cmap = o3.selectbox("Colormap", logic.COLORMAPS, key=f"cmap_{fk}", disabled=not show)
    if overlay_problem:
        st.info(f"No overlay: {overlay_problem}")

    centre = None
    if centre_mode == "Saliency peak" and saliency is not None:
        _, r, c = logic.saliency_peak(saliency, slice_index)
        centre = (r, c)
    elif centre_mode == "Custom":
        p1, p2 = st.columns(2)
        centre = (p1.number_input("Centre row", 0, view.shape[0] - 1, view.shape[0] // 2, key=f"cr_{sk}"),
                  p2.number_input("Centre column", 0, view.shape[1] - 1, view.shape[1] // 2, key=f"cc_{sk}"))

    mark = (marker[1], marker[2]) if marker and marker[0] == slice_index else None
    # the peak of the shown slice, drawn while the map is (None on a slice without saliency)
    peak = logic.slice_peak(saliency, slice_index) if saliency is not None and show and opacity > 0 else None
    rendered = logic.render(
        view, slice_index, window, saliency=saliency,
        overlay=logic.Overlay(visible=show, opacity=opacity, colormap=cmap), zoom=zoom, center=centre, marker=mark,
        peak=peak,
    )
    r0, r1, c0, c1 = rendered.box
    parts = [f"Source image · {window.label}", f"zoom {zoom:g}x (rows {r0}-{r1 - 1}, cols {c0}-{c1 - 1})"]
    if view.n_slices > 1:
        parts.append(f"slice {slice_index} of {view.n_slices - 1}")
    st.image(logic.to_png(rendered.rgb), output_format="PNG", width="stretch")
    st.caption(" · ".join(parts))
    if rendered.overlay_drawn:
        st.image(logic.colorbar(cmap), width="stretch")
        st.caption(f"Overlay layer (opacity {opacity:.0%}): saliency of {row.model} {row.model_version} "
                   f"for '{row.finding}', low → high. Where the model looked; not a diagnosis.")
    if peak is not None and rendered.overlay_drawn:
        outside = "" if r0 <= peak.row < r1 and c0 <= peak.col < c1 else " (outside this zoomed view)"
        st.caption(f"Yellow ring: the model's peak (row {peak.row}, col {peak.col}) — where the map is highest"
                   f"{' on this slice' if view.n_slices > 1 else ''}{outside}.")
    if mark:
        st.caption(f"Cyan cross: marked location (row {mark[0]}, col {mark[1]}).")
    st.session_state[f"viewer_{fk}"] = (slice_index, view.shape, view.n_slices)


def _decision_panel(store: DecisionStore, row: WorklistRow, fk: str) -> None:
    st.markdown(f"#### {row.finding}")
    st.markdown(
        f"| Model output | |\n|---|---|\n| Model | {row.model} |\n| Version | {row.model_version} |\n"
        f"| Score | **{row.score:.3f}** |\n"
        f"| Threshold | {'—' if row.threshold is None else f'{row.threshold:.3f}'} |\n"
        f"| Model flagged | {'⚑ yes' if row.flagged else 'no'} |\n"
        f"| Flagged slices | {' '.join(map(str, row.slices)) or '—'} |"
    )
    confidence = logic.finding_confidence(row)
    if confidence is not None:
        st.caption(f"How sure: {confidence.describe(row.finding)}. Where the finding is commoner or rarer than "
                   "there, the rate shifts with it: a guide, not this patient's probability.")
    else:
        st.caption(f"How sure: no validation table ships for {row.model} {row.model_version}.")
    current = store.current_decision(row.key)
    if current:
        shown = current.decision + (f" → {current.corrected_finding}" if current.corrected_finding else "")
        st.success(f"Current decision: **{shown}** by {current.reviewer} at {current.decided_at}")
    else:
        st.warning("Not decided yet.")

    st.radio("Your decision", list(DECISION_LABELS), index=None, key=f"dec_{fk}",
             format_func=DECISION_LABELS.__getitem__)
    if st.session_state.get(f"dec_{fk}") == "correct":
        st.text_input("Corrected finding", value=row.finding, key=f"corr_{fk}")
        st.checkbox("Mark the location", value=True, key=f"mark_{fk}")
        if st.session_state.get(f"mark_{fk}"):
            slice_now, shape, shape_slices = st.session_state.get(f"viewer_{fk}", (0, (1, 1), 1))
            peak = (slice_now, shape[0] // 2, shape[1] // 2)
            if row.saliency_path:
                try:
                    sal = logic.load_saliency(row.saliency_path)
                    peak = logic.saliency_peak(logic.expand_slice_maps(sal, row.slices, shape_slices), slice_now)
                except MedassistError:
                    pass
            l1, l2, l3 = st.columns(3)
            l1.number_input("Slice", 0, None, int(peak[0]), key=f"loc_slice_{fk}")
            l2.number_input("Row", 0, max(shape[0] - 1, 0), int(peak[1]), key=f"loc_row_{fk}")
            l3.number_input("Column", 0, max(shape[1] - 1, 0), int(peak[2]), key=f"loc_col_{fk}")
    st.text_area("Comment", key=f"comment_{fk}", height=80)
    reviewer = current_reviewer()
    chosen = st.session_state.get(f"dec_{fk}")
    st.button("Record decision", key=f"record_{fk}", type="primary", disabled=not (reviewer and chosen),
              on_click=_record, args=(store, row, fk))
    if not reviewer:
        st.caption("Enter your name in the sidebar to record a decision.")
    else:
        st.caption(f"Recorded as: {reviewer}")

    history = store.history(row.key)
    if history:
        st.markdown("##### History")
        st.dataframe(
            {
                "When (UTC)": [d.decided_at for d in history],
                "Reviewer": [d.reviewer for d in history],
                "Decision": [d.decision for d in history],
                "Corrected finding": [d.corrected_finding or "" for d in history],
                "Location": [d.location or "" for d in history],
                "Comment": [d.comment or "" for d in history],
            },
            hide_index=True, key=f"history_{fk}",
        )


def _study(study: logic.Study, store: DecisionStore) -> None:
    st.subheader(f"Study {study.accession or study.study_uid}")
    st.caption(
        f"Patient ID {study.patient_id or '—'} · {'/'.join(study.modalities) or '?'} · "
        f"{'/'.join(study.body_parts) or 'body part not given'} · status **{study.status}** "
        f"({study.decided}/{len(study.findings)} findings decided) · Study UID {study.study_uid}"
    )
    series = study.series_uids
    series_uid = series[0]
    if len(series) > 1:
        series_uid = st.radio(
            "Series", series, horizontal=True, key=f"series_{_k(study.study_uid)}",
            format_func=lambda uid: f"{study.rows_of_series(uid)[0].modality} …{uid[-8:]}",
        )
    rows = study.rows_of_series(series_uid)
    for row in rows:
        if row.not_applicable:
            st.info(f"Series {row.series_uid or '?'}: {row.error}")
        elif row.error:
            st.error(f"Series {row.series_uid or '?'}: {row.error}")
    findings = [row for row in rows if row.is_finding]
    if not findings:
        st.info("No model finding for this series: nothing to decide here.")
        return
    row = findings[0]
    if len(findings) > 1:
        labels = {r.key: r.label for r in findings}
        chosen = st.radio("Finding", list(labels), key=f"finding_{_k(series_uid)}", format_func=labels.__getitem__)
        row = next(r for r in findings if r.key == chosen)
    fk = _k(*row.key)
    current = store.current_decision(row.key)
    marker = None
    if st.session_state.get(f"dec_{fk}") == "correct" and st.session_state.get(f"mark_{fk}"):
        marker = tuple(int(st.session_state.get(f"loc_{n}_{fk}") or 0) for n in ("slice", "row", "col"))
    elif current and current.location_dict:
        loc = current.location_dict
        marker = (loc["slice"], loc["row"], loc["col"])
    left, right = st.columns([3, 2], gap="large")
    with right:
        _decision_panel(store, row, fk)
    with left:
        _viewer(row, fk, marker)


def main() -> None:
    st.set_page_config(page_title="medassist review", layout="wide")
    out_dir = logic.resolve_out_dir(sys.argv[1:], os.environ)
    if out_dir is None:
        st.error("No triage output folder: run `medassist review OUT_DIR` "
                 "(or `streamlit run apps/streamlit_viewer.py --server.address 127.0.0.1 -- OUT_DIR`).")
        st.stop()
    address = st.get_option("server.address")
    if not address or not is_loopback(str(address)):
        st.error("This app serves patient images: it runs on loopback only (server.address 127.0.0.1). "
                 "Start it with `medassist review OUT_DIR`, or `--public` for nginx with TLS and sign-in in front.")
        st.stop()
    try:
        allowed = _identity_gate()
    except MedassistError as exc:  # a users file others can read, a missing site key...
        st.error(str(exc))
        st.stop()
    if not allowed:
        st.stop()
    try:
        path = worklist_path(out_dir)
        stat = path.stat()
        rows = _load_rows(str(path), stat.st_mtime_ns, stat.st_size)
        store = _store(str(default_db_path(out_dir)))
    except (MedassistError, OSError) as exc:
        st.error(str(exc))
        st.stop()

    studies = logic.group_studies(rows, store.current_decisions())
    study_filter = _sidebar(studies, store, out_dir)
    flash = st.session_state.pop("flash", None)
    if flash:
        (st.success if flash[0] == "success" else st.error)(flash[1])

    shown = logic.filter_studies(studies, study_filter)
    by_uid = {s.study_uid: s for s in studies}
    st.markdown("### Worklist")
    st.caption("The model proposes; a radiologist decides every finding. Highest priority first.")
    with st.expander(f"Studies ({len(shown)} shown)", expanded="study" not in st.session_state
                     or st.session_state.get("study") is None):
        _worklist_table(shown)
    options = [s.study_uid for s in shown]
    if st.session_state.get("study") not in options:
        st.session_state.pop("study", None)
    pick, nxt = st.columns([5, 1], vertical_alignment="bottom")
    pick.selectbox("Open study", options, index=None, key="study", placeholder="Choose a study...",
                   format_func=lambda uid: by_uid[uid].label())
    following = logic.next_unreviewed(shown, st.session_state.get("study"))
    nxt.button("Next unreviewed →", key="next", disabled=following is None,
               on_click=_go_to, args=(following.study_uid if following else None,))
    uid = st.session_state.get("study")
    if uid is not None and uid in by_uid:
        _study(by_uid[uid], store)


main()
