"""Optional dependencies: which extra provides which package, and the one gate that imports them.

``pip install medassist`` is the core: ingest, preprocessing, models, saliency, triage, audit and
the de-identified export. Each extra (pyproject.toml) adds one feature set:

========  =========================================================  ===============================
extra     modules (distributions)                                    what needs them
========  =========================================================  ===============================
review    streamlit, argon2 (argon2-cffi)                            ``medassist review``, ``users``
pacs      pynetdicom, dicomweb_client, requests, highdicom           ``listen``, ``triage --pacs``,
                                                                     ``--send`` (SR, SC, SEG)
ray       ray (ray[data])                                            ``triage --backend ray``
codecs    pylibjpeg, libjpeg, openjpeg, rle (pylibjpeg-*), gdcm      compressed DICOM transfer
          (python-gdcm)                                              syntaxes Pillow cannot decode
onnx      onnx, onnxruntime                                          ``export-model --format onnx``,
                                                                     ``triage --runtime onnx|auto``
========  =========================================================  ===============================

``require(module, extra=, feature=)`` imports and returns a module, or raises ``MissingDependency``
(a ``MedassistError``: the CLI prints it and exits 2) naming the package, the feature and the
command that installs it. ``require_extra(extra, feature=)`` checks a whole extra without importing
anything, for commands that refuse early (before a long triage). Core modules never import an
optional package at module level; the modules that exist only for an extra (the SR/SC/SEG writers)
import it through ``require`` at their top.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from types import ModuleType

from medassist.errors import MedassistError

# extra -> the top-level modules it provides (what ``require_extra`` checks)
EXTRAS: dict[str, tuple[str, ...]] = {
    "review": ("streamlit", "argon2"),
    "pacs": ("pynetdicom", "dicomweb_client", "requests", "highdicom"),
    "ray": ("ray",),
    "codecs": ("pylibjpeg", "libjpeg", "openjpeg", "rle", "gdcm"),
    "onnx": ("onnx", "onnxruntime"),
}

# top-level module -> the distribution pip installs it from (for messages)
DISTRIBUTIONS: dict[str, str] = {
    "streamlit": "streamlit",
    "argon2": "argon2-cffi",
    "pynetdicom": "pynetdicom",
    "dicomweb_client": "dicomweb-client",
    "requests": "requests",
    "highdicom": "highdicom",
    "ray": "ray[data]",
    "pylibjpeg": "pylibjpeg",
    "libjpeg": "pylibjpeg-libjpeg",
    "openjpeg": "pylibjpeg-openjpeg",
    "rle": "pylibjpeg-rle",
    "gdcm": "python-gdcm",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
}


def install_command(extra: str) -> str:
    """The command that installs ``extra``: ``pip install 'medassist[extra]'``."""
    _check_extra(extra)
    return f"pip install 'medassist[{extra}]'"


def distribution(module: str) -> str:
    """The pip name of a module's package ('argon2' -> 'argon2-cffi'); the module name when unknown."""
    top = module.partition(".")[0]
    return DISTRIBUTIONS.get(top, top)


class MissingDependency(MedassistError):
    """An optional package a feature needs is not installed (or does not import).

    ``modules``: the missing top-level modules; ``extra``: the extra that installs them.
    """

    def __init__(self, modules: Sequence[str], *, extra: str, feature: str, detail: str = "") -> None:
        self.modules = tuple(modules)
        self.extra = extra
        self.feature = feature
        self.message = missing_message(self.modules, extra=extra, feature=feature, detail=detail)
        super().__init__(self.message)


def missing_message(modules: Sequence[str], *, extra: str, feature: str, detail: str = "") -> str:
    """'<feature> needs <packages> (not installed): pip install 'medassist[<extra>]''."""
    names = ", ".join(dict.fromkeys(distribution(m) for m in modules))
    why = detail or "not installed"
    return f"{feature} needs {names} ({why}): {install_command(extra)}"


def _check_extra(extra: str) -> None:
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; the extras are {sorted(EXTRAS)}")


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import and return ``module`` (dotted names too), or raise ``MissingDependency``.

    A package that is installed but fails to import because something it needs is missing is
    reported the same way, with that import error as the reason.
    """
    _check_extra(extra)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing_name = (exc.name or "").partition(".")[0]
        top = module.partition(".")[0]
        detail = "" if missing_name in ("", top) else f"it does not import: {exc}"
        raise MissingDependency([top], extra=extra, feature=feature, detail=detail) from exc


def is_installed(module: str) -> bool:
    """Whether the top-level ``module`` can be found, without importing it."""
    try:
        return importlib.util.find_spec(module.partition(".")[0]) is not None
    except (ImportError, ValueError):  # a finder refusing it; a module in sys.modules set to None
        return False


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that are not installed (empty when the extra is complete)."""
    _check_extra(extra)
    return [m for m in EXTRAS[extra] if not is_installed(m)]


def require_extra(extra: str, *, feature: str) -> None:
    """Raise ``MissingDependency`` naming every module of ``extra`` that is not installed."""
    absent = missing(extra)
    if absent:
        raise MissingDependency(absent, extra=extra, feature=feature)
