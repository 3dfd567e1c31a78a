"""The TFTP ALG (`alg: tftp` on a UDP rule), as Linux's nf_conntrack_tftp.

How it works. TFTP (RFC 1350) asks on the server's port 69, and the server answers from a new port
of its own to the client's port: a flow no rule allowed. Each read or write request (opcode 1 RRQ,
2 WRQ) the client sends on its control session opens one expectation: a UDP session from the
server's address, any source port, to the client's address and port. The engine admits it as
`related:tftp`, for `tftp_expectation` seconds (300) after the last request; the transfer is then
an ordinary UDP session (DATA/ACK both ways), linked to its control session.

With NAT (peers.translated) the expectation names the ends as the server sees them, as the kernel
uses the reply tuple. Datagrams other than requests, and anything from the server on the control
session, open nothing (the kernel's helper ignores them too); a request cut before its opcode is
refused as `malformed` (logged as a `tftp` event, counted).
"""

from __future__ import annotations

from fw.alg.base import AlgSpec, Expectation, Refusal, shorten

FORMAT_VERSION = 1
UDP = 17
REQUESTS = {1: "RRQ", 2: "WRQ"}  # RFC 1350 opcodes that open a transfer


class TftpAlg:
    """Per-control-session TFTP state: none but the peers; `feed` turns requests into expectations."""

    name = "tftp"
    SPEC: AlgSpec  # set below the class
    __slots__ = ("family", "client", "server", "peers", "requests")

    def __init__(self, family: int, client: bytes, server: bytes) -> None:
        self.family = family
        self.client = client
        self.server = server
        self.peers = None  # fw.alg.Peers, set by AlgSpec.create and on restore (the client's port)
        self.requests = 0

    def feed(self, from_client: bool, seq, payload: bytes) -> list[Expectation | Refusal]:
        """One datagram of the control session (seq is None: UDP)."""
        if not from_client or self.peers is None:
            return []
        if len(payload) < 2:
            return [Refusal("malformed", "?", "datagram shorter than an opcode: " + shorten(payload))]
        command = REQUESTS.get(int.from_bytes(payload[:2], "big"))
        if command is None:
            return []
        self.requests += 1
        ends = self.peers.outside
        return [Expectation(self.family, ends.server, ends.client, ends.client_port, UDP, command)]

    @property
    def counters(self) -> dict[str, int]:
        return {"requests": self.requests}

    def to_dict(self) -> dict:
        return {"alg": self.name, "version": FORMAT_VERSION, "family": self.family, "client": self.client.hex(),
                "server": self.server.hex(), "requests": self.requests}

    @classmethod
    def from_dict(cls, d: dict) -> TftpAlg:
        if d.get("alg") != cls.name or d.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a tftp ALG state of version {FORMAT_VERSION}")
        alg = cls(int(d["family"]), bytes.fromhex(d["client"]), bytes.fromhex(d["server"]))
        alg.requests = int(d.get("requests", 0))
        return alg

    def __repr__(self) -> str:
        return f"TftpAlg(requests={self.requests})"


TftpAlg.SPEC = AlgSpec(name="tftp", proto=UDP, ports=(69,), timeout_key="tftp_expectation", default_timeout=300,
                       reason="related:tftp", event_type="tftp", cls=TftpAlg)
