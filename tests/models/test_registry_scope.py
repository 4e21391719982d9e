"""A model's scope: which series it scores, and the reason given for those it leaves out."""

from medassist.datamodel import Series
from medassist.models.registry import applies_to, not_applicable_reason, scope_miss
from medassist.models.spec import ModelSpec, PreprocessSpec

SPEC = ModelSpec(name="fracture_xray", version="2.0.0", finding="fracture", labels=("no", "yes"), threshold=0.5,
                 weights="w.pt", sha256="0" * 64, network="localising_resnet", network_args={},
                 preprocess=PreprocessSpec(input_size=64), modalities=("DX", "CR"),
                 body_parts=("HAND", "WRIST", ""), excluded_body_parts=("CHEST",))


def _series(modality: str, body: str) -> Series:
    return Series(study_uid="1", series_uid="2", patient_id="", accession="", modality=modality, body_part=body,
                  source_path="x.dcm", paths=("x.dcm",), loader=lambda: None)


def test_in_scope_series_are_scored_and_have_no_miss():
    for body in ("HAND", "wrist", ""):
        assert applies_to(SPEC, _series("DX", body)) and scope_miss(SPEC, _series("DX", body)) is None


def test_anatomy_the_model_never_saw_is_named_in_the_reason():
    series = _series("DX", "SPINE")
    assert not applies_to(SPEC, series)
    reason = not_applicable_reason(series, [SPEC])
    assert reason.startswith("no shipped model applies to DX / SPINE")
    assert "fracture_xray was not trained or validated on SPINE (its body parts: HAND, WRIST)" in reason
    assert "not trained or validated on CHEST" in not_applicable_reason(_series("CR", "CHEST"), [SPEC])


def test_other_modalities_keep_the_short_reason():
    assert not_applicable_reason(_series("US", ""), [SPEC]) == "no shipped model applies to US / unknown body part"


def test_body_part_miss_matches_scope_miss_and_ignores_case():
    from medassist.models.registry import body_part_miss

    assert body_part_miss(SPEC, "hand") is None and body_part_miss(SPEC, "") is None
    assert body_part_miss(SPEC, "chest") == "fracture_xray was not trained or validated on CHEST"
    assert body_part_miss(SPEC, "SPINE") == scope_miss(SPEC, _series("DX", "SPINE"))


def test_the_shipped_fracture_model_answers_upper_arm_and_elbow_not_applicable():
    from medassist.models.registry import spec_by_name

    shipped = spec_by_name("fracture_xray")
    for body in ("ELBOW", "FOREARM", "HUMERUS", "ARM"):
        assert f"not trained or validated on {body}" in not_applicable_reason(_series("DX", body), [shipped])
    for body in ("HAND", "WRIST", "FINGER", "SHOULDER", "KNEE", "HIP", ""):
        assert applies_to(shipped, _series("CR", body)), body
