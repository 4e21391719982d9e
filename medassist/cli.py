"""The ``medassist`` command: parses arguments and calls one stage function per command.

Exit status: 0 when the command ran (even if some input files were unreadable: they are rows in the
worklist), 2 for a usage error or a problem the user can fix (MedassistError: printed as
``medassist: error: <message>``, no traceback; a command whose extra is not installed is one:
``medassist.optional`` names the command that installs it), ``EXIT_RESULTS_FAILED`` (3) when ``triage --send``
wrote the worklist but could not build or send every result (and when ``review-sr`` could not write or send
every reviewed SR), 130 when interrupted. Messages and
log lines never show credentials given inside a URL (``sanitize.redact_credentials``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from typing import TYPE_CHECKING

from medassist.errors import MedassistError
from medassist.optional import require_extra
from medassist.sanitize import redact_credentials

if TYPE_CHECKING:
    from medassist.models.spec import ModelSpec
    from medassist.triage.options import TriageOptions

def prefer_sleeping_threads() -> None:
    """Ask OpenMP to let torch's waiting threads sleep, not spin; call before torch loads.

    Triage's decode workers share the cores with torch's threads, and spinning threads burned the
    workers' cycles: on the 2-core machine end-to-end triage went from 69% to 74% of the model's
    throughput, and the model alone got no slower (README, Speed). An OMP_WAIT_POLICY already in
    the environment wins. The benchmarks call this too, so they measure what the command runs.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


prefer_sleeping_threads()  # the heavy imports (torch) are inside the commands below


# ``triage --send``: the worklist is written, but some result (an SR, a saliency capture or SEG) could not be
# built or was not stored by the PACS; each is listed on stderr. Distinct from 2 (usage errors, argparse's too).
EXIT_RESULTS_FAILED = 3

# review-sr: the verifying organization when --organization is not given
ORGANIZATION_ENV = "MEDASSIST_ORGANIZATION"
# review-sr --sign-key: the key's password, if it has one (never on the command line)
SIGN_KEY_PASSWORD_ENV = "MEDASSIST_SIGN_KEY_PASSWORD"

# the choices of triage --runtime and export-model --format (medassist.models.onnx_runtime.RUNTIMES and
# medassist.models.export.EXPORT_FORMATS, kept equal by tests/test_cli.py): named here so that building the
# parser imports no torch
RUNTIMES = ("torch", "onnx", "auto")
MODEL_FORMATS = ("onnx", "monai-bundle")
# triage --explain-method (medassist.explain.saliency.METHODS, kept equal by tests/explain/test_saliency.py)
SALIENCY_METHODS = ("gradcam", "cell_probability", "integrated_gradients", "occlusion")

# On the CPU the fracture network scores 40 images/s at batch 4-8, 38 at 16, 34 at 32 (2 cores).
DEFAULT_BATCH = 8


def default_workers() -> int:
    """Decode worker processes: leave a core for inference, at most 4."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def non_negative_seconds(text: str) -> float:
    """argparse type: a number of seconds >= 0."""
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    value = float(text)
    if not 0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def add_models_dir(parser: argparse.ArgumentParser) -> None:
    """The hidden --models-dir option: use model specs and weights from another folder (each signed
    with the site key by ``medassist models sign``, or all allowed unsigned with a warning)."""
    parser.add_argument("--models-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--allow-unsigned-models", action="store_true", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = argparse.ArgumentParser(
        prog="medassist",
        description="Medical-imaging diagnostic assistant: triage imaging studies with shipped models "
        "for human review. Not a medical device; every finding needs a clinician's review.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    triage = commands.add_parser(
        "triage", help="score every series under INPUT and write a prioritised worklist",
        description="Find every image series under INPUT (folders, DICOM files, DICOMDIRs, NIfTI, NRRD, "
        "MetaImage), run each shipped model that applies, and write OUT/worklist.csv and OUT/worklist.json, highest "
        "priority first, and OUT/quarantine.csv listing the files and series that could not be used. "
        "Re-running into the same OUT resumes: finished series are not redone.",
    )
    triage.add_argument("inputs", nargs="*", metavar="INPUT", help="a file or folder to read (or use --pacs)")
    triage.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    triage.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where models run (default: auto, CUDA when available)")
    triage.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH, metavar="N",
                        help=f"images per model batch (default: {DEFAULT_BATCH}, the CPU's best; "
                             "a GPU wants more, e.g. 64)")
    triage.add_argument("--workers", type=non_negative_int, default=default_workers(), metavar="N",
                        help="decoding worker processes; 0 decodes in the main process (default: %(default)s)")
    triage.add_argument("--modality", default=None, metavar="MODALITY",
                        help="modality for inputs that carry none, e.g. MR for NIfTI files")
    triage.add_argument("--quiet", action="store_true", help="no progress bar")
    triage.add_argument("--explain", choices=("flagged", "all", "none"), default="flagged",
                        help="which findings get a saliency map (default: flagged)")
    triage.add_argument("--explain-method", choices=SALIENCY_METHODS,
                        default=None, help="saliency method (default: each model's own, its spec's saliency_method: "
                        "cell_probability for fracture_xray, gradcam for tumor_mri)")
    triage.add_argument("--series-timeout", type=non_negative_seconds, default=None, metavar="S",
                        help="seconds one series may spend decoding before it becomes an error row; "
                        "0: no limit (default: 120)")
    pacs = triage.add_argument_group("PACS (DICOMweb)")
    pacs.add_argument("--pacs", metavar="URL", help="pull studies from this DICOMweb root instead of INPUT")
    pacs.add_argument("--date-from", metavar="YYYYMMDD", help="studies on or after this date")
    pacs.add_argument("--date-to", metavar="YYYYMMDD", help="studies on or before this date")
    pacs.add_argument("--modality-filter", metavar="MOD", help="only studies with this modality, e.g. DX")
    add_pacs_credentials(triage)
    triage.add_argument("--send", metavar="TARGET", help="send SR + saliency captures back: a DICOMweb URL "
                        "(STOW-RS) or dicom://AET@host:port (C-STORE)")
    triage.add_argument("--send-seg", action="store_true", help="also send saliency maps as DICOM SEG")
    triage.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="local: this machine (default); ray: decode and score on a Ray cluster")
    triage.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to join ('auto': this machine's); "
                        "default: start one on this machine")
    triage.add_argument("--ray-actors", type=positive_int, metavar="N", help="model actors (default: one per GPU, else 1)")
    triage.add_argument("--runtime", choices=RUNTIMES,
                        help="what scores: auto (default: ONNX Runtime on the CPU when it is installed, the model is "
                        "exported, current and agrees with torch on probe inputs, else torch), torch, or onnx (the "
                        "same as auto, but a missing or failing export stops the run); saliency always runs on torch")
    triage.add_argument("--onnx-dir", type=Path, metavar="DIR",
                        help="the folder medassist export-model --format onnx wrote (NAME.onnx per model; default: "
                        "$MEDASSIST_ONNX_DIR, else ~/.cache/medassist/onnx, where make install exports)")
    add_models_dir(triage)
    triage.set_defaults(func=cmd_triage)

    listen = commands.add_parser(
        "listen", help="receive studies over DICOM (C-STORE SCP) and triage each once complete",
        description="Listen for studies pushed by a PACS or modality; a study with no new instance for "
        "--idle-seconds is triaged into OUT/studies/<study> and OUT/worklist.csv is updated. Only the calling "
        "AEs given with --allow-ae may send (or any, with --allow-any-ae).",
    )
    listen.add_argument("--ae-title", "--aet", dest="aet", default="MEDASSIST", metavar="AE")
    listen.add_argument("--port", type=positive_int, default=11112, metavar="N")
    listen.add_argument("--host", default="127.0.0.1", metavar="H", help="address to bind (default: 127.0.0.1)")
    listen.add_argument("--out", required=True, type=Path, metavar="DIR")
    listen.add_argument("--idle-seconds", type=float, default=30.0, metavar="S")
    listen.add_argument("--send", metavar="TARGET", help="send results back (DICOMweb URL or dicom://AET@host:port)")
    listen.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    peers = listen.add_argument_group("DICOM peers and limits")
    peers.add_argument("--allow-ae", action="append", default=[], metavar="AE[@HOST]",
                       help="a calling AE title allowed to send, repeat for each; @HOST: only from that address")
    peers.add_argument("--allow-any-ae", action="store_true",
                       help="accept any calling AE title (not recommended: whoever reaches the port can send)")
    peers.add_argument("--max-associations", type=positive_int, metavar="N", help="associations at once (default: 16)")
    peers.add_argument("--max-per-peer", type=positive_int, metavar="N",
                       help="associations at once from one calling AE at one address (default: 4)")
    peers.add_argument("--max-instance-mb", type=positive_int, metavar="MB",
                       help="refuse an instance larger than this (default: 2048)")
    peers.add_argument("--acse-timeout", type=positive_seconds, metavar="S",
                       help="seconds a connection may take to ask for an association (default: 10)")
    peers.add_argument("--dimse-timeout", type=positive_seconds, metavar="S",
                       help="seconds to wait on a DIMSE message (default: 30)")
    peers.add_argument("--network-timeout", type=positive_seconds, metavar="S",
                       help="an association silent this long is aborted (default: 15)")
    tls = listen.add_argument_group("TLS (optional)")
    tls.add_argument("--tls-cert", type=Path, metavar="PEM", help="the listener's certificate (chain)")
    tls.add_argument("--tls-key", type=Path, metavar="PEM", help="its private key")
    tls.add_argument("--tls-ca", type=Path, metavar="PEM", help="require peers to present a certificate from this CA")
    add_pacs_credentials(listen)
    add_models_dir(listen)
    listen.set_defaults(func=cmd_listen)

    export = commands.add_parser(
        "export", help="write studies (and results) de-identified, for data leaving the hospital",
        description="Copy the studies under INPUT into DIR de-identified per DICOM PS3.15 Annex E (basic "
        "profile), UIDs remapped consistently (secret: MEDASSIST_DEID_SECRET or a per-user key file).",
    )
    export.add_argument("inputs", nargs="+", metavar="INPUT")
    export.add_argument("--out", required=True, type=Path, metavar="DIR")
    export.add_argument("--deidentify", action="store_true", required=True,
                        help="required: exports are always de-identified")
    export.add_argument("--results", type=Path, metavar="OUT_DIR", help="a triage output to export with them")
    export.add_argument("--allow-burned-in", action="store_true",
                        help="export images that may carry burned-in text (off by default)")
    export.set_defaults(func=cmd_export)

    export_model = commands.add_parser(
        "export-model", help="export a shipped model for another runtime (ONNX, MONAI bundle)",
        description="--format onnx: write DIR/NAME.onnx for each named shipped model: its network's raw image and "
        "cell logits with a dynamic batch axis, carrying the model's preprocessing contract (input size, "
        "normalisation, labels, threshold, score head, sha256 of the weights) as ONNX metadata. Kept only if ONNX "
        "Runtime reproduces the torch probabilities (recorded beside it as NAME.onnx.agreement.json). Without --out: "
        "$MEDASSIST_ONNX_DIR, else ~/.cache/medassist/onnx, where triage looks by default (--runtime auto). "
        "--format monai-bundle: write the MONAI bundle DIR/NAME/ (metadata, inference config with medassist's "
        "preprocessing as MONAI transforms, weights, docs; radiograph models only; running it needs medassist "
        "installed). Kept only if MONAI running the bundle reproduces medassist's probabilities.",
    )
    export_model.add_argument("names", nargs="+", metavar="NAME", help="a shipped model (see medassist models)")
    export_model.add_argument("--format", dest="model_format", choices=MODEL_FORMATS, required=True,
                              help="the format to write (onnx: needs medassist[onnx]; monai-bundle)")
    export_model.add_argument("--out", type=Path, metavar="DIR", help="output folder (needed for monai-bundle; "
                              "onnx default: where triage looks, $MEDASSIST_ONNX_DIR or ~/.cache/medassist/onnx)")
    add_models_dir(export_model)
    export_model.set_defaults(func=cmd_export_model)

    train = commands.add_parser(
        "train", help="train a model from a YAML config",
        description="Train a model from a YAML config (e.g. configs/fracture_xray.yaml) and write its "
        "weights, sha256 and spec into the shipped models folder.",
    )
    train.add_argument("config", type=Path, metavar="CONFIG", help="training config (YAML)")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="auto (default): CUDA when present, else the CPU")
    train.set_defaults(func=cmd_train)

    models = commands.add_parser(
        "models", help="list the shipped models (or sign a models folder)",
        description="List the shipped models: name, version, finding, threshold, scope, sha256 prefix. "
        "'models sign' signs a folder of models with the site key.",
    )
    add_models_dir(models)
    models.set_defaults(func=cmd_models)
    models_commands = models.add_subparsers(dest="models_command", metavar="[ACTION]")
    sign = models_commands.add_parser(
        "sign", help="sign the models in a folder with the site key",
        description="Write NAME.sig beside every NAME.json in DIR: an HMAC-SHA256 under the site key of the "
        "spec's and the weights' sha256, after checking the spec's values and its weights. Models from a "
        "--models-dir folder are used only when their signature verifies under the site key.",
    )
    sign.add_argument("--models-dir", dest="sign_dir", type=Path, required=True, metavar="DIR")
    sign.add_argument("--key-file", type=Path, metavar="PATH",
                      help="the site key (default: $MEDASSIST_KEY_FILE, else ~/.config/medassist/site.key; "
                      "created on first use, mode 0600)")
    sign.set_defaults(func=cmd_models_sign)

    review = commands.add_parser(
        "review", help="open the radiologist's review app on a triage output folder",
        description="Serve the review app for OUT_DIR (its worklist; decisions go to "
        "OUT_DIR/decisions.sqlite) on 127.0.0.1. With reviewer accounts (medassist users add) each "
        "reviewer signs in and is recorded by account; without any, single-user mode marks every "
        "decision unauthenticated. Beyond loopback only with --public: nginx with TLS and a sign-in in "
        "front of every path, Streamlit on loopback behind it.",
    )
    review.add_argument("out", type=Path, metavar="OUT_DIR", help="a folder written by medassist triage")
    review.add_argument("--port", type=positive_int, default=None, metavar="N",
                        help="port (default: 8501; with --public 8443)")
    review.add_argument("--host", default="127.0.0.1", metavar="H", help="address to bind (default: 127.0.0.1)")
    review.add_argument("--public", action="store_true",
                        help="serve beyond loopback through nginx (TLS, sign-in on every path; needs accounts)")
    review.add_argument("--tls-cert", type=Path, metavar="FILE", help="with --public: the site's TLS certificate (PEM)")
    review.add_argument("--tls-key", type=Path, metavar="FILE", help="with --public: its private key (PEM)")
    add_key_file(review)
    add_users_file(review)
    review.set_defaults(func=cmd_review)

    review_sr = commands.add_parser(
        "review-sr", help="write the reviewers' decisions as reviewed SRs (new versions of the AI SRs)",
        description="For every finding of RUN_DIR with a current decision in DB (verified first), write a new "
        "version of its AI SR (RUN_DIR/dicom/<study>/SR_*.dcm, written by triage --send): same study, its own "
        "series, the AI SR as predecessor, VERIFIED by the reviewer (their account name) for --organization, the "
        "finding as the reviewer settled it and a corrected location as an SCOORD POINT. One file per decided "
        "finding, DIR/<study>/SR_<uid>.dcm. Undecided findings and single-user (unauthenticated) decisions are "
        "skipped and counted. With --sign-key and --sign-cert each SR is digitally signed (PS3.15 Annex C, SHA-256, "
        "over all its top-level elements); without them it is not signed. Exit 3 when some decision could not be "
        "written (each listed on stderr) or sent.",
    )
    review_sr.add_argument("run", type=Path, metavar="RUN_DIR", help="a folder written by medassist triage")
    review_sr.add_argument("--db", required=True, type=Path, metavar="DB",
                           help="the run's decisions.sqlite (or its folder)")
    review_sr.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    review_sr.add_argument("--organization", metavar="NAME", default=None,
                           help=f"the verifying organization the SRs name (default: ${ORGANIZATION_ENV})")
    review_sr.add_argument("--send", metavar="TARGET", help="send the reviewed SRs: a DICOMweb URL (STOW-RS) or "
                           "dicom://AET@host:port (C-STORE)")
    review_sr.add_argument("--sign-key", type=Path, metavar="KEY.pem",
                           help="sign each SR with this PEM private key (RSA or EC; its password, if any, from "
                           f"${SIGN_KEY_PASSWORD_ENV})")
    review_sr.add_argument("--sign-cert", type=Path, metavar="CERT.pem",
                           help="with --sign-key: the signer's PEM X.509 certificate, stored in each signature")
    add_pacs_credentials(review_sr)
    add_key_file(review_sr)
    review_sr.add_argument("--anchor", type=Path, metavar="FILE",
                           help="the decision log's anchor (default: the one kept for DB beside the site key)")
    review_sr.set_defaults(func=cmd_review_sr)

    users = commands.add_parser(
        "users", help="reviewer accounts: add, list, remove",
        description="Reviewer accounts for the review app: names and Argon2id password hashes in a users file "
        "outside every output folder (default: $MEDASSIST_USERS_FILE, else review-users.json beside the site key; "
        "mode 0600).",
    )
    users_commands = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    users_add = users_commands.add_parser("add", help="add an account (asks for its password)")
    users_add.add_argument("name", metavar="NAME", help="account name: a-z 0-9 . _ @ - (recorded as the reviewer)")
    users_add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    users_add.add_argument("--replace", action="store_true", help="set a new password for an existing account")
    add_users_file(users_add)
    users_add.set_defaults(func=cmd_users_add)
    users_list = users_commands.add_parser("list", help="list the accounts")
    add_users_file(users_list)
    users_list.set_defaults(func=cmd_users_list)
    users_remove = users_commands.add_parser("remove", help="remove an account (its sessions end)")
    users_remove.add_argument("name", metavar="NAME")
    add_users_file(users_remove)
    users_remove.set_defaults(func=cmd_users_remove)

    audit = commands.add_parser(
        "audit", help="regenerate the model cards of the shipped models",
        description="Write model cards (Markdown, HTML, JSON, plots) for the shipped models: metrics with "
        "95%% bootstrap intervals, subgroups, calibration, operating points, and radiologists' agreement "
        "from a review database. Without an evaluation set each model is evaluated on its own validation "
        "split when the data is found: the fracture model on FracAtlas, the tumour model on the brain-tumour "
        "slices (through its own slice preprocessing). --model NAME rebuilds one card only. Images and "
        "DICOM series are scored through the model's own input path (volume models: slice preprocessing, "
        "study aggregation). --verify only checks the review log (its keyed chain and anchor).",
    )
    audit.add_argument("--model", action="append", dest="models", metavar="NAME",
                       help="only this model's card (repeatable; default: every shipped model)")
    source = audit.add_mutually_exclusive_group()
    source.add_argument("--images", type=Path, metavar="DIR", help="folder of labelled images")
    source.add_argument("--dicom", type=Path, metavar="DIR", help="folder of labelled DICOM series")
    source.add_argument("--scores", type=Path, metavar="CSV", help="already-scored set: label, score, factors")
    audit.add_argument("--labels", type=Path, metavar="CSV", help="labels for --images or --dicom")
    audit.add_argument("--data-root", type=Path, metavar="DIR",
                       help="data folder of the model's default evaluation set (FracAtlas, brain_tumor); "
                       "default: found from $MEDASSIST_DATA, the training config's data root, ../shared/data")
    audit.add_argument("--limit", type=positive_int, metavar="N", help="evaluate N cases of the default set (smoke runs)")
    audit.add_argument("--review-db", type=Path, metavar="PATH", help="decisions.sqlite from the review app")
    audit.add_argument("--out", type=Path, default=Path("model_cards"), metavar="DIR", help="default: model_cards")
    audit.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    audit.add_argument("--verify", action="store_true",
                       help="only check the review log: keyed MAC chain and its anchor (exit 1 on any problem)")
    add_key_file(audit)
    audit.add_argument("--anchor", type=Path, metavar="FILE",
                       help="the review log's anchor (default: the one kept for --review-db beside the site key; "
                       "give it when the output folder was moved)")
    add_models_dir(audit)
    audit.set_defaults(func=cmd_audit)

    monitor = commands.add_parser(
        "monitor", help="score drift and reviewer agreement over triage runs, with alerts",
        description="Read triage output folders (RUN_DIR/worklist.csv, and RUN_DIR/decisions.sqlite where the "
        "review app was used; read-only) and report per model and version, per run and per ISO week: studies, "
        "flag rate, the score distribution against the reference (--reference RUN_DIR, else the validation "
        "distribution of the version's model card in --cards: population stability index on fixed reference "
        "bins with a bootstrap interval, Kolmogorov-Smirnov test), and agreement with the reviewers "
        "(accept/reject/correct, Cohen's kappa, overrides) overall and by body part, modality, manufacturer, sex "
        "and age band. Writes REPORT_DIR/monitor.json and REPORT_DIR/report.html; alerts when a limit of "
        "configs/monitor.yaml is "
        "crossed (exit 0 with alerts; 2 when a folder cannot be used, after reporting on the others).",
    )
    monitor.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="a triage output folder")
    monitor.add_argument("--out", required=True, type=Path, metavar="REPORT_DIR", help="where the report goes")
    monitor.add_argument("--reference", type=Path, metavar="RUN_DIR",
                         help="a triage run whose scores are the reference distribution (e.g. the same source's "
                         "validation run); takes the place of the model cards. Without it, each model version "
                         "is compared with its model card's validation score distribution, where --cards holds "
                         "a card of that version evaluated per case")
    monitor.add_argument("--cards", type=Path, metavar="DIR",
                         help="model cards (DIR/<model>.json) giving the default reference (default: model_cards/ "
                         "of this checkout)")
    monitor.add_argument("--limits", type=Path, metavar="YAML",
                         help="alert limits (default: configs/monitor.yaml of this checkout, else the same built-in "
                         "defaults)")
    add_key_file(monitor)
    monitor.set_defaults(func=cmd_monitor)

    adapt = commands.add_parser(
        "adapt", help="a site version of a model: its threshold fitted on reviewed cases, under a locked protocol",
        description="Fit a model's decision threshold to this site's reviewed cases (the reviewer's final call per "
        "finding from each RUN/decisions.sqlite, the score from the worklist beside it) under the predetermined "
        "protocol (configs/adapt_protocol.yaml): a locked share of the findings, chosen by a hash of series UID and "
        "model, is never fitted on and decides acceptance. Only the threshold changes, never the weights. When "
        "accepted, writes MODELS_DIR (adapted spec with a new version, the same weights, adaptation/ record), "
        "signed with the site key, for medassist triage to use as its models folder. Exit 3 when the protocol refuses "
        "(too few cases, or a criterion fails), 2 for unusable input; nothing is written then.",
    )
    adapt.add_argument("--model", required=True, metavar="NAME", help="the model to adapt (e.g. fracture_xray)")
    adapt.add_argument("--review-db", required=True, action="append", dest="review_dbs", type=Path, metavar="DB",
                       help="a triage run's decisions.sqlite (or its folder), beside its worklist.csv (repeatable)")
    adapt.add_argument("--out", required=True, type=Path, metavar="MODELS_DIR",
                       help="the new models folder (must not exist, or be empty)")
    adapt.add_argument("--protocol", type=Path, metavar="YAML",
                       help="the adaptation protocol (default: configs/adapt_protocol.yaml of this checkout, else the "
                       "same built-in defaults)")
    add_key_file(adapt)
    add_models_dir(adapt)
    adapt.set_defaults(func=cmd_adapt)
    return parser


def add_key_file(parser: argparse.ArgumentParser) -> None:
    """--key-file: the site key that signs the decision log (kept outside every output folder)."""
    parser.add_argument("--key-file", type=Path, metavar="FILE",
                        help="site key of the decision log (default: $MEDASSIST_KEY_FILE, else "
                        "~/.config/medassist/site.key; created mode 0600 on first use)")


def add_users_file(parser: argparse.ArgumentParser) -> None:
    """--users-file: the reviewer accounts (kept outside every output folder)."""
    parser.add_argument("--users-file", type=Path, metavar="FILE",
                        help="reviewer accounts (default: $MEDASSIST_USERS_FILE, else review-users.json beside "
                        "the site key)")


def add_pacs_credentials(parser: argparse.ArgumentParser) -> None:
    """--pacs-user and --pacs-password-env (the password never goes on the command line)."""
    parser.add_argument("--pacs-user", metavar="U", help="PACS user (HTTP basic auth)")
    parser.add_argument("--pacs-password-env", metavar="VAR", help="environment variable holding the password")


def pacs_password(args: argparse.Namespace) -> str | None:
    """The PACS password from the named environment variable, if any."""
    if not args.pacs_password_env:
        return None
    from medassist.pacs.dicomweb import password_from_env

    return password_from_env(args.pacs_password_env)


def weights_dir_of(args: argparse.Namespace) -> Path:
    """The models folder: --models-dir, or the shipped one."""
    from medassist.models.registry import WEIGHTS_DIR

    return args.models_dir if args.models_dir is not None else WEIGHTS_DIR


def require_triage_extras(args: argparse.Namespace) -> None:
    """Refuse at once (before any series is scored) when an option needs an extra that is not installed."""
    if args.backend == "ray":
        require_extra("ray", feature="medassist triage --backend ray")
    if args.pacs:
        require_extra("pacs", feature="medassist triage --pacs")
    if args.send:
        require_extra("pacs", feature="medassist triage --send")
    if args.runtime == "onnx":
        require_extra("onnx", feature="medassist triage --runtime onnx")
        if args.backend == "ray":
            raise MedassistError("--runtime onnx is not available with --backend ray (it scores with torch)")


def triage_options(args: argparse.Namespace) -> TriageOptions:
    """The ``TriageOptions`` of a command that triages (``triage``, ``listen``), from its arguments.

    ``listen`` has only --device and --models-dir: its other options keep TriageOptions' defaults,
    and it shows no progress bar. For ``triage``, --series-timeout not given keeps the default
    (DEFAULT_SERIES_TIMEOUT), --runtime not given the default (auto); --runtime and --onnx-dir apply to
    --backend local, --ray-address and --ray-actors to --backend ray (which scores with torch: --runtime
    auto given is dropped, with a warning).
    """
    from medassist.triage.options import TriageOptions

    given: dict = {"device": args.device, "weights_dir": weights_dir_of(args), "progress": False}
    if args.command == "triage":
        given.update(
            batch_size=args.batch_size, num_workers=args.workers,
            modality_override=args.modality.upper() if args.modality else None, progress=not args.quiet,
            explain=args.explain, explain_method=args.explain_method,
        )
        if args.series_timeout is not None:
            given["series_timeout"] = args.series_timeout
        if args.backend == "local":
            given.update(onnx_dir=args.onnx_dir)
            if args.runtime is not None:  # else TriageOptions' default (auto)
                given["runtime"] = args.runtime
        else:
            if args.runtime == "auto":
                logging.getLogger("medassist").warning("--runtime auto: --backend ray scores with torch")
            given.update(ray_address=args.ray_address, actors=args.ray_actors)
    return TriageOptions(**given)


def cmd_triage(args: argparse.Namespace) -> int:
    """``medassist triage``: run_triage, then one summary line without identifiers."""
    require_triage_extras(args)
    from medassist.triage import run_triage

    options = triage_options(args)
    triage = run_triage
    if args.backend == "ray":
        from medassist.triage.ray_backend import run_triage_ray as triage
    password = pacs_password(args)
    if args.pacs:
        from medassist.pacs.dicomweb import triage_from_pacs

        _, summary = triage_from_pacs(
            args.pacs, args.out, username=args.pacs_user, password=password, date_from=args.date_from,
            date_to=args.date_to, modality=args.modality_filter, triage=triage, options=options,
        )
    else:
        summary = triage(args.inputs, args.out, options)
    print(f"medassist triage: {summary.line()}; worklist: {summary.worklist_csv}")
    return send_triage_results(args, password) if args.send else 0


def send_triage_results(args: argparse.Namespace, password: str | None) -> int:
    """``triage --send``: build the results and send them; EXIT_RESULTS_FAILED when any result could
    not be built or sent (each is listed on stderr), else 0."""
    from medassist.pacs.send import send_results

    target = redact_credentials(args.send)
    try:
        made, report = send_results(args.out, args.send, username=args.pacs_user, password=password,
                                    saliency_as=("sc", "seg") if args.send_seg else ("sc",))
    except MedassistError as exc:  # PACS unreachable, or it refused everything: not all was sent
        print(f"medassist: error: results not sent: {redact_credentials(exc)}", file=sys.stderr)
        return EXIT_RESULTS_FAILED
    failed = len(made.problems) + len(report.failed)
    print(f"medassist triage: sent {len(report.stored)} result object(s) to {target}, {failed} failed")
    for problem in made.problems:
        print(f"  not built: {redact_credentials(problem)}", file=sys.stderr)
    for uid, reason in report.failed.items():
        print(f"  not stored: {uid}: {redact_credentials(reason)}", file=sys.stderr)
    return EXIT_RESULTS_FAILED if failed else 0


def listener_limits(args: argparse.Namespace):
    """``ListenerLimits`` from the listen options given (the rest keep their defaults)."""
    from medassist.pacs.guard import MIB, ListenerLimits

    given = {name: getattr(args, name) for name in ("acse_timeout", "dimse_timeout", "network_timeout",
                                                    "max_associations", "max_per_peer")
             if getattr(args, name) is not None}
    if args.max_instance_mb is not None:
        given["max_instance_bytes"] = args.max_instance_mb * MIB
    return ListenerLimits(**given)


def cmd_listen(args: argparse.Namespace) -> int:
    """``medassist listen``: a C-STORE SCP that triages each complete study, until Ctrl-C."""
    from medassist.pacs.guard import tls_server_context
    from medassist.pacs.listener import listen

    if not args.allow_ae and not args.allow_any_ae:
        raise MedassistError("listen: give each sender with --allow-ae AE[@HOST] (repeatable), or --allow-any-ae "
                             "to accept any calling AE title")
    if args.allow_ae and args.allow_any_ae:
        raise MedassistError("listen: --allow-ae and --allow-any-ae exclude each other")
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_ca and not args.tls_cert):
        raise MedassistError("listen: --tls-cert and --tls-key go together (and --tls-ca needs them)")
    require_extra("pacs", feature="medassist listen")
    tls = tls_server_context(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
    listen(args.aet, args.port, args.out, host=args.host, idle_seconds=args.idle_seconds, send_to=args.send,
           send_username=args.pacs_user, send_password=pacs_password(args), allow_ae=args.allow_ae,
           allow_any_ae=args.allow_any_ae, limits=listener_limits(args), tls=tls, options=triage_options(args))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``medassist export --deidentify``: studies and results with identifiers removed."""
    from medassist.dicom_out.deid import export_deidentified

    result = export_deidentified(args.inputs, args.out, results_dir=args.results,
                                 allow_burned_in=args.allow_burned_in)
    print(f"medassist export: {len(result.written)} file(s) written to {args.out}, "
          f"{len(result.problems)} skipped")
    for problem in result.problems:
        print(f"  skipped: {problem}", file=sys.stderr)
    return 0


def cmd_export_model(args: argparse.Namespace) -> int:
    """``medassist export-model NAME... --format F [--out DIR]``: one file (or bundle) per model."""
    from medassist.models.export import export_model
    from medassist.models.registry import spec_by_name

    out = args.out
    if out is None:
        if args.model_format != "onnx":
            raise MedassistError(f"export-model --format {args.model_format} needs --out DIR")
        from medassist.models.onnx_runtime import default_onnx_dir

        out = default_onnx_dir()
    folder = weights_dir_of(args)
    specs = [spec_by_name(name, folder) for name in dict.fromkeys(args.names)]  # every name checked first
    for spec in specs:
        path = export_model(spec, args.model_format, out, folder)
        print(f"medassist export-model: {spec.name} {spec.version} ({args.model_format}, weights "
              f"{spec.sha256[:12]}) -> {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """``medassist train CONFIG``."""
    if not args.config.is_file():
        raise MedassistError(f"{args.config}: no such config file")
    from medassist.models.train import train_from_config

    spec = train_from_config(args.config, device=args.device)
    print(f"medassist train: {spec.name} {spec.version}, threshold {spec.threshold}, "
          f"weights {spec.weights} (sha256 {spec.sha256[:12]})")
    warn_if_unpinned(spec)
    return 0


def warn_if_unpinned(spec: ModelSpec) -> None:
    """After training into the shipped folder: say that the new model is refused until re-pinned."""
    from medassist.models.integrity import SHIPPED_DIR, is_released_file
    from medassist.models.spec import read_spec

    path = SHIPPED_DIR / f"{spec.name}.json"
    if path.is_file() and read_spec(path).sha256 == spec.sha256 and not is_released_file(path):
        print(f"medassist train: {path} is not the pinned release, so medassist refuses it; to ship it, "
              "run: python scripts/pin_models.py (and commit medassist/models/released.py)", file=sys.stderr)


def cmd_review(args: argparse.Namespace) -> int:
    """``medassist review OUT_DIR``: the Streamlit review app, until Ctrl-C."""
    from medassist.review.server import launch

    if (args.tls_cert or args.tls_key) and not args.public:
        raise MedassistError("--tls-cert and --tls-key go with --public")
    return launch(args.out, port=args.port, host=args.host, key_file=args.key_file, users_file=args.users_file,
                  public=args.public, tls_cert=args.tls_cert, tls_key=args.tls_key)


def cmd_review_sr(args: argparse.Namespace) -> int:
    """``medassist review-sr RUN_DIR --db DB --out DIR``: one reviewed SR per decided finding, then counts
    (no identifiers); EXIT_RESULTS_FAILED when some could not be written or sent."""
    organization = (args.organization or os.environ.get(ORGANIZATION_ENV, "")).strip()
    if not organization:
        raise MedassistError(f"review-sr: give --organization NAME (or set {ORGANIZATION_ENV}): the verifying "
                             "organization a verified SR names")
    if bool(args.sign_key) != bool(args.sign_cert):
        raise MedassistError("review-sr: --sign-key and --sign-cert go together")
    require_extra("pacs", feature="medassist review-sr")
    from medassist.dicom_out.reviewed_sr import write_reviewed_srs
    from medassist.dicom_out.signature import Signer

    signer = None
    if args.sign_key:
        password = os.environ.get(SIGN_KEY_PASSWORD_ENV)
        signer = Signer.from_files(args.sign_key, args.sign_cert,
                                   password.encode("utf-8") if password else None)
    made = write_reviewed_srs(args.run, args.db, args.out, verifying_organization=organization,
                              key_file=args.key_file, anchor_file=args.anchor, signer=signer)
    signed = f", signed by {signer.subject}" if signer is not None else ""
    print(f"medassist review-sr: {len(made.written)} reviewed SR(s) written to {args.out}{signed}; skipped "
          f"{made.undecided} undecided finding(s) and {made.not_signed_in} decision(s) not made by a signed-in "
          f"reviewer; {len(made.problems)} failed")
    for problem in made.problems:
        print(f"  not written: {redact_credentials(problem)}", file=sys.stderr)
    failed = len(made.problems)
    if args.send and made.written:
        from medassist.pacs.send import send

        try:
            report = send(args.send, made.written, username=args.pacs_user, password=pacs_password(args))
        except MedassistError as exc:
            print(f"medassist: error: reviewed SRs not sent: {redact_credentials(exc)}", file=sys.stderr)
            return EXIT_RESULTS_FAILED
        print(f"medassist review-sr: sent {len(report.stored)} reviewed SR(s) to {redact_credentials(args.send)}, "
              f"{len(report.failed)} failed")
        for uid, reason in report.failed.items():
            print(f"  not stored: {uid}: {redact_credentials(reason)}", file=sys.stderr)
        failed += len(report.failed)
    return EXIT_RESULTS_FAILED if failed else 0


def read_new_password(from_stdin: bool) -> str:
    """The new account's password: one line from stdin, else asked twice (not echoed)."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        raise MedassistError("the passwords differ; nothing changed")
    return first


def cmd_users_add(args: argparse.Namespace) -> int:
    """``medassist users add NAME``."""
    from medassist.review import accounts

    name = accounts.normalise_name(args.name)  # refuse a bad name before asking for a password
    accounts.password_hasher()  # and refuse before asking when argon2-cffi (the review extra) is missing
    account = accounts.add_user(name, read_new_password(args.password_stdin), args.users_file, replace=args.replace)
    print(f"medassist users: {'password set for' if args.replace else 'added'} {account.name} "
          f"in {accounts.users_path(args.users_file)}")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    """``medassist users list``: one line per account (name, created)."""
    from medassist.review import accounts

    listed = accounts.list_accounts(args.users_file)
    if not listed:
        print(f"no reviewer accounts in {accounts.users_path(args.users_file)}")
    for account in listed:
        print(f"{account.name}  {account.created}")
    return 0


def cmd_users_remove(args: argparse.Namespace) -> int:
    """``medassist users remove NAME``."""
    from medassist.review import accounts

    accounts.remove_user(args.name, args.users_file)
    print(f"medassist users: removed {accounts.normalise_name(args.name)}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """``medassist audit``: model cards, or --verify the review log (exit 1 when it was tampered with)."""
    from medassist.audit import run_audit, verify_review_log

    if args.verify:
        if args.review_db is None:
            raise MedassistError("--verify needs --review-db PATH")
        problems = verify_review_log(args.review_db, key_file=args.key_file, anchor_file=args.anchor)
        for problem in problems:
            print(problem)
        print(f"medassist audit: review log {'intact' if not problems else f'{len(problems)} problem(s)'}")
        return 1 if problems else 0
    written = run_audit(
        models=args.models, eval_images=args.images, eval_dicom=args.dicom, eval_scores=args.scores,
        eval_labels=args.labels, review_db=args.review_db, out_dir=args.out,
        weights_dir=weights_dir_of(args), device=args.device, data_root=args.data_root, eval_limit=args.limit,
    )
    for path in written:
        print(path)
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    """``medassist monitor``: the report, one line per alert (no identifiers); exit 2 when a run folder
    could not be used (the report covers the others)."""
    from medassist.monitor import run_monitor

    result = run_monitor(args.runs, args.out, reference=args.reference, limits_path=args.limits,
                         key_file=args.key_file, cards=args.cards)
    for figures in result.models:
        if figures.reference.scores is None:
            why = ("no --reference, no usable model card of this version; the report says why" if args.reference is None
                   else "the --reference run has no scores of this version")
            print(f"medassist monitor: no reference for {figures.model} {figures.version} ({why}): drift and flag "
                  "rate not compared", file=sys.stderr)
    for alert in result.alerts:
        print(f"ALERT {alert.model} {alert.version} {alert.kind} {alert.metric}: {alert.detail}")
    print(f"medassist monitor: {len(result.runs)} run(s), {len(result.models)} model version(s), "
          f"{len(result.alerts)} alert(s); report: {', '.join(result.written)}")
    for problem in result.problems:
        print(f"medassist: error: {redact_credentials(problem)}", file=sys.stderr)
    return 2 if result.problems else 0


def cmd_adapt(args: argparse.Namespace) -> int:
    """``medassist adapt``: the adapted models folder, or exit 3 with the criterion that refused it."""
    from medassist.adapt import REFUSED_EXIT, AdaptRefused, run_adapt

    try:
        result = run_adapt(args.model, args.review_dbs, args.out, protocol_path=args.protocol,
                           weights_dir=weights_dir_of(args), key_file=args.key_file)
    except AdaptRefused as exc:
        print(f"medassist: error: {redact_credentials(exc)}", file=sys.stderr)
        return REFUSED_EXIT
    counts, acc = result.cases.counts(), result.acceptance
    if counts["n_dropped"]:
        reasons = "; ".join(f"{n} {reason}" for reason, n in counts["dropped"].items())
        print(f"medassist adapt: left out {counts['n_dropped']} decision(s): {reasons}", file=sys.stderr)
    print(f"medassist adapt: {result.model} {result.from_version} -> {result.version}: threshold "
          f"{result.fit.released_threshold:.4f} -> {result.fit.threshold:.4f}; {counts['fit']['n']} fit and "
          f"{counts['locked']['n']} locked cases; locked sensitivity {acc.released.sensitivity:.3f} -> "
          f"{acc.adapted.sensitivity:.3f}, specificity {acc.released.specificity:.3f} -> "
          f"{acc.adapted.specificity:.3f}; accepted, signed -> {result.out_dir}")
    return 0


def scope_text(spec: ModelSpec) -> str:
    """A model's scope in words: modalities, then body parts."""
    parts = ",".join(spec.body_parts) or "any body part"
    if spec.excluded_body_parts:
        parts += " except " + ",".join(spec.excluded_body_parts)
    return f"{','.join(spec.modalities)}; {parts}"


def cmd_models(args: argparse.Namespace) -> int:
    """``medassist models``: one line per shipped model."""
    from medassist.models.registry import shipped_specs

    folder = weights_dir_of(args)
    specs = shipped_specs(folder)
    if not specs:
        print(f"no shipped models in {folder}")
        return 0
    header = ("NAME", "VERSION", "FINDING", "THRESHOLD", "SHA256", "SCOPE")
    lines = [header] + [
        (s.name, s.version, s.finding, f"{s.threshold:.4f}", s.sha256[:12], scope_text(s)) for s in specs
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1])
    return 0


def cmd_models_sign(args: argparse.Namespace) -> int:
    """``medassist models sign --models-dir DIR``: one signature file per model."""
    from medassist.models.integrity import read_signature, sign_models_dir

    for path in sign_models_dir(args.sign_dir, key_file=args.key_file):
        signed = read_signature(path)
        print(f"signed {signed['model']} {signed['version']}: spec {signed['spec_sha256'][:12]}, "
              f"weights {signed['weights_sha256'][:12]}, key {signed['key_id']} -> {path}")
    return 0


@contextlib.contextmanager
def models_trust(args: argparse.Namespace) -> Iterator[None]:
    """--allow-unsigned-models: unsigned models in --models-dir are used (each read warns)."""
    if not getattr(args, "allow_unsigned_models", False):
        yield
        return
    from medassist.models.integrity import unsigned_models_allowed

    with unsigned_models_allowed(args.models_dir):
        yield


class RedactingFilter(logging.Filter):
    """A handler filter that takes credentials out of every record's message (any library's)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_credentials(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


@contextlib.contextmanager
def logging_configured(verbose: int) -> Iterator[None]:
    """Warnings by default; pydicom kept quiet unless -vv (its messages can quote header values);
    credentials redacted from every line the root logger's handlers write.

    Logger levels and handler filters are restored afterwards, so calling ``main`` in-process
    leaves logging as it was.
    """
    import pydicom  # noqa: F401  (importing pydicom resets its logger's level: do it first)

    level = logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(level=logging.WARNING, format="medassist: %(levelname)s: %(message)s", stream=sys.stderr)
    loggers = {"medassist": level, "pydicom": logging.DEBUG if verbose >= 2 else logging.CRITICAL}
    previous = {name: logging.getLogger(name).level for name in loggers}
    for name, value in loggers.items():
        logging.getLogger(name).setLevel(value)
    redacting, handlers = RedactingFilter(), list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(redacting)
    try:
        yield
    finally:
        for name, value in previous.items():
            logging.getLogger(name).setLevel(value)
        for handler in handlers:
            handler.removeFilter(redacting)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "triage" and bool(args.inputs) == bool(args.pacs):
            parser.error("triage: give either INPUT paths or --pacs URL (exactly one of them)")
        if getattr(args, "allow_unsigned_models", False) and args.models_dir is None:
            parser.error("--allow-unsigned-models applies to --models-dir DIR only (shipped models are pinned)")
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    verbose = args.verbose + (1 if args.command == "train" else 0)  # training reports its progress
    try:
        with logging_configured(verbose), models_trust(args):
            return args.func(args)
    except MedassistError as exc:
        print(f"medassist: error: {redact_credentials(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medassist: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
