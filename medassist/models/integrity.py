"""Models are what was released: pinned shipped models, site-signed model folders.

Every spec the registry reads goes through ``trusted_spec``:

* a spec whose sha256 is the one pinned for its name in ``medassist.models.released`` is the
  released model, wherever it lies (a copy of a shipped model is still the released one), and its
  weights must have the pinned sha256 (checked when they are loaded; from the shipped folder only
  the released spec is loaded, ``check_released_spec``);
* in the shipped folder (``medassist/models/weights``) anything else is refused: a shipped model
  that was changed. After re-training a shipped model on purpose, re-pin it (one step:
  ``python scripts/pin_models.py``, then commit ``medassist/models/released.py``);
* in any other folder (``--models-dir``) a spec needs ``NAME.sig`` beside it, written by
  ``medassist models sign``: an HMAC-SHA256, under the site key (``medassist.keys``), of the spec's
  and the weights' sha256. A missing signature is refused unless the folder was allowed unsigned
  (``unsigned_models_allowed``: the CLI's ``--allow-unsigned-models``), which logs a warning each
  time such a spec is read; a signature that does not verify is always refused.

What this stops: someone who can write the models folders but cannot read the site key (or change
the installed code) cannot make medassist use a spec or weights that were not released or signed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from medassist.errors import MedassistError
from medassist.keys import key_id, load_site_key, purpose_key
from medassist.models.spec import ModelSpec, parse_spec

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
PINS_MODULE = Path(__file__).resolve().parent / "released.py"
REPIN_HINT = "if it was re-trained on purpose, re-pin it: python scripts/pin_models.py"
SIGNATURE_FORMAT = "medassist-model-signature/1"
SIGNATURE_PURPOSE = "model-signature"

_unsigned_allowed: set[Path] = set()


class Release(NamedTuple):
    """One pinned model: its version and the sha256 of its spec JSON and its weights file."""

    version: str
    spec_sha256: str
    weights_sha256: str


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def is_shipped_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is the package's shipped models folder."""
    return Path(folder).resolve() == SHIPPED_DIR


def released() -> dict[str, Release]:
    """The pinned models by name (``medassist.models.released.RELEASED``, looked up at each call)."""
    from medassist.models import released as pins_module

    return {name: Release(*pin) for name, pin in pins_module.RELEASED.items()}


# --------------------------------------------------------------------------- reading a spec


def trusted_spec(path: str | Path) -> ModelSpec:
    """The validated spec at ``path`` once it is released (pinned) or signed (see the module doc);
    otherwise MedassistError naming the file and why."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MedassistError(f"{path}: cannot read the model spec ({exc.strerror or exc})") from exc
    digest = sha256_bytes(data)
    spec = parse_spec(data, path)
    pin = released().get(path.stem)
    if pin is not None and pin.spec_sha256 == digest:
        check_pinned_weights(spec, pin, path)
        return spec
    if is_shipped_folder(path.parent):
        raise MedassistError(pin_mismatch(path, digest, pin))
    check_signature(path, digest, spec)
    return spec


def is_released_file(path: str | Path) -> bool:
    """Whether the spec file at ``path`` is byte for byte the one pinned for its name."""
    path = Path(path)
    pin = released().get(path.stem)
    return pin is not None and path.is_file() and sha256_bytes(path.read_bytes()) == pin.spec_sha256


def pin_mismatch(path: Path, digest: str, pin: Release | None) -> str:
    """The refusal of a shipped spec that is not the released one."""
    if pin is None:
        return (f"{path}: not a released model (no pin for {path.stem!r} in medassist/models/released.py), "
                f"refused; {REPIN_HINT}")
    return (f"{path}: sha256 {digest[:16]}... is not the released {path.stem} {pin.version} "
            f"({pin.spec_sha256[:16]}...): the shipped spec was changed and will not be used; {REPIN_HINT}")


def check_pinned_weights(spec: ModelSpec, pin: Release, path: Path) -> None:
    """A pinned spec names the pinned weights (else the pins module itself is inconsistent)."""
    if spec.sha256 != pin.weights_sha256:
        raise MedassistError(f"{path}: names weights {spec.sha256[:16]}..., the release pins "
                             f"{pin.weights_sha256[:16]}...; {REPIN_HINT}")


def check_released_spec(spec: ModelSpec, folder: str | Path) -> None:
    """Before weights are loaded from the shipped folder: ``spec`` is its released spec (not one
    edited in memory or read around ``trusted_spec``), so its sha256 is the pinned weights'."""
    if not is_shipped_folder(folder):
        return
    path = Path(folder) / f"{spec.name}.json"
    if not path.is_file():
        raise MedassistError(f"{path}: {spec.name!r} is not a shipped model, refused; {REPIN_HINT}")
    if trusted_spec(path).to_json() != spec.to_json():
        raise MedassistError(f"{path}: the spec given for {spec.name} is not the released one, refused")


# --------------------------------------------------------------------------- signatures


def signature_path(spec_path: Path) -> Path:
    """Where the signature of a spec lies: ``NAME.sig`` beside ``NAME.json``."""
    return spec_path.with_suffix(".sig")


def signature_message(spec_path: Path, spec_sha256: str, spec: ModelSpec) -> bytes:
    """What a signature covers: the format, the spec file's name and sha256, the weights' name and sha256."""
    fields = (SIGNATURE_FORMAT, spec_path.name, spec_sha256, spec.weights, spec.sha256)
    return "\n".join(fields).encode() + b"\n"


def signature_mac(key: bytes, message: bytes) -> str:
    """HMAC-SHA256 of ``message`` under the site key's model-signature key, hex."""
    return hmac.new(purpose_key(key, SIGNATURE_PURPOSE), message, hashlib.sha256).hexdigest()


def check_signature(spec_path: Path, spec_sha256: str, spec: ModelSpec) -> None:
    """Refuse ``spec_path`` unless its signature verifies under the site key (or, with no
    signature, its folder was allowed unsigned: then warn)."""
    sig_path = signature_path(spec_path)
    if not sig_path.exists():
        if spec_path.parent.resolve() in _unsigned_allowed:
            log.warning("%s: model %s %s is NOT signed; it is used only because unsigned models were "
                        "allowed (--allow-unsigned-models)", spec_path, spec.name, spec.version)
            return
        raise MedassistError(
            f"{spec_path}: model {spec.name} is not signed ({sig_path.name} missing), refused; sign the "
            f"folder with the site key: medassist models sign --models-dir {spec_path.parent} "
            "(or pass --allow-unsigned-models to use it anyway)")
    signed = read_signature(sig_path)
    try:
        key = load_site_key(create=False)
    except MedassistError as exc:
        raise MedassistError(f"{sig_path}: cannot check the signature: {exc}") from exc
    if signed.get("key_id") != key_id(key):
        raise MedassistError(f"{sig_path}: signed with another key ({signed.get('key_id')!r}, the site key is "
                             f"{key_id(key)}), refused")
    expected = signature_mac(key, signature_message(spec_path, spec_sha256, spec))
    if not hmac.compare_digest(str(signed.get("mac", "")), expected):
        raise MedassistError(
            f"{sig_path}: the signature does not match {spec_path.name} (sha256 {spec_sha256[:16]}..., signed "
            f"{str(signed.get('spec_sha256', ''))[:16]}...) and its weights: the model was changed after it "
            "was signed and will not be used")


def read_signature(sig_path: Path) -> dict:
    """A signature file's fields; an unreadable or malformed file raises MedassistError."""
    try:
        signed = json.loads(sig_path.read_text())
    except (OSError, ValueError) as exc:
        raise MedassistError(f"{sig_path}: not a model signature ({exc})") from exc
    if not isinstance(signed, dict) or signed.get("format") != SIGNATURE_FORMAT:
        raise MedassistError(f"{sig_path}: not a model signature ({SIGNATURE_FORMAT} expected)")
    return signed


def sign_model(spec_path: Path, key: bytes) -> Path:
    """Write ``NAME.sig`` for the spec at ``spec_path`` after checking the spec's values and that
    its weights match its sha256 (a mismatch is never signed); returns the signature's path."""
    data = spec_path.read_bytes()
    spec_sha256, spec = sha256_bytes(data), parse_spec(data, spec_path)
    weights = spec_path.parent / spec.weights
    try:
        weights_sha256 = sha256_bytes(weights.read_bytes())
    except OSError as exc:
        raise MedassistError(f"{weights}: weights of model {spec.name} cannot be read ({exc.strerror or exc})") from exc
    if weights_sha256 != spec.sha256:
        raise MedassistError(f"{weights}: sha256 {weights_sha256[:16]}... is not the spec's {spec.sha256[:16]}...; "
                             "not signed")
    signed = {
        "format": SIGNATURE_FORMAT, "model": spec.name, "version": spec.version,
        "spec": spec_path.name, "spec_sha256": spec_sha256, "weights": spec.weights, "weights_sha256": weights_sha256,
        "algorithm": "HMAC-SHA256", "key_id": key_id(key),
        "mac": signature_mac(key, signature_message(spec_path, spec_sha256, spec)),
    }
    sig_path = signature_path(spec_path)
    sig_path.write_text(json.dumps(signed, indent=2) + "\n")
    return sig_path


def sign_models_dir(folder: str | Path, key_file: str | Path | None = None) -> list[Path]:
    """Sign every spec in ``folder`` with the site key (``key_file``, default the site's, created on
    first use); the shipped folder is pinned, not signed (MedassistError)."""
    folder = Path(folder)
    if is_shipped_folder(folder):
        raise MedassistError(f"{folder}: the shipped models are pinned, not signed ({REPIN_HINT})")
    specs = sorted(folder.glob("*.json"))
    if not specs:
        raise MedassistError(f"{folder}: no model spec JSON files to sign")
    key = load_site_key(key_file, create=True)
    return [sign_model(path, key) for path in specs]


@contextlib.contextmanager
def unsigned_models_allowed(folder: str | Path) -> Iterator[None]:
    """Within the block, specs without a signature in ``folder`` are used, with a warning each time."""
    resolved = Path(folder).resolve()
    added = resolved not in _unsigned_allowed
    _unsigned_allowed.add(resolved)
    try:
        yield
    finally:
        if added:
            _unsigned_allowed.discard(resolved)


# --------------------------------------------------------------------------- pins


def pins_from_folder(folder: str | Path = SHIPPED_DIR) -> dict[str, Release]:
    """The pins of the models in ``folder`` as they are on disk, after checking each spec's values
    and that its weights match its sha256 (what ``scripts/pin_models.py`` writes)."""
    pins = {}
    for path in sorted(Path(folder).glob("*.json")):
        data = path.read_bytes()
        spec = parse_spec(data, path)
        if spec.name != path.stem:
            raise MedassistError(f"{path}: names model {spec.name!r}; a shipped spec is NAME.json")
        weights = path.parent / spec.weights
        weights_sha256 = sha256_bytes(weights.read_bytes()) if weights.is_file() else "missing"
        if weights_sha256 != spec.sha256:
            raise MedassistError(f"{weights}: sha256 {weights_sha256[:16]} is not the spec's "
                                 f"{spec.sha256[:16]}...; fix the model before pinning it")
        pins[path.stem] = Release(spec.version, sha256_bytes(data), weights_sha256)
    return pins


PINS_HEADER = '''"""The released models: the sha256 of each shipped model's spec JSON and weights file.

GENERATED by ``python scripts/pin_models.py`` from ``medassist/models/weights/``; do not edit by
hand. A shipped spec or weights file whose digest is not pinned here is refused
(``medassist.models.integrity``). After re-training or replacing a shipped model, run the script
once and commit this file with the new weights (tests/models/test_integrity.py fails until then).
"""

# name: (version, spec sha256, weights sha256)
RELEASED: dict[str, tuple[str, str, str]] = {
'''


def render_pins(pins: dict[str, Release]) -> str:
    """The source of ``medassist/models/released.py`` for ``pins``."""
    def text(value: str) -> str:
        return json.dumps(value)  # a double-quoted Python string literal for these plain values

    lines = [f"    {text(name)}: ({text(pin.version)}, {text(pin.spec_sha256)},\n"
             f"        {text(pin.weights_sha256)}),\n" for name, pin in sorted(pins.items())]
    return PINS_HEADER + "".join(lines) + "}\n"
