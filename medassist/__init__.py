"""medassist: a medical-imaging diagnostic assistant with a human in the loop.

Data flows one way, one subpackage per stage:
ingest -> preprocess -> models -> explain -> triage -> review -> audit.
"""

__version__ = "0.1.0"
