"""What `import cython` gives fw's compiled modules when Cython is not installed (they then run pure).

The modules that build_compiled.py compiles use Cython's "pure Python mode": their types are in a
`.pxd` beside them, and a few places ask `cython.compiled` to pick the way that is faster in each
build (C stores when compiled, one attrgetter and an unpack when not). Cython's own `cython` module
(its "shadow") answers the same when present; this stand-in covers a machine without it.
"""

compiled = False
long = int
double = float


def locals(**types):  # noqa: A001 - Cython's name
    """`@cython.locals(name=type, ...)`: the types of a function's locals when compiled; nothing here."""
    return lambda function: function
