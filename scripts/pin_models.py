"""Pin the shipped models: rewrite medassist/models/released.py from medassist/models/weights/.

The one step after re-training or replacing a shipped model (spec JSON and weights):

    .venv/bin/python scripts/pin_models.py            # rewrite the pins, print them
    .venv/bin/python scripts/pin_models.py --check    # exit 1 when the pins are not the files

then commit medassist/models/released.py with the new model files. Until then medassist refuses
the changed model (medassist.models.integrity) and tests/models/test_integrity.py fails.
"""

from __future__ import annotations

import argparse
import sys

from medassist.errors import MedassistError
from medassist.models.integrity import PINS_MODULE, SHIPPED_DIR, pins_from_folder, render_pins


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, compare) the pins module; 0 when it matches the files afterwards."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the pins are stale")
    args = parser.parse_args(argv)
    try:
        pins = pins_from_folder(SHIPPED_DIR)
    except MedassistError as exc:
        print(f"pin_models: error: {exc}", file=sys.stderr)
        return 2
    source = render_pins(pins)
    current = PINS_MODULE.read_text() if PINS_MODULE.is_file() else ""
    if args.check:
        stale = current != source
        print(f"pin_models: {PINS_MODULE} is {'STALE: run scripts/pin_models.py' if stale else 'up to date'}")
        return 1 if stale else 0
    if current != source:
        PINS_MODULE.write_text(source)
    for name, pin in pins.items():
        print(f"pinned {name} {pin.version}: spec {pin.spec_sha256[:16]}..., weights {pin.weights_sha256[:16]}...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
