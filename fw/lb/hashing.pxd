# Cython types for fw/lb/hashing.py (build_compiled.py; the .py runs unchanged without them).
cpdef object flow_hash(bytes src, object sport)
