"""Layer 4, placement: key ranges, the versioned key map, and placement policies."""

from ._keymap import (
    KEY_SPACE,
    Assignment,
    KeyMap,
    KeyRange,
    Split,
    copy_plan,
    extended,
    in_ranges,
    positions,
    ranges_from_wire,
    ranges_to_wire,
)
from ._placement import EvenSplit, Placement
from ._ring import DEFAULT_VNODES, Ring
from ._spread import spread, unspread

__all__ = ["DEFAULT_VNODES", "KEY_SPACE", "Assignment", "EvenSplit", "KeyMap", "KeyRange", "Placement", "Ring", "Split", "copy_plan", "extended", "in_ranges", "positions", "ranges_from_wire", "ranges_to_wire", "spread", "unspread"]
