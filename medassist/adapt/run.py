"""``medassist adapt``: a site version of a model, its threshold fitted on reviewed cases under the protocol.

Steps: read the protocol; the base model (the released spec, or a signed one from ``--models-dir``);
the reviewed cases of every log (:mod:`medassist.adapt.data`); refuse when there are too few; fit
the threshold on the fit set and judge it on the locked set (:mod:`medassist.adapt.fit`); refuse
when a criterion fails. Only then write the new models folder: the adapted spec (new version,
``validation.adaptation``), the same weights file byte for byte, ``adaptation/adaptation_diff.json``
and ``adaptation/adaptation.md`` (in a subfolder: the registry takes every top-level ``*.json`` for a
model spec), and the site key's signature (``medassist.models.integrity.sign_models_dir``),
all in a temporary folder beside ``--out`` that is renamed into place at the end: a refused or
failed adaptation writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from medassist.adapt.data import ReviewedCases, read_reviewed_cases
from medassist.adapt.fit import Acceptance, Criterion, ThresholdFit, evaluate, fit_threshold, too_few
from medassist.adapt.protocol import Protocol, load_protocol
from medassist.atomic import atomic_folder, write_atomic
from medassist.errors import MedassistError
from medassist.models.integrity import SHIPPED_DIR, sign_models_dir
from medassist.models.registry import read_weights, spec_by_name
from medassist.models.spec import ModelSpec, parse_spec

REFUSED_EXIT = 3
RECORD_DIR = "adaptation"  # a subfolder: the registry reads every *.json at the top as a model spec
DIFF_NAME = "adaptation_diff.json"
CARD_NAME = "adaptation.md"
_SITE_VERSION = re.compile(r"^(?P<base>.+)\+site\.(?P<n>\d+)$")


class AdaptRefused(MedassistError):
    """The protocol refuses the adaptation (too few cases, or a criterion fails); nothing was written."""

    def __init__(self, message: str, criteria: tuple[Criterion, ...] = ()):
        super().__init__(message)
        self.criteria = criteria


@dataclass(frozen=True)
class AdaptResult:
    """An accepted adaptation and what was written."""

    model: str
    from_version: str
    version: str
    protocol_source: str
    protocol_sha256: str
    cases: ReviewedCases
    fit: ThresholdFit
    acceptance: Acceptance
    out_dir: str
    written: tuple[str, ...]


def site_version(version: str) -> str:
    """``1.1.0`` -> ``1.1.0+site.1``; ``1.1.0+site.1`` -> ``1.1.0+site.2``."""
    match = _SITE_VERSION.match(version)
    if match:
        return f"{match['base']}+site.{int(match['n']) + 1}"
    return f"{version}+site.1"


def _refusal(criteria: tuple[Criterion, ...] | list[Criterion], what: str) -> AdaptRefused:
    said = "; ".join(f"{c.name}: {c.detail}" for c in criteria)
    return AdaptRefused(f"adaptation refused by the protocol ({what}): {said}; nothing was written", tuple(criteria))


def _check_out(out_dir: Path, weights_dir: Path) -> None:
    if out_dir.resolve() in (SHIPPED_DIR, Path(weights_dir).resolve()):
        raise MedassistError(f"{out_dir}: the adapted model goes into a new models folder, not the one it comes from")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise MedassistError(f"{out_dir}: exists and is not an empty folder; adapt writes a new models folder")


def run_adapt(
    model: str, review_dbs: list[str | Path], out_dir: str | Path, *, protocol_path: str | Path | None = None,
    weights_dir: str | Path = SHIPPED_DIR, key_file: str | Path | None = None, now: datetime | None = None,
) -> AdaptResult:
    """Adapt ``model``'s threshold to the reviewed cases of ``review_dbs`` and write ``out_dir``.

    Raises MedassistError for unusable input (nothing written) and AdaptRefused when the protocol
    refuses (nothing written)."""
    protocol, source = load_protocol(protocol_path)
    base = spec_by_name(model, Path(weights_dir))
    out_dir = Path(out_dir)
    _check_out(out_dir, Path(weights_dir))
    cases = read_reviewed_cases(review_dbs, base.name, base.version, locked_share=protocol.locked_share,
                                key_file=key_file)
    missing = too_few(cases, protocol)
    if missing:
        raise _refusal(missing, "too few reviewed cases")
    fit = fit_threshold(cases.fit, base.threshold, protocol)
    acceptance = evaluate(cases.locked, fit, protocol)
    if not acceptance.accepted:
        raise _refusal(acceptance.failed, "acceptance criteria not met")
    base_bytes = (Path(weights_dir) / f"{base.name}.json").read_bytes()
    adapted = adapted_spec(base, fit, acceptance, cases, protocol, source,
                           from_spec_sha256=hashlib.sha256(base_bytes).hexdigest(),
                           now=now or datetime.now(timezone.utc))
    written = write_models_dir(out_dir, base, adapted, Path(weights_dir), key_file=key_file)
    return AdaptResult(model=base.name, from_version=base.version, version=adapted.version, protocol_source=source,
                       protocol_sha256=protocol.sha256, cases=cases, fit=fit, acceptance=acceptance,
                       out_dir=str(out_dir), written=written)


def adapted_spec(base: ModelSpec, fit: ThresholdFit, acceptance: Acceptance, cases: ReviewedCases,
                 protocol: Protocol, protocol_source: str, *, from_spec_sha256: str, now: datetime) -> ModelSpec:
    """The base spec with the fitted threshold, a site version and the adaptation record.

    The base's confidence table (``validation.confidence``) is left out: it describes the released
    version's validation set, which the adaptation exists because this site differs from."""
    validation = {k: v for k, v in base.validation.items() if k not in ("confidence", "adaptation")}
    record = {
        "from_version": base.version,
        "from_spec_sha256": from_spec_sha256,
        "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "protocol": {"source": protocol_source, "sha256": protocol.sha256, "values": protocol.to_dict()},
        "changed": {"threshold": {"from": base.threshold, "to": fit.threshold}},
        "unchanged": "network weights (same file, same sha256), preprocessing, labels, scope; the score is the "
                     "network's as released (no recalibration)",
        "counts": cases.counts(),
        "fit": fit.to_dict(),
        "acceptance": acceptance.to_dict(),
        "confidence_table": "left out: it describes the released version's validation set"
        if "confidence" in base.validation else "none in the released version",
    }
    if isinstance(base.validation.get("adaptation"), dict):
        record["previous_adaptation"] = base.validation["adaptation"]
    return replace(base, version=site_version(base.version), threshold=fit.threshold,
                   validation={**validation, "adaptation": record})


def spec_diff(base: ModelSpec, adapted: ModelSpec) -> dict:
    """What differs between two specs: top-level fields and the keys of ``validation``."""
    old, new = asdict(base), asdict(adapted)
    changes = []
    for name in old:
        if name == "validation":
            continue
        if old[name] != new[name]:
            changes.append({"field": name, "from": old[name], "to": new[name]})
    for key in sorted(set(base.validation) | set(adapted.validation)):
        before, after = base.validation.get(key), adapted.validation.get(key)
        if before != after:
            changes.append({"field": f"validation.{key}", "from": "present" if before is not None else None,
                            "to": "present" if after is not None else "removed"})
    unchanged = [name for name in old if name != "validation" and old[name] == new[name]]
    return {"model": base.name, "from_version": base.version, "to_version": adapted.version,
            "changes": changes, "unchanged": unchanged}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _ci(ci) -> str:
    return "n/a" if ci[0] is None else f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}%"


def adaptation_card(base: ModelSpec, adapted: ModelSpec) -> str:
    """The short Markdown card: what changed, the evidence, the decision."""
    record = adapted.validation["adaptation"]
    counts, fit, acc = record["counts"], record["fit"], record["acceptance"]
    rel, ada = acc["locked_set_released"], acc["locked_set_adapted"]
    level = f"{rel['confidence']:.0%} Wilson"
    lines = [
        f"# {adapted.name} {adapted.version}: site adaptation of {base.version}",
        "",
        "Not a medical device. Every finding still needs a clinician's review.",
        "",
        "## What changed",
        "",
        f"- Decision threshold {base.threshold:.4f} -> {adapted.threshold:.4f}; nothing else. The network's weights "
        f"are the released file (sha256 `{adapted.sha256[:16]}...`), the score is the network's as released.",
        f"- Protocol `{record['protocol']['source']}` (sha256 `{record['protocol']['sha256'][:16]}...`): the highest "
        f"threshold reaching sensitivity {fit['target_sensitivity']:g} on the fit set.",
        f"- Confidence table (validation.confidence): {record['confidence_table']}.",
        "",
        "## Evidence",
        "",
        f"- {counts['all']['n']} reviewed findings from {counts['logs']} decision log(s) "
        f"({counts['all']['n_positive']} positive by the reviewers' final call); "
        f"{counts['n_dropped']} decision(s) left out:"
        + ("".join(f"\n  - {n}: {reason}" for reason, n in counts["dropped"].items()) or " none"),
        f"- Fit set: {counts['fit']['n']} ({counts['fit']['n_positive']} positive); locked set (chosen by a hash "
        f"of series UID and model, never used to fit): {counts['locked']['n']} ({counts['locked']['n_positive']} "
        "positive).",
        "",
        f"| locked set | threshold | sensitivity ({level} CI) | specificity ({level} CI) |",
        "|---|---|---|---|",
        f"| released {base.version} | {rel['threshold']:.4f} | {_pct(rel['sensitivity'])} "
        f"({_ci(rel['sensitivity_ci'])}) | {_pct(rel['specificity'])} ({_ci(rel['specificity_ci'])}) |",
        f"| adapted {adapted.version} | {ada['threshold']:.4f} | {_pct(ada['sensitivity'])} "
        f"({_ci(ada['sensitivity_ci'])}) | {_pct(ada['specificity'])} ({_ci(ada['specificity_ci'])}) |",
        "",
        "## Decision",
        "",
        f"**{'Accepted' if acc['accepted'] else 'Refused'}** under the protocol:",
        *[f"- {'pass' if c['passed'] else 'FAIL'} `{c['name']}`: {c['detail']}" for c in acc["criteria"]],
        "",
        "The figures hold for this site's reviewed cases as its reviewers called them; review agreement is "
        "not ground truth, and the locked set is small. Keep monitoring (`medassist monitor`).",
        "",
    ]
    return "\n".join(lines)


def write_models_dir(out_dir: Path, base: ModelSpec, adapted: ModelSpec, weights_dir: Path, *,
                     key_file: str | Path | None = None) -> tuple[str, ...]:
    """Write the adapted models folder in a temporary folder beside ``out_dir``, sign it, rename it into place."""
    _, weights = read_weights(base, weights_dir)  # the released bytes, sha256 checked
    spec_json = adapted.to_json()
    parse_spec(spec_json.encode(), f"{adapted.name}.json (adapted)")  # never write a spec the registry refuses
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(out_dir) as tmp:  # out_dir: absent or empty (checked before)
        write_atomic(tmp / adapted.weights, weights)
        write_atomic(tmp / f"{adapted.name}.json", spec_json)
        diff = json.dumps(spec_diff(base, adapted), indent=2, allow_nan=False) + "\n"
        (tmp / RECORD_DIR).mkdir()
        write_atomic(tmp / RECORD_DIR / DIFF_NAME, diff)
        write_atomic(tmp / RECORD_DIR / CARD_NAME, adaptation_card(base, adapted))
        sign_models_dir(tmp, key_file=key_file)  # signs NAME.json (the only spec there); names, not folders, are signed
        names = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    return tuple(str(out_dir / name) for name in names)
