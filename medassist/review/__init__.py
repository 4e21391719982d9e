"""review stage: a person decides every finding the models proposed.

Map of the package:

* ``store``  - append-only decisions in SQLite (``OUT/decisions.sqlite``), chained with a keyed MAC
  and anchored outside the output folder (``keys``: the site key; ``anchor``: the chain's head);
* ``logic``  - what the app does, as plain functions: worklist, priority, filters, windowing,
  saliency overlay as a separate layer, zoom, the decoded-image cache;
* ``server`` - ``launch(out_dir, port=, host=)`` runs ``apps/streamlit_viewer.py`` on loopback;
* ``accounts`` - reviewer accounts (Argon2id hashes in a users file beside the site key);
  ``throttle`` - failed sign-ins slowed down per account and per client; ``session`` - signed
  session cookies; ``proxy`` - ``review --public``: nginx with TLS and a sign-in in front.
"""

from medassist.review.store import (
    DecisionStore,
    default_db_path,
    open_store,
    verify_chain,
)

__all__ = ["DecisionStore", "default_db_path", "open_store", "verify_chain", "launch"]


def launch(out_dir, *, port: int | None = None, host: str = "127.0.0.1", key_file=None, **options) -> int:
    """Run the review app (see ``medassist.review.server.launch``)."""
    from medassist.review.server import launch as _launch

    return _launch(out_dir, port=port, host=host, key_file=key_file, **options)
