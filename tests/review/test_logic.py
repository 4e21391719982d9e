"""review.logic: worklist, priority, filters, windowing, overlay, zoom, caching."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest

from medassist.datamodel import WorklistRow, read_worklist, worklist_path
from medassist.errors import MedassistError
from medassist.review import logic
from medassist.review.store import open_store
from review_factory import PATIENT_NAMES, write_worklist


def rows_by_accession(out):
    return {r.accession: r for r in read_worklist(out)}


# -- worklist -----------------------------------------------------------------------------------


def test_json_and_csv_worklists_read_the_same(triage_out):
    from_json = read_worklist(triage_out / "worklist.json")
    from_csv = read_worklist(triage_out / "worklist.csv")
    assert from_json == from_csv
    assert read_worklist(triage_out) == from_json  # a folder means its worklist.json
    rows = {r.accession: r for r in from_json}
    ct = rows["ACC002"]
    assert ct.score == 0.75 and ct.threshold == 0.5 and ct.flagged is True and ct.slices == (2, 3)
    assert ct.key == (ct.series_uid, "bleed_ct", "0.3.0", "haemorrhage") and ct.is_finding
    err = rows["ACC004"]
    assert err.score is None and err.flagged is None and not err.is_finding and "truncated" in err.error


def test_csv_is_used_without_json_and_relative_paths_resolve(triage_out):
    records = json.loads((triage_out / "worklist.json").read_text())
    for rec in records:
        if rec["saliency_path"]:
            rec["saliency_path"] = "saliency/" + rec["saliency_path"].rsplit("/", 1)[1]
    (triage_out / "worklist.json").unlink()
    write_worklist(triage_out, [{k: ("" if v is None else v) for k, v in r.items()} for r in records])
    (triage_out / "worklist.json").unlink()
    rows = read_worklist(triage_out)
    assert worklist_path(triage_out).name == "worklist.csv"
    dx = next(r for r in rows if r.accession == "ACC001")
    assert dx.saliency_path == str(triage_out / "saliency" / f"{dx.series_uid}.npy")


def test_missing_or_bad_worklist_is_a_clear_error(tmp_path):
    with pytest.raises(MedassistError, match="no worklist.json or worklist.csv"):
        read_worklist(tmp_path)
    (tmp_path / "worklist.json").write_text('{"not": "a list"}')
    with pytest.raises(MedassistError, match="JSON list"):
        read_worklist(tmp_path)
    (tmp_path / "worklist.json").write_text('[{"study_uid": "1", "series_uid": "2", "source_path": "x", "score": "high"}]')
    with pytest.raises(MedassistError, match="row 1: score 'high' is not a number"):
        read_worklist(tmp_path)


def test_resolve_out_dir_prefers_the_argument():
    assert str(logic.resolve_out_dir(["/data/out"], {"MEDASSIST_OUT": "/env"})) == "/data/out"
    assert str(logic.resolve_out_dir([], {"MEDASSIST_OUT": "/env"})) == "/env"
    assert logic.resolve_out_dir([], {}) is None


# -- studies, priority, filters -----------------------------------------------------------------


def test_studies_in_priority_order_with_status(triage_out, tmp_path):
    rows = read_worklist(triage_out)
    studies = logic.group_studies(rows)
    assert [s.accession for s in studies] == ["ACC001", "ACC002", "ACC003", "ACC004"]
    assert [s.status for s in studies] == ["unreviewed", "unreviewed", "unreviewed", "no findings"]
    assert studies[0].flagged and not studies[2].flagged and studies[3].max_score is None
    assert studies[1].modalities == ("CT",) and studies[1].models == ("bleed_ct",)
    # a decision changes the status
    store = open_store(tmp_path / "d.sqlite")
    logic.record_for_row(store, studies[1].findings[0], decision="accept", reviewer="Dr A")
    studies = logic.group_studies(rows, store.current_decisions())
    assert {s.accession: s.status for s in studies}["ACC002"] == "reviewed"


def test_flagged_studies_come_before_higher_unflagged_scores():
    def row(acc, score, flagged):
        return WorklistRow(acc, acc + ".1", "P", acc, "DX", source_path="x", model="m", model_version="1",
                           finding="f", score=score, threshold=0.5, flagged=flagged)

    studies = logic.group_studies([row("A", 0.4, False), row("B", 0.95, True), row("C", 0.6, True), row("D", 0.45, False)])
    assert [s.accession for s in studies] == ["B", "C", "D", "A"]


def test_filters_and_counts(triage_out):
    studies = logic.group_studies(read_worklist(triage_out))
    assert [s.accession for s in logic.filter_studies(studies, logic.StudyFilter(flagged_only=True))] == ["ACC001", "ACC002"]
    assert [s.accession for s in logic.filter_studies(studies, logic.StudyFilter(modalities=("DX",)))] == ["ACC001", "ACC004"]
    assert [s.accession for s in logic.filter_studies(studies, logic.StudyFilter(models=("fracture_xray",)))] == ["ACC001", "ACC003"]
    assert [s.accession for s in logic.filter_studies(studies, logic.StudyFilter(statuses=("no findings",)))] == ["ACC004"]
    both = logic.StudyFilter(flagged_only=True, modalities=("DX", "CR"))
    assert [s.accession for s in logic.filter_studies(studies, both)] == ["ACC001"]
    counts = logic.count_studies(studies, both)
    assert (counts.total, counts.shown, counts.flagged, counts.findings, counts.decided, counts.errors) == (4, 1, 2, 3, 0, 1)
    assert counts.by_modality == {"CR": 1, "CT": 1, "DX": 2}
    assert counts.by_model == {"bleed_ct": 1, "fracture_xray": 2}
    assert counts.by_status["unreviewed"] == 3 and counts.by_status["no findings"] == 1


def test_next_unreviewed_skips_reviewed_and_wraps(triage_out, tmp_path):
    rows = read_worklist(triage_out)
    store = open_store(tmp_path / "d.sqlite")
    first = logic.group_studies(rows)[0]
    logic.record_for_row(store, first.findings[0], decision="reject", reviewer="Dr A")
    studies = logic.group_studies(rows, store.current_decisions())
    assert logic.next_unreviewed(studies).accession == "ACC002"
    assert logic.next_unreviewed(studies, after=studies[1].study_uid).accession == "ACC003"
    assert logic.next_unreviewed(studies, after=studies[2].study_uid).accession == "ACC002"


def test_record_for_row_refuses_rows_without_a_finding(triage_out, tmp_path):
    err = rows_by_accession(triage_out)["ACC004"]
    with pytest.raises(MedassistError, match="no model finding"):
        logic.record_for_row(open_store(tmp_path / "d.sqlite"), err, decision="accept", reviewer="Dr A")


def test_recording_never_logs_patient_identifiers(triage_out, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    rows = rows_by_accession(triage_out)
    view = logic.open_series(rows["ACC001"].source_path, rows["ACC001"].series_uid, "DX")
    logic.render(view, 0, next(iter(logic.window_presets(view).values())))
    logic.record_for_row(open_store(tmp_path / "d.sqlite"), rows["ACC001"], decision="accept", reviewer="Dr A")
    assert "PID-001" not in caplog.text and PATIENT_NAMES[0] not in caplog.text


# -- windowing ----------------------------------------------------------------------------------


def test_apply_window_is_the_dicom_linear_window():
    values = np.array([[-1000.0, 0.0, 39.5, 40.0, 80.0, 3000.0]], dtype=np.float32)
    before = values.copy()
    out = logic.apply_window(values, 40.0, 80.0)
    assert out.dtype == np.uint8 and out.shape == values.shape
    assert out[0, 0] == 0 and out[0, -1] == 255 and out[0, 4] == 255
    assert 125 <= out[0, 2] <= 130 and out[0, 1] < out[0, 2] < out[0, 3]
    np.testing.assert_array_equal(values, before)
    assert logic.apply_window(np.array([0.0, 10.0]), 5.0, 1.0).tolist() == [0, 255]


def test_presets_match_the_modality(triage_out):
    rows = rows_by_accession(triage_out)
    ct = logic.open_series(rows["ACC002"].source_path, rows["ACC002"].series_uid, "CT")
    presets = logic.window_presets(ct)
    assert ct.n_slices == 5 and ct.vmin == -1000.0 and ct.vmax == 700.0  # Hounsfield units
    names = list(presets)
    assert names[0].startswith("DICOM default") and presets[names[0]].use_display
    bone = next(w for n, w in presets.items() if n.startswith("Bone"))
    brain = next(w for n, w in presets.items() if n.startswith("Brain"))
    assert (bone.center, bone.width) == (300.0, 1500.0) and (brain.center, brain.width) == (40.0, 80.0)

    dx = logic.open_series(rows["ACC001"].source_path, rows["ACC001"].series_uid, "DX")
    dx_presets = logic.window_presets(dx)
    first = next(iter(dx_presets.values()))
    assert (first.center, first.width) == (2000.0, 4000.0) and first.use_display
    assert not any(n.startswith(("Bone", "Brain")) for n in dx_presets)  # arbitrary units

    cr = logic.open_series(rows["ACC003"].source_path, rows["ACC003"].series_uid, "CR")
    cr_first = next(iter(logic.window_presets(cr).values()))
    assert cr.image.window is None and cr_first.use_display and "auto" in cr_first.label


def test_mr_brain_preset_is_a_percentile_window():
    pixels = np.linspace(0, 1000, 100 * 100, dtype=np.float32).reshape(1, 100, 100)
    image = logic.Image(pixels=pixels, display=pixels / 1000)
    view = logic.SeriesView(image, "x", "1", "MR", 0.0, 1000.0, (500.0, 990.0))
    brain = logic.window_presets(view)["Brain (MR auto 1–99 %)"]
    assert brain.center == pytest.approx(500.0, abs=1) and brain.width == pytest.approx(980.0, abs=2)


def test_monochrome1_is_inverted_under_a_manual_window(triage_out):
    cr_row = rows_by_accession(triage_out)["ACC003"]
    view = logic.open_series(cr_row.source_path, cr_row.series_uid, "CR")
    assert view.inverted
    window = logic.Window(500.0, 800.0, "manual")
    shown = logic.render(view, 0, window, max_side=max(view.shape)).rgb[..., 0]
    plain = logic.apply_window(view.image.pixels[0], 500.0, 800.0)
    np.testing.assert_array_equal(shown.astype(int), 255 - plain.astype(int))


# -- overlay, zoom, rendering, cache -------------------------------------------------------------


def test_overlay_is_a_separate_layer_and_never_alters_the_source(triage_out):
    row = rows_by_accession(triage_out)["ACC001"]
    view = logic.open_series(row.source_path, row.series_uid, "DX")
    saliency = logic.load_saliency(row.saliency_path)
    assert not view.image.pixels.flags.writeable and not saliency.flags.writeable
    before = view.image.pixels.copy()
    window = next(iter(logic.window_presets(view).values()))
    plain = logic.render(view, 0, window, max_side=80)
    shown = logic.render(view, 0, window, saliency=saliency, overlay=logic.Overlay(True, 0.6, "jet"), max_side=80)
    hidden = logic.render(view, 0, window, saliency=saliency, overlay=logic.Overlay(False, 0.6, "jet"), max_side=80)
    transparent = logic.render(view, 0, window, saliency=saliency, overlay=logic.Overlay(True, 0.0), max_side=80)
    np.testing.assert_array_equal(view.image.pixels, before)
    assert shown.overlay_drawn and not hidden.overlay_drawn and not transparent.overlay_drawn
    np.testing.assert_array_equal(hidden.rgb, plain.rgb)
    np.testing.assert_array_equal(transparent.rgb, plain.rgb)
    assert not np.array_equal(shown.rgb, plain.rgb)
    peak = np.unravel_index(np.argmax(saliency[0]), saliency.shape[1:])
    assert np.abs(shown.rgb[peak].astype(int) - plain.rgb[peak].astype(int)).sum() > 30  # tinted where salient
    assert np.array_equal(shown.rgb[0, 0], plain.rgb[0, 0])  # untouched where not


def test_composite_and_layer_do_not_modify_inputs():
    base = np.full((4, 4), 100, dtype=np.uint8)
    sal = np.zeros((4, 4), dtype=np.float32)
    sal[1, 1] = 1.0
    layer = logic.saliency_layer(sal, "hot")
    base_copy, layer_copy = base.copy(), layer.copy()
    out = logic.composite(base, layer, 1.0)
    np.testing.assert_array_equal(base, base_copy)
    np.testing.assert_array_equal(layer, layer_copy)
    assert out.shape == (4, 4, 3) and tuple(out[0, 0]) == (100, 100, 100)
    assert tuple(out[1, 1]) == tuple(logic.colormap_lut("hot")[255])
    assert logic.colorbar("inferno").shape == (14, 256, 3)
    with pytest.raises(MedassistError, match="unknown colormap"):
        logic.colormap_lut("rainbow-unicorn")


def test_saliency_maps_are_normalised_and_checked(tmp_path, triage_out):
    path = tmp_path / "s.npy"
    np.save(path, np.array([[-2.0, 0.0], [1.0, 4.0]], dtype=np.float64))
    sal = logic.load_saliency(str(path))
    assert sal.shape == (1, 2, 2) and sal.dtype == np.float32
    np.testing.assert_allclose(sal[0], [[0, 0], [0.25, 1.0]])
    row = rows_by_accession(triage_out)["ACC001"]
    view = logic.open_series(row.source_path, row.series_uid, "DX")
    with pytest.raises(MedassistError, match="not in the source geometry"):
        logic.saliency_for_slice(sal, view, 0)
    with pytest.raises(MedassistError, match="cannot read the saliency map"):
        logic.load_saliency(str(tmp_path / "missing.npy"))
    vol = rows_by_accession(triage_out)["ACC002"]
    ct_sal = logic.load_saliency(vol.saliency_path)
    assert ct_sal.shape == (5, 48, 48) and logic.saliency_peak(ct_sal)[1:] == (24, 24)


def test_zoom_box_crops_around_a_centre_inside_the_image():
    assert logic.zoom_box((100, 200), 1.0) == (0, 100, 0, 200)
    assert logic.zoom_box((100, 200), 2.0) == (25, 75, 50, 150)
    assert logic.zoom_box((100, 200), 4.0, center=(0, 199)) == (0, 25, 150, 200)
    assert logic.zoom_box((100, 200), 0.5) == (0, 100, 0, 200)


def test_render_zooms_slices_and_fits_the_display(triage_out):
    row = rows_by_accession(triage_out)["ACC002"]
    view = logic.open_series(row.source_path, row.series_uid, "CT")
    sal = logic.load_saliency(row.saliency_path)
    bone = logic.window_presets(view)["Bone (C 300 / W 1500)"]
    out = logic.render(view, 2, bone, saliency=sal, overlay=logic.Overlay(), zoom=2.0, center=(24, 24), max_side=96)
    assert out.box == (12, 36, 12, 36) and out.rgb.shape == (96, 96, 3) and out.scale == 4.0
    # pixel replication when enlarging: each source pixel is a 4 x 4 block
    assert np.all(out.rgb[:4, :4] == out.rgb[0, 0])
    with pytest.raises(MedassistError, match="outside"):
        logic.render(view, 5, bone)
    marked = logic.render(view, 2, bone, max_side=48, marker=(10, 10))
    assert tuple(marked.rgb[10, 10]) == (0, 255, 255)


def test_slice_peak_is_the_maximum_of_the_plane():
    plane = np.zeros((6, 9), dtype=np.float32)
    plane[4, 7] = 0.9
    plane[1, 2] = 0.5
    assert logic.slice_peak(plane) == (4, 7) and logic.slice_peak(plane).row == 4
    assert logic.slice_peak(plane[None], slice_index=3) == (4, 7)  # one plane stands for every slice
    plane[0, 8] = 0.9  # a tie: the first maximum in row order, as saliency_peak
    assert logic.slice_peak(plane) == (0, 8)
    assert logic.slice_peak(np.zeros((6, 9), dtype=np.float32)) is None  # nothing salient: no peak


def test_slice_peak_of_a_volume_is_on_the_shown_slice(triage_out):
    vol = np.zeros((3, 10, 12), dtype=np.float32)
    vol[0, 2, 3] = 1.0  # the volume's maximum
    vol[1, 7, 9] = 0.4
    vol[1, 5, 1] = 0.3
    assert logic.slice_peak(vol, 1) == (7, 9)
    assert logic.slice_peak(vol, 0) == (2, 3)
    assert logic.slice_peak(vol, 2) is None
    with pytest.raises(MedassistError, match="slice 3 outside"):
        logic.slice_peak(vol, 3)
    row = rows_by_accession(triage_out)["ACC002"]  # blob centred at slice 2.5, row 24, col 24
    ct_sal = logic.load_saliency(row.saliency_path)
    assert logic.slice_peak(ct_sal, 0) == (24, 24) and logic.slice_peak(ct_sal, 4) == (24, 24)


def test_render_draws_a_yellow_ring_around_the_peak(triage_out):
    row = rows_by_accession(triage_out)["ACC001"]
    view = logic.open_series(row.source_path, row.series_uid, "DX")
    window = next(iter(logic.window_presets(view).values()))
    assert logic.PEAK_COLOR == (255, 255, 0) and logic.PEAK_COLOR != logic.MARKER_COLOR
    plain = logic.render(view, 0, window, max_side=max(view.shape)).rgb  # 1 display pixel per source pixel
    pr, pc = 30, 40
    ringed = logic.render(view, 0, window, max_side=max(view.shape), peak=(pr, pc)).rgb
    radius = logic.PEAK_RADIUS
    for r, c in ((pr, pc + radius), (pr, pc - radius), (pr + radius, pc), (pr - radius, pc)):
        assert tuple(ringed[r, c]) == logic.PEAK_COLOR
    changed = np.argwhere(np.any(ringed != plain, axis=-1))
    distance = np.hypot(changed[:, 0] - pr, changed[:, 1] - pc)
    assert len(changed) > 2 * np.pi * radius and np.all(np.abs(distance - radius) <= 1.5)
    assert np.all(ringed[tuple(changed.T)] == logic.PEAK_COLOR)
    np.testing.assert_array_equal(ringed[pr, pc], plain[pr, pc])  # the peak itself stays visible
    # zoomed 2x: the ring is drawn around the peak's place in the crop, still PEAK_RADIUS display pixels
    zoomed = logic.render(view, 0, window, zoom=2.0, center=(pr, pc), max_side=max(view.shape), peak=(pr, pc))
    at_r, at_c = (pr - zoomed.box[0] + 0.5) * zoomed.scale, (pc - zoomed.box[2] + 0.5) * zoomed.scale
    assert tuple(zoomed.rgb[int(at_r), int(at_c + radius)]) == logic.PEAK_COLOR
    assert tuple(zoomed.rgb[int(at_r), int(at_c)]) != logic.PEAK_COLOR


def test_no_ring_without_a_peak_and_the_cross_stays_cyan(triage_out):
    row = rows_by_accession(triage_out)["ACC001"]
    view = logic.open_series(row.source_path, row.series_uid, "DX")
    window = next(iter(logic.window_presets(view).values()))
    saliency = logic.load_saliency(row.saliency_path)
    overlay = logic.Overlay(True, 0.5, "jet")
    plain = logic.render(view, 0, window, saliency=saliency, overlay=overlay, max_side=80)
    none = logic.render(view, 0, window, saliency=saliency, overlay=overlay, max_side=80, peak=None)
    np.testing.assert_array_equal(none.rgb, plain.rgb)
    yellow = np.all(none.rgb == logic.PEAK_COLOR, axis=-1)
    assert not yellow.any()
    peak = logic.slice_peak(saliency, 0)
    both = logic.render(view, 0, window, saliency=saliency, overlay=overlay, max_side=80, peak=peak, marker=peak)
    ring_only = logic.render(view, 0, window, saliency=saliency, overlay=overlay, max_side=80, peak=peak)
    assert tuple(both.rgb[peak]) == logic.MARKER_COLOR and tuple(ring_only.rgb[peak]) != logic.MARKER_COLOR
    ring = np.all(ring_only.rgb == logic.PEAK_COLOR, axis=-1)
    assert ring.sum() > 2 * np.pi * logic.PEAK_RADIUS  # the whole ring, inside the 64 x 80 picture
    np.testing.assert_array_equal(np.all(both.rgb == logic.PEAK_COLOR, axis=-1), ring)  # cross and ring apart


def test_large_images_are_shrunk_for_display(tmp_path):
    pixels = np.arange(3000 * 2000, dtype=np.float32).reshape(1, 3000, 2000)
    view = logic.SeriesView(logic.Image(pixels=pixels, display=pixels / pixels.max()), "big", "1", "CR",
                            0.0, float(pixels.max()), (3e6, 6e6))
    out = logic.render(view, 0, logic.Window(3e6, 6e6, "w"), max_side=1000)
    assert out.rgb.shape == (1000, 667, 3) and out.scale == pytest.approx(1 / 3)


def test_series_are_decoded_once(triage_out, monkeypatch):
    calls = []
    real = logic._decode

    def counting(source_path, series_uid):
        calls.append(source_path)
        return real(source_path, series_uid)

    monkeypatch.setattr(logic, "_decode", counting)
    logic.clear_caches()
    row = rows_by_accession(triage_out)["ACC001"]
    first = logic.open_series(row.source_path, row.series_uid, "DX")
    again = logic.open_series(row.source_path, row.series_uid, "DX")
    assert first is again and calls == [row.source_path]


def test_undecodable_series_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(MedassistError):
        logic.open_series(str(bad), "1.2.3", "DX")


def test_not_applicable_is_not_an_error():
    def row(error, model=""):
        return WorklistRow("S", "S.1", "P", "A1", "US", source_path="x", model=model, error=error)

    na = row("no shipped model applies to US / unknown body part")
    broken = row("x.dcm: pixel data truncated")
    assert na.not_applicable and not broken.not_applicable and not na.is_finding
    study = logic.group_studies([na])[0]
    assert study.errors == [] and study.status == "no findings" and study.label().endswith("not scored")
    assert logic.group_studies([broken])[0].label().endswith("error")
    assert logic.count_studies(logic.group_studies([na, broken])).errors == 1


def test_finding_confidence_comes_from_the_shipped_version_table_only():
    from medassist.models.registry import spec_by_name

    spec = spec_by_name("fracture_xray")
    row = WorklistRow(study_uid="1", series_uid="1.1", model=spec.name, model_version=spec.version,
                      finding="fracture", score=0.95, threshold=spec.threshold, flagged=True)
    confidence = logic.finding_confidence(row)
    assert confidence is not None and confidence.bin.upper == 1.0 and confidence.unit == "image"
    assert confidence.rate > 0.5 and confidence.ci[0] < confidence.rate < confidence.ci[1]
    low = logic.finding_confidence(dataclasses.replace(row, score=0.01))
    assert low.rate < confidence.rate  # a low score lands in a bin with fewer fractures
    assert logic.finding_confidence(dataclasses.replace(row, model_version="0.0.1")) is None
    assert logic.finding_confidence(dataclasses.replace(row, score=None)) is None
