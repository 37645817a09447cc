"""The PAGEMAP_SCAN ioctl on /proc/PID/pagemap (6.7+, fs/proc/task_mmu.c do_pagemap_scan;
Documentation/admin-guide/mm/pagemap.rst): its structures and request number."""

from __future__ import annotations

import ctypes
import fcntl
from enum import IntFlag


class Cat(IntFlag):
    """PAGE_IS_* categories of include/uapi/linux/fs.h."""

    WPALLOWED = 1 << 0
    WRITTEN = 1 << 1
    FILE = 1 << 2
    PRESENT = 1 << 3
    SWAPPED = 1 << 4
    PFNZERO = 1 << 5
    HUGE = 1 << 6
    SOFT_DIRTY = 1 << 7


class ScanArg(ctypes.Structure):
    """struct pm_scan_arg."""

    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "size",
            "flags",
            "start",
            "end",
            "walk_end",
            "vec",
            "vec_len",
            "max_pages",
            "category_inverted",
            "category_mask",
            "category_anyof_mask",
            "return_mask",
        )
    ]


class Region(ctypes.Structure):
    """struct page_region."""

    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64), ("categories", ctypes.c_uint64)]


# _IOWR('f', 16, struct pm_scan_arg)
PAGEMAP_SCAN = (3 << 30) | (ctypes.sizeof(ScanArg) << 16) | (ord("f") << 8) | 16


def scan(fd: int, arg: ScanArg) -> int:
    """One PAGEMAP_SCAN: the number of regions written to ``arg.vec``; OSError (ENOTTY, EINVAL)
    where the kernel has no such ioctl."""
    return int(fcntl.ioctl(fd, PAGEMAP_SCAN, arg))
