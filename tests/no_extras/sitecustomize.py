"""Make this Python behave as if no extra of medassist were installed (``pip install medassist`` only).

Put this folder first on PYTHONPATH: Python imports ``sitecustomize`` at start-up, in the process and
in every Python process it starts (decode workers, subprocesses), and this one puts a finder at the
front of ``sys.meta_path`` that refuses the packages of the extras (review, pacs, ray, codecs, onnx) with
``ModuleNotFoundError``, as an interpreter without them would. ``MEDASSIST_BLOCKED_MODULES`` (comma
separated top-level names) replaces the default list. Used by tests/test_optional.py.
"""

from __future__ import annotations

import os
import sys

DEFAULT_BLOCKED = (
    "streamlit", "argon2",                                           # review
    "pynetdicom", "dicomweb_client", "highdicom", "requests",        # pacs
    "ray",                                                           # ray
    "pylibjpeg", "libjpeg", "openjpeg", "rle", "gdcm", "jpeg_ls",    # codecs (jpeg_ls: pyjpegls, via highdicom)
    "onnx", "onnxruntime",                                           # onnx
)


class ExtrasBlocker:
    """A meta path finder that refuses the blocked top-level modules and everything under them."""

    def __init__(self, blocked):
        self.blocked = frozenset(blocked)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked: not installed here)", name=fullname)
        return None  # the other finders decide

    def find_module(self, fullname, path=None):  # pragma: no cover - only pre-3.12 importers call this
        return None


_names = os.environ.get("MEDASSIST_BLOCKED_MODULES")
BLOCKED = tuple(n.strip() for n in _names.split(",") if n.strip()) if _names is not None else DEFAULT_BLOCKED
sys.meta_path.insert(0, ExtrasBlocker(BLOCKED))
