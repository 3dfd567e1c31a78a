"""Application-layer gateways: pure per-session state fed the payload of a control session.

One registry, `ALGS` (name -> AlgSpec, fw/alg/base.py): the protocol, well-known ports, timeout key,
reason and event type of each ALG, and its class. The engine builds an ALG when a rule with
`alg: NAME` opens a session (`ALGS[name].create(peers)`), feeds it the payload of that session's
packets in both directions (TCP and UDP alike), keeps the expectations it returns (fw/engine.py's
expectations, generic over protocols) and logs its refusals under the spec's event type. The policy
takes the names, protocols and timeout keys from here. Adding an ALG: a module with its class and
SPEC, one line below (docs/design.md, "Adding an ALG").
"""

from fw.alg.base import AlgSpec, Expectation, Peers, Refusal
from fw.alg.ftp import FtpAlg
from fw.alg.tftp import TftpAlg

ALGS: dict[str, AlgSpec] = {spec.name: spec for spec in (FtpAlg.SPEC, TftpAlg.SPEC)}

__all__ = ["ALGS", "AlgSpec", "Expectation", "FtpAlg", "Peers", "Refusal", "TftpAlg"]
