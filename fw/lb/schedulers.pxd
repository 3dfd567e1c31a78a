# Cython types for fw/lb/schedulers.py (build_compiled.py; the .py runs unchanged without them):
# `maglev_pick`, which the engine's load balancer calls directly (fw/engine_lb.pxd cimports it): the
# flow's hash a C number (fw/lb/hashing.pxd), the table's slot read from its array's C ints.
cimport cython
from cpython cimport array
from libc.stdint cimport uint64_t
from fw.lb.servers cimport RealServer
from fw.lb.hashing cimport flow_hash, _c_flow_hash
from fw.lb.maglev cimport MaglevTable


@cython.locals(server=RealServer, slot=Py_ssize_t, table=MaglevTable, by_name=dict)
cpdef object maglev_pick(object maglev, bytes src, object sport, dict by_name=*)


cdef inline Py_ssize_t _c_flow_slot(bytes src, long sport, Py_ssize_t size) noexcept:
    """`flow_hash(src, sport) % size` in C."""
    return <Py_ssize_t>(_c_flow_hash(src, sport) % <uint64_t>size)


cdef inline int _c_slot(array.array slots, Py_ssize_t slot) noexcept:
    """`slots[slot]` of a table's array of C ints ("i"), without an int object."""
    return slots.data.as_ints[slot]
