"""Stands in for PyInstaller's bootstrap module `pyimod03_ctypes` in pinnace's frozen build (pinnace.spec).

The original wraps ctypes.CDLL/PyDLL so that a bare library name is looked up in the bundle first, and
imports ctypes to do so on every start. The bundle's _internal/ directory is on LD_LIBRARY_PATH from
the process's start (the bootloader or packaging/launcher.sh puts it there), so the dynamic loader
already finds bundled libraries by soname; pinnace loads ctypes only when a command needs it.
"""


def install() -> None:
    """Called by PyInstaller's bootstrap; nothing to install."""
