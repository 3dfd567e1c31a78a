# The types of fw/engine.py when compiled (build_compiled.py; Cython's "pure Python mode": engine.py
# stays ordinary Python and runs as it is with FW_PURE=1). The hot paths' locals are typed with
# `@cython.locals` in engine.py (methods of a Python class); the classes they name come from here.
from fw.conntrack.table cimport Extra, Session, TcpSession, untrack
from fw.engine_nat cimport Binding, Nat
from fw.nat.rewrite cimport Translation
from fw.packet.parse cimport Packet, parse
from fw.conntrack.tcp cimport tcp_update, timeout_key as tcp_timeout_key
from fw.decision cimport Decision, SessionOpened
from fw.engine_trackers cimport datagram


# `counter[key] += 1` with the dict's own C calls, called in C (no Python call per count).
cdef void _count(object counter, object key)
