"""Compare study rules for the tumour model on cached slice scores (no network run here).

Reads ``cache/tumor_rule_scores.pkl`` (made once by ``scripts/tumor_rule_scores.py``) and prints,
per rule variant, the share flagged of:
- positive pseudo-volumes: a run of 3-8 consecutive validation tumour slices (7 mm apart) inside
  N = 0, 20, 80 filler slices, fillers drawn from all validation negatives ("harsh": Br35H and
  mirror negatives, 19% of them >= threshold) or from the Br35H slices only ("real": tumour-free
  slices as acquired); also the first 3 slices of each run ("short");
- negative pseudo-volumes of n = 1, 5, 15, 50, 150 validation negatives drawn independently, at
  1 mm and 5 mm (the model card's check);
- stress tests with correlated negatives (validation only): a run of 2-8 consecutive mirror
  negatives (one patient, tumour erased) inside 20 / 80 harsh fillers; volumes made of 7 mm
  stretches of mirror negatives only ("all mirror") or of stretches that switch between mirror
  and Br35H slices ("clustered"), at 1, 5 and 7 mm: the largest excess of the share flagged over
  one slice of the same kind (66% for mirror negatives, 19% for all negatives) is shown;
- the model card's 12 normal volumes (an independent check, never used to set a parameter) and
  the sample series PAT13 (tumour) and PAT14 (normal).

Rules: A is the shipped one (``vol.aggregate_study_score``: best 10 mm window mean, Sidak over
the windows). B (``multi_extent_score`` below) lets runs of 10, 20, 30 (40) mm compete, each as a
mean slice logit with sqrt(k) credit for k = max(1, w * min(spacing, unit) / unit) independent
units, Sidak over its windows, Bonferroni over the extents (or Sidak over all windows, "sum");
``unit_mm`` is the length over which normal slices of one brain stay correlated, estimated here
from adjacent validation mirror negatives (``unit_mm_estimate``). D caps each slice's score by
the spatial overlap of its cell map with an adjacent slice's before A or B.

Tuning uses the validation split only (tumor.split_indices: block % 5 == 1). Result (2026-11-24,
tumor_mri 1.0.0): B with the estimated unit (17.5 mm) flagged far more tumour pseudo-volumes than
A and no more validation negatives than one slice of the same kind, but flagged the skull-on
Colin27 normal volumes (ch2 as given and 5 mm thick) and the sample PAT14, so A stays shipped.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
from scipy.special import expit

from medassist.models import tumor_train
from medassist.preprocess import volume as vol

CACHE = Path(__file__).resolve().parents[1] / "cache" / "tumor_rule_scores.pkl"
NULL = vol.NullModel(-2.6859168938034657, 2.2037918817254374)  # tumor_mri.json inference.null_logit
THRESHOLD = 0.41


def unit_mm_estimate(v: dict, spacing_mm: float = 7.0) -> tuple[float, float, int]:
    """Lag-1 correlation of the logits of adjacent mirror negatives (consecutive file numbers of
    one class) and the correlation unit it implies, 2 x the 1/e length: -2 * spacing / ln(rho)."""
    idx = np.flatnonzero(v["kind"] == 1)
    idx = idx[np.argsort(v["number"][idx], kind="stable")]
    logits = vol._logit(v["score"])
    pairs = [(r[i], r[i + 1]) for r in tumor_train.patient_runs(v["number"][idx], v["folder"][idx], 1000)
             for i in range(len(r) - 1)]
    a, b = (np.array([logits[idx[p[k]]] for p in pairs]) for k in (0, 1))
    rho = float(np.corrcoef(a, b)[0, 1])
    return rho, -2 * spacing_mm / math.log(rho), len(pairs)


def gated(scores: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Spatial consistency: each slice's score capped by the best overlap (min of the two cell
    probabilities, same cell) of its cell map with an adjacent slice's; a 1-slice series unchanged."""
    if len(scores) < 2:
        return scores
    p = expit(cells)
    pair = np.minimum(p[:-1], p[1:]).reshape(len(p) - 1, -1).max(1)
    best = np.maximum(np.concatenate([[0.0], pair]), np.concatenate([pair, [0.0]]))
    return np.minimum(scores, best)


def multi_extent_score(scores: np.ndarray, spacing_mm: float, extents_mm: tuple[float, ...], unit_mm: float,
                       null: vol.NullModel, combine: str = "bonferroni") -> float:
    """Rule B: the best run over several extents, as a single-slice-equivalent score (see the module
    docstring); a 1-slice series scores its slice score."""
    from scipy.special import ndtr

    n = scores.size
    if n == 1:
        return float(scores[0])
    csum = np.concatenate([[0.0], np.cumsum(vol._logit(scores))])
    n_scored = max(1, int(np.count_nonzero(scores > 0)))
    widths = sorted({vol.window_length(n, spacing_mm, e) for e in extents_mm})
    tails, windows = [], []
    for w in widths:
        means = (csum[w:] - csum[:-w]) / w
        units = max(1.0, w * min(spacing_mm, unit_mm) / unit_mm)
        z = (float(means.max()) - null.logit_mean) / null.logit_std * math.sqrt(units)
        tails.append(float(ndtr(-z)))
        windows.append(max(1, math.ceil(n_scored / w)))
    if combine == "sum":  # Sidak over every window of every extent
        study_tail = -math.expm1(sum(windows) * math.log1p(-min(min(tails), 1 - 1e-16)))
    else:  # Sidak per extent, Bonferroni over the extents
        study_tail = min(1.0, len(widths) * min(-math.expm1(m * math.log1p(-min(t, 1 - 1e-16)))
                                                for t, m in zip(tails, windows)))
    return null.score_at_tail(study_tail)


def variants() -> dict[str, tuple[dict | None, bool]]:
    """name -> (multi_extent_score keywords, or None for the shipped rule A; spatial gating)."""
    out: dict[str, tuple[dict | None, bool]] = {"A single extent 10 mm (shipped)": (None, False)}
    out["B 10/20/30 mm, unit 10 mm, Sidak over all windows"] = ({"extents_mm": (10, 20, 30), "unit_mm": 10.0,
                                                                 "combine": "sum"}, False)
    for unit in (12.5, 15.0, 17.5, 20.0):
        out[f"B 10/20/30 mm, unit {unit:g} mm"] = ({"extents_mm": (10, 20, 30), "unit_mm": unit}, False)
    out["B 10/20/30/40 mm, unit 17.5 mm"] = ({"extents_mm": (10, 20, 30, 40), "unit_mm": 17.5}, False)
    out["D spatial gating + A"] = (None, True)
    out["D spatial gating + B unit 17.5 mm"] = ({"extents_mm": (10, 20, 30), "unit_mm": 17.5}, True)
    return out


def study(scores, cells, spacing, kw, gate) -> float:
    s = gated(scores, cells) if gate else scores
    if kw is None:
        return vol.aggregate_study_score(s, spacing_mm=spacing, null=NULL)[0]
    return multi_extent_score(np.asarray(s, dtype=np.float64), spacing, null=NULL, **kw)


def pseudo_volumes(v: dict, seed: int = 0, reps: int = 5, draws: int = 500) -> dict:
    """name -> (list of index arrays into the validation slices, spacing, one-slice reference or None)."""
    rng = np.random.default_rng(seed)
    lab, kind, num, fol = v["label"], v["kind"], v["number"], v["folder"]
    neg, mir, br = np.flatnonzero(lab == 0), np.flatnonzero(kind == 1), np.flatnonzero((lab == 0) & (kind == 0))

    def runs(idx, min_len):
        idx = idx[np.argsort(num[idx], kind="stable")]
        return [idx[r] for r in tumor_train.patient_runs(num[idx], fol[idx], 8) if len(r) >= min_len]

    tumour_runs, mirror_runs = runs(np.flatnonzero(lab == 1), 3), runs(mir, 2)
    sets: dict = {}
    for n_pad in (0, 20, 80):
        for fill, pool in (("harsh", neg), ("real", br)):
            for name, rr in (("run", tumour_runs), ("short", [r[:3] for r in tumour_runs]), ("mirror run", mirror_runs)):
                vols = [np.concatenate([pad[: n_pad // 2], r, pad[n_pad // 2:]])
                        for _ in range(reps if n_pad else 1) for r in rr
                        for pad in [rng.choice(pool, size=n_pad, replace=True)]]
                sets[(name, fill, n_pad)] = (vols, 7.0, None)
    one_neg, one_mir = float(np.mean(v["score"][neg] >= THRESHOLD)), float(np.mean(v["score"][mir] >= THRESHOLD))
    for d in (1.0, 5.0, 7.0):
        rep = max(1, round(7.0 / d))
        for n in (1, 5, 15, 50, 150):
            sets[("iid", d, n)] = ([rng.choice(neg, size=n, replace=False) for _ in range(draws)], d, one_neg)
            if n == 1:
                continue
            pieces = -(-n // rep)
            sets[("all mirror", d, n)] = ([np.repeat(rng.choice(mir, size=pieces), rep)[:n] for _ in range(draws)],
                                          d, one_mir)
            clustered = []
            for _ in range(draws):  # mirror stretches of 3 pieces on average, 28% of pieces (as in neg)
                state, out = rng.random() < 0.28, []
                for _ in range(pieces):
                    out.append(rng.choice(mir) if state else rng.choice(br))
                    state = (rng.random() >= 1 / 3) if state else (rng.random() < 0.28 / 0.72 / 3)
                clustered.append(np.repeat(out, rep)[:n])
            sets[("clustered", d, n)] = (clustered, d, one_neg)
    return sets


def main() -> None:
    data = pickle.loads(CACHE.read_bytes())
    v = data["validation"]
    rho, unit, n_pairs = unit_mm_estimate(v)
    print(f"mirror negatives, adjacent slices: lag-1 logit correlation {rho:.3f} ({n_pairs} pairs) -> unit {unit:.1f} mm")
    sets = pseudo_volumes(v)
    for name, (kw, gate) in variants().items():
        res = {}
        for key, (vols, d, one) in sets.items():
            res[key] = float(np.mean([study(v["score"][x], v["cells"][x], d, kw, gate) >= THRESHOLD for x in vols]))
        excess = {fam: max(res[k] - sets[k][2] for k in res if k[0] == fam) for fam in ("iid", "all mirror", "clustered")}
        normal = {k: study(r["scores"], r["cells"], r["spacing_mm"], kw, gate) for k, r in data["volumes"].items()}
        samples = {k: study(r["scores"], r["cells"], r["spacing_mm"], kw, gate) for k, r in data["samples"].items()}
        pct = lambda k: f"{100 * res[k]:.0f}"  # noqa: E731
        print(f"\n{name}")
        print("  runs, harsh N=0/20/80:", "/".join(pct(("run", "harsh", n)) for n in (0, 20, 80)),
              " real N=20/80:", "/".join(pct(("run", "real", n)) for n in (20, 80)),
              " short (3 slices) harsh 20/80:", "/".join(pct(("short", "harsh", n)) for n in (20, 80)),
              " real 20/80:", "/".join(pct(("short", "real", n)) for n in (20, 80)))
        print("  negatives iid 1mm n=1/5/15/50/150:", " ".join(f"{100 * res[('iid', 1.0, n)]:.1f}" for n in (1, 5, 15, 50, 150)),
              "| 5mm:", " ".join(f"{100 * res[('iid', 5.0, n)]:.1f}" for n in (1, 5, 15, 50, 150)),
              "| 7mm:", " ".join(f"{100 * res[('iid', 7.0, n)]:.1f}" for n in (1, 5, 15, 50, 150)))
        print("  mirror run in harsh 0/20/80:", "/".join(pct(("mirror run", "harsh", n)) for n in (0, 20, 80)),
              " excess over one slice: iid", f"{100 * excess['iid']:+.1f}", "all mirror", f"{100 * excess['all mirror']:+.1f}",
              "clustered", f"{100 * excess['clustered']:+.1f}")
        print("  all mirror 1mm n=5/15/50/150:", " ".join(f"{100 * res[('all mirror', 1.0, n)]:.0f}" for n in (5, 15, 50, 150)),
              "| 5mm:", " ".join(f"{100 * res[('all mirror', 5.0, n)]:.0f}" for n in (5, 15, 50, 150)),
              "| 7mm:", " ".join(f"{100 * res[('all mirror', 7.0, n)]:.0f}" for n in (5, 15, 50, 150)))
        top = max(normal, key=normal.get)
        print(f"  normal volumes flagged {sum(s >= THRESHOLD for s in normal.values())}/12, max {normal[top]:.3f} ({' '.join(top)});",
              " ".join(f"{k[0]}/{k[1]} {s:.3f}" for k, s in normal.items()))
        print("  samples:", " ".join(f"{k} {s:.3f}" for k, s in samples.items()))


if __name__ == "__main__":
    main()
