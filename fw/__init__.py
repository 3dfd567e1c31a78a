"""fw: a stateful packet-inspection firewall for Linux on NFQUEUE.

The core (packet, conntrack, policy, alg, engine) is sans-IO: bytes and time in, a Decision out.
Drivers (pcap replay, the NFQUEUE daemon) do the I/O. See docs/design.md.

The modules of COMPILED may be built with mypyc (`make compiled`, scripts/build_compiled.py): the
extension lies beside the .py and Python imports it first. With FW_PURE=1 in the environment the
.py sources are imported instead (the test suite runs against both; docs/performance.md).
"""

import os
import sys

__version__ = "0.1.0"
COMPILED = ("fw.packet.parse", "fw.conntrack.tcp")


class _PureSources:
    """A meta path finder that gives the .py source of a module of COMPILED, never its extension."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name not in COMPILED or not path:
            return None
        from importlib.machinery import SourceFileLoader  # noqa: PLC0415
        from importlib.util import spec_from_file_location  # noqa: PLC0415

        source = os.path.join(path[0], name.rpartition(".")[2] + ".py")
        return spec_from_file_location(name, source, loader=SourceFileLoader(name, source))


if os.environ.get("FW_PURE", "") not in ("", "0"):
    sys.meta_path.insert(0, _PureSources)


def compiled_modules() -> list[str]:
    """The modules of COMPILED imported so far that run compiled in this process."""
    return [name for name in COMPILED if name in sys.modules
            and not (getattr(sys.modules[name], "__file__", None) or "").endswith(".py")]
