"""Site adaptation under a predetermined change-control protocol (``medassist adapt``).

protocol.py (what may change, acceptance, minimums: configs/adapt_protocol.yaml), data.py (reviewed
cases from the decision logs and their worklists, the locked split), fit.py (threshold fit,
acceptance criteria), run.py (the command: refuse, or write a signed models folder).
"""

from medassist.adapt.protocol import Protocol, load_protocol, parse_protocol
from medassist.adapt.run import REFUSED_EXIT, AdaptRefused, AdaptResult, run_adapt

__all__ = ["REFUSED_EXIT", "AdaptRefused", "AdaptResult", "Protocol", "load_protocol", "parse_protocol", "run_adapt"]
