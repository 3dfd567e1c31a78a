"""fw: a stateful packet-inspection firewall for Linux on NFQUEUE.

The core (packet, conntrack, policy, alg, engine) is sans-IO: bytes and time in, a Decision out.
Drivers (pcap replay, the NFQUEUE daemon) do the I/O. See docs/design.md.
"""

__version__ = "0.1.0"
