# Cython types for fw/lb/hashing.py (build_compiled.py; the .py runs unchanged without them), and
# the compiled build's BLAKE2b (RFC 7693) of one block: a message of at most 128 bytes, an 8-byte
# digest, no key, a 16-byte personalisation: hashlib's `blake2b(data, digest_size=8, person=p)`
# exactly (tests/test_lb_hashing.py compares the two), without a hasher object, a digest bytes
# object or int.from_bytes. `_c_flow_hash` is the flow's hash as a C number: Maglev's pick
# (fw/lb/schedulers.pxd cimports it) takes its slot without a Python integer.
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy, memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

cpdef object flow_hash(bytes src, object sport)


cdef extern from *:
    """
    static const unsigned char fw_blake2b_sigma[12][16] = {
        {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
        {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
        {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
        {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
        {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
        {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
        {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
        {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
        {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
        {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
        {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
        {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    };
    static const unsigned long long fw_blake2b_iv[8] = {
        0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
        0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
    };
    """
    const unsigned char fw_blake2b_sigma[12][16]
    const unsigned long long fw_blake2b_iv[8]


cdef inline uint64_t _rotr(uint64_t x, int n) noexcept nogil:
    return (x >> n) | (x << (64 - n))


cdef inline void _g(uint64_t *v, int a, int b, int c, int d, uint64_t x, uint64_t y) noexcept nogil:
    """RFC 7693 3.1's mixing function G."""
    v[a] = v[a] + v[b] + x
    v[d] = _rotr(v[d] ^ v[a], 32)
    v[c] = v[c] + v[d]
    v[b] = _rotr(v[b] ^ v[c], 24)
    v[a] = v[a] + v[b] + y
    v[d] = _rotr(v[d] ^ v[a], 16)
    v[c] = v[c] + v[d]
    v[b] = _rotr(v[b] ^ v[c], 63)


cdef inline uint64_t _c_blake2b64(const unsigned char *data, Py_ssize_t size,
                                  const unsigned char *person, Py_ssize_t person_size) noexcept nogil:
    """BLAKE2b-64 of `size` <= 128 bytes with a personalisation of at most 16 bytes (zero-padded,
    as hashlib pads it), read as a little-endian number: the one compression of the last block
    (RFC 7693 3.2, counter `size`, final flag set), of which the first output word is the digest."""
    cdef uint64_t m[16]
    cdef uint64_t v[16]
    cdef uint64_t h0
    cdef unsigned char padded[16]
    cdef uint64_t p[2]
    cdef const unsigned char *s
    cdef int i, r
    memset(m, 0, sizeof(m))
    memcpy(m, data, size)  # the words are little-endian: x86-64's order (a big-endian machine swaps)
    memset(padded, 0, 16)
    memcpy(padded, person, person_size)
    memcpy(p, padded, 16)
    for i in range(8):
        v[i] = fw_blake2b_iv[i]
        v[i + 8] = fw_blake2b_iv[i]
    v[0] ^= 0x01010008  # the parameter block: digest 8 bytes, no key, fanout 1, depth 1
    v[6] ^= p[0]
    v[7] ^= p[1]
    h0 = v[0]
    v[12] ^= <uint64_t>size  # the byte counter (low word; the high one stays 0)
    v[14] = ~v[14]  # the last block
    for r in range(12):
        s = fw_blake2b_sigma[r]
        _g(v, 0, 4, 8, 12, m[s[0]], m[s[1]])
        _g(v, 1, 5, 9, 13, m[s[2]], m[s[3]])
        _g(v, 2, 6, 10, 14, m[s[4]], m[s[5]])
        _g(v, 3, 7, 11, 15, m[s[6]], m[s[7]])
        _g(v, 0, 5, 10, 15, m[s[8]], m[s[9]])
        _g(v, 1, 6, 11, 12, m[s[10]], m[s[11]])
        _g(v, 2, 7, 8, 13, m[s[12]], m[s[13]])
        _g(v, 3, 4, 9, 14, m[s[14]], m[s[15]])
    return h0 ^ v[0] ^ v[8]


cdef inline uint64_t _c_flow_hash(bytes src, long sport) noexcept:
    """`flow_hash(src, sport)` as a C number (a source of more than 126 bytes, which no address is,
    goes through hashlib)."""
    cdef unsigned char key[128]
    cdef Py_ssize_t size = PyBytes_GET_SIZE(src)
    if size > 126:
        return flow_hash(src, sport)
    memcpy(key, PyBytes_AS_STRING(src), size)
    key[size] = <uint8_t>(sport >> 8)
    key[size + 1] = <uint8_t>sport
    return _c_blake2b64(key, size + 2, <const unsigned char *>b"fw-lb-flow", 10)
