"""Network address translation: the pure pieces the engine uses to translate sessions.

`rewrite` puts new addresses and ports in a packet with correct checksums (fw/nat/rewrite.py);
`ports` picks the translated address and port of a new session from a pool (fw/nat/ports.py);
`seqadj` shifts TCP sequence numbers after an ALG changed a segment's length (fw/nat/seqadj.py);
`ftp` rewrites the FTP announcements a translated control session carries (fw/nat/ftp.py).
Nothing here does I/O or reads a clock; docs/nat.md says how the engine wires them.
"""
