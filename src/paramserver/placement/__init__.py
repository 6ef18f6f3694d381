"""Layer 4, placement: key ranges, the versioned key map, and placement policies."""

from ._keymap import KEY_SPACE, Assignment, KeyMap, KeyRange
from ._placement import EvenSplit, Placement
from ._spread import spread, unspread

__all__ = ["KEY_SPACE", "Assignment", "EvenSplit", "KeyMap", "KeyRange", "Placement", "spread", "unspread"]
