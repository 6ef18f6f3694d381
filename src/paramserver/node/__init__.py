"""Layer 5, the node runtime: a shell over pure parts (Outbox, Membership, Timers, batches)."""

from ._auth import ALLOWED, Gate, Known, Member
from ._errors_wire import error_body, error_from_body
from ._host import choose_host, probe, split_address
from ._info import DEFAULT_GROUP, SCHEDULER_ID, NodeInfo
from ._outbox import PartCallback, Reroute
from ._runtime import Node, Stamp, process_info

__all__ = [
    "ALLOWED",
    "DEFAULT_GROUP",
    "SCHEDULER_ID",
    "Gate",
    "Known",
    "Member",
    "Node",
    "NodeInfo",
    "PartCallback",
    "Reroute",
    "Stamp",
    "choose_host",
    "error_body",
    "error_from_body",
    "probe",
    "process_info",
    "split_address",
]
