"""Application-layer gateways: pure per-session state fed the payload of a control session.

An ALG is built by the engine when a rule with `alg: NAME` opens a session:
`ALGS[name](family, client, server)`; `feed(from_client, seq, payload)` returns Expectations (admit
one data session) and Refusals (log and count); `to_dict`/`from_dict` carry it in snapshots and HA
sync. ALGs read no clock and do no I/O: when an expectation expires is the engine's business.
"""

from fw.alg.base import Expectation, Refusal
from fw.alg.ftp import FtpAlg

ALGS = {"ftp": FtpAlg}

__all__ = ["ALGS", "Expectation", "FtpAlg", "Refusal"]
