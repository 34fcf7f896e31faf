"""Memory sizes and walltimes, parsed the way SLURM users write them.

>>> parse_memory_mib("4G"), parse_memory_mib("4GB"), parse_memory_mib(512)
(4096, 3815, 512)
>>> parse_walltime_seconds("1-02:03:04"), format_walltime(93784)
(93784, '1-02:03:04')
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from htc_notebook.errors import SpecError

from ._model import _is_bool, as_whole

MIB = 1 << 20
_BINARY = {"": MIB, "K": 1 << 10, "M": MIB, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_DECIMAL = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_MEMORY = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([KMGTP])(i?)(B?)|(B))?\s*", re.IGNORECASE)

MEMORY_FORMATS = ("a whole number of MiB >= 1, or a string like '4G', '4096M', '4GiB' "
                  "(binary: K, M, G, T = KiB..TiB) or '4GB', '4000MB' (decimal)")
WALLTIME_FORMATS = ("seconds as a whole number >= 1, or a string 'SS', 'MM:SS', 'HH:MM:SS', "
                    "'D-HH', 'D-HH:MM' or 'D-HH:MM:SS' (minutes and seconds < 60; hours < 24 after days)")


def parse_memory_mib(value: object, *, field: str = "memory") -> int:
    """Memory in whole MiB (rounded up) from an int (MiB) or a size string.

    Suffixes K/M/G/T (optionally with "iB") are binary like SLURM; KB/MB/GB/TB are decimal;
    a bare number is MiB, a trailing "B" alone means bytes.

    >>> parse_memory_mib("4096MiB"), parse_memory_mib("1.5g"), parse_memory_mib("1TB")
    (4096, 1536, 953675)
    """
    if not isinstance(value, str):
        if _is_bool(value) or isinstance(value, float) or not hasattr(value, "__index__"):
            raise SpecError("", field, value, f"{MEMORY_FORMATS} (got {type(value).__name__})")
        mib = value.__index__()
    else:
        m = _MEMORY.fullmatch(value)
        if not m:
            raise SpecError("", field, value, MEMORY_FORMATS)
        digits, unit, i, b, bytes_only = m.groups()
        unit = (unit or "").upper()
        if bytes_only:
            scale = 1
        elif unit and b and not i:  # "4GB": decimal SI
            scale = _DECIMAL[unit]
        else:
            scale = _BINARY[unit]
        mib = math.ceil(Fraction(digits) * scale / MIB)
    if mib < 1:
        raise SpecError("", field, value, MEMORY_FORMATS)
    return mib


_WALLTIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def parse_walltime_seconds(value: object, *, field: str = "walltime") -> int:
    """Walltime in seconds from an int or a SLURM-style string.

    Unlike sbatch, a bare number (int or "90") means seconds, not minutes. The first
    field written may exceed its usual range ("90:00" is 90 minutes); later ones may not.

    >>> parse_walltime_seconds("90"), parse_walltime_seconds("01:30"), parse_walltime_seconds("2-00")
    (90, 90, 172800)
    """
    if not isinstance(value, str):
        if _is_bool(value) or isinstance(value, float) or not hasattr(value, "__index__"):
            raise SpecError("", field, value, f"{WALLTIME_FORMATS} (got {type(value).__name__})")
        total = value.__index__()
    else:
        m = _WALLTIME.fullmatch(value.strip())
        if not m:
            raise SpecError("", field, value, WALLTIME_FORMATS)
        days, *rest = m.groups()
        nums = [int(n) for n in rest if n is not None]
        if days is None:  # SS, MM:SS, HH:MM:SS
            hours, minutes, seconds = [0] * (3 - len(nums)) + nums
            too_big = any(n >= 60 for n in nums[1:])
        else:  # D-HH, D-HH:MM, D-HH:MM:SS
            hours, minutes, seconds = nums + [0] * (3 - len(nums))
            too_big = hours >= 24 or minutes >= 60 or seconds >= 60
        if too_big:
            raise SpecError("", field, value, WALLTIME_FORMATS)
        total = int(days or 0) * 86400 + hours * 3600 + minutes * 60 + seconds
    if total < 1:
        raise SpecError("", field, value, WALLTIME_FORMATS)
    return total


def format_walltime(seconds: int) -> str:
    """SLURM-style "HH:MM:SS", or "D-HH:MM:SS" from one day on.

    >>> format_walltime(3600), format_walltime(86400 + 61)
    ('01:00:00', '1-00:01:01')
    """
    seconds = as_whole(seconds, 0, field="seconds")
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text
