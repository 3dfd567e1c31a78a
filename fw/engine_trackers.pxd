# Types for the compiled build of engine_trackers.py (build_compiled.py; Cython's pure-Python mode):
# `datagram`, every UDP packet's path (the live bench's small-packet flood), reads and writes the
# session's C fields directly, as the engine's TCP fast path does.
import cython
from fw.conntrack.table cimport Extra, Profile, Session
from fw.decision cimport Decision
from fw.packet.parse cimport Packet


@cython.locals(session=Session, side=long, deadline=double, decision=Decision, sessions=dict, extra=Extra,
               profile=Profile, timeout=double, scale=double)
cpdef datagram(engine, Packet pkt, sport, dport, double now, iif, oif)
