"""Mappings made with mmap(2) directly: no file descriptor is kept for them (Python's mmap
keeps a duplicate of each one), and a region is unmapped once nothing references it."""

from __future__ import annotations

import ctypes
import mmap
import os
import threading

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_FAILED = ctypes.c_void_p(-1).value


class Region:
    """``length`` bytes of file ``fd`` from ``offset`` (a multiple of the page size), mapped
    shared, read-only unless ``writable``. The descriptor may be closed right after."""

    def __init__(self, fd: int, length: int, offset: int = 0, writable: bool = False) -> None:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        address = _libc.mmap(None, length, prot, mmap.MAP_SHARED, fd, offset)
        if address is None or address == _FAILED:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        self.address: int = address
        self.length = length
        self._lock = threading.Lock()

    def read(self, start: int, count: int) -> bytes:
        """A copy of ``count`` bytes at ``start``."""
        self._check(start, count)
        return ctypes.string_at(self.address + start, count)

    def write_byte(self, at: int, value: int) -> None:
        """Store one byte (the region must be writable)."""
        self._check(at, 1)
        ctypes.c_uint8.from_address(self.address + at).value = value

    def close(self) -> None:
        """Unmap now (nothing may read it after). Idempotent."""
        with self._lock:
            address, self.address = self.address, 0
        if address:
            _libc.munmap(address, self.length)

    def _check(self, start: int, count: int) -> None:
        if not self.address:
            raise ValueError("the region is unmapped")
        if start < 0 or start + count > self.length:
            raise IndexError("outside the mapped region")

    def __del__(self) -> None:
        self.close()
