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
    #define FW_ROTR64(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
    #define FW_G(r, i, a, b, c, d) do { \
        a = a + b + m[fw_blake2b_sigma[r][2 * i]]; d = FW_ROTR64(d ^ a, 32); c = c + d; b = FW_ROTR64(b ^ c, 24); \
        a = a + b + m[fw_blake2b_sigma[r][2 * i + 1]]; d = FW_ROTR64(d ^ a, 16); c = c + d; b = FW_ROTR64(b ^ c, 63); \
    } while (0)
    #define FW_ROUND(r) do { \
        FW_G(r, 0, v0, v4, v8, v12); FW_G(r, 1, v1, v5, v9, v13); FW_G(r, 2, v2, v6, v10, v14); \
        FW_G(r, 3, v3, v7, v11, v15); FW_G(r, 4, v0, v5, v10, v15); FW_G(r, 5, v1, v6, v11, v12); \
        FW_G(r, 6, v2, v7, v8, v13); FW_G(r, 7, v3, v4, v9, v14); \
    } while (0)
    /* RFC 7693 3.2's F of the last (and only) block `m`, `size` bytes counted, for a digest of 8
       bytes without key (parameter block 0x01010008) and the personalisation words p0, p1: the
       digest's word h0 ^ v0 ^ v8. The rounds written out: sigma's indices are constants and
       v0..v15 stay in registers. */
    static unsigned long long fw_blake2b_last(const unsigned long long *m, unsigned long long size,
                                              unsigned long long p0, unsigned long long p1) {
        const unsigned long long h0 = fw_blake2b_iv[0] ^ 0x01010008ULL;
        unsigned long long v0 = h0, v1 = fw_blake2b_iv[1], v2 = fw_blake2b_iv[2], v3 = fw_blake2b_iv[3];
        unsigned long long v4 = fw_blake2b_iv[4], v5 = fw_blake2b_iv[5];
        unsigned long long v6 = fw_blake2b_iv[6] ^ p0, v7 = fw_blake2b_iv[7] ^ p1;
        unsigned long long v8 = fw_blake2b_iv[0], v9 = fw_blake2b_iv[1], v10 = fw_blake2b_iv[2];
        unsigned long long v11 = fw_blake2b_iv[3], v12 = fw_blake2b_iv[4] ^ size, v13 = fw_blake2b_iv[5];
        unsigned long long v14 = ~fw_blake2b_iv[6], v15 = fw_blake2b_iv[7];
        FW_ROUND(0); FW_ROUND(1); FW_ROUND(2); FW_ROUND(3); FW_ROUND(4); FW_ROUND(5);
        FW_ROUND(6); FW_ROUND(7); FW_ROUND(8); FW_ROUND(9); FW_ROUND(10); FW_ROUND(11);
        return h0 ^ v0 ^ v8;
    }
    """
    uint64_t fw_blake2b_last(const uint64_t *m, uint64_t size, uint64_t p0, uint64_t p1) nogil


cdef inline uint64_t _c_blake2b64(const unsigned char *data, Py_ssize_t size,
                                  const unsigned char *person, Py_ssize_t person_size) noexcept nogil:
    """BLAKE2b-64 of `size` <= 128 bytes with a personalisation of at most 16 bytes (zero-padded,
    as hashlib pads it), read as a little-endian number: the one compression of the last block
    (RFC 7693 3.2, counter `size`, final flag set), of which the first output word is the digest."""
    cdef uint64_t m[16]
    cdef unsigned char padded[16]
    cdef uint64_t p[2]
    memset(m, 0, sizeof(m))
    memcpy(m, data, size)  # the words are little-endian: x86-64's order (a big-endian machine swaps)
    memset(padded, 0, 16)
    memcpy(padded, person, person_size)
    memcpy(p, padded, 16)
    return fw_blake2b_last(m, <uint64_t>size, p[0], p[1])


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
