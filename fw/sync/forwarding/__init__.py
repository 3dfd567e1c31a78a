"""Owner forwarding (`fw run --sync ... --forward-to-owner`): a packet of a session that another node
owns goes to that node over the sync link, in one authenticated UDP datagram (docs/forwarding.md).

How it is cut:
- `wire`: the datagram format, the forwarding key (derived from the sync key), sealing (pure);
- `gate`: what the receiving side accepts: size, format, known sender, RFC 4303 replay window,
  HMAC tag, age, per-sender token buckets; each refusal counted by reason (pure);
- `endpoint`: the non-blocking UDP sockets (SO_MARK) for the daemon's poll loop: Receiver, Sender;
- `directory`: each node's listen address, published in Redis and read by its peers;
- `owner`: where a packet is decided (here or at its owner) and whose claim to a session wins;
- `report`: the `fw stats` line and the EVE anomaly event of a refused datagram;
- `node`: all of it assembled for one node (what the daemon's loop will hold), the default listen
  address (our side of the way to Redis).
GSO super-packets are split before they go by fw.packet.gso.
"""

from fw.sync.forwarding.gate import REASONS, Gate, Limits, Refused
from fw.sync.forwarding.wire import OVERHEAD_MAX, Datagram, Sealer, forwarding_key

__all__ = ["OVERHEAD_MAX", "REASONS", "Datagram", "Gate", "Limits", "Refused", "Sealer", "forwarding_key"]
