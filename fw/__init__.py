"""fw: a stateful packet-inspection firewall for Linux on NFQUEUE.

The core (packet, conntrack, policy, alg, engine) is sans-IO: bytes and time in, a Decision out.
Drivers (pcap replay, the NFQUEUE daemon) do the I/O. See docs/design.md.

The hot modules may be compiled in place (build_compiled.py, run by `make install`); the extension
module then sits beside its `.py` and is the one imported. With `FW_PURE=1` in the environment the
finder below imports fw's modules from their `.py` files only, so one checkout runs both builds.
"""

import os
import sys
from importlib import machinery

__version__ = "0.1.0"


class PureFinder:
    """Finds fw's submodules as source (or bytecode) only, never as a compiled extension module."""

    LOADERS = ((machinery.SourceFileLoader, machinery.SOURCE_SUFFIXES),
               (machinery.SourcelessFileLoader, machinery.BYTECODE_SUFFIXES))

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if not name.startswith("fw.") or path is None:
            return None
        for entry in path:
            spec = machinery.FileFinder(entry, *cls.LOADERS).find_spec(name)
            if spec is not None:
                return spec
        return None


if os.environ.get("FW_PURE", "") not in ("", "0") and PureFinder not in sys.meta_path:
    sys.meta_path.insert(0, PureFinder)


def compiled_modules() -> list[str]:
    """The names of fw's modules imported so far from a compiled extension module."""
    suffixes = tuple(machinery.EXTENSION_SUFFIXES)
    return sorted(name for name, module in list(sys.modules.items())
                  if name.startswith("fw.") and str(getattr(module, "__file__", "")).endswith(suffixes))
