"""Layer 5, the node runtime: transport + handlers + timers + node table + key map cache."""

from ._errors_wire import error_body, error_from_body
from ._host import choose_host, split_address
from ._info import SCHEDULER_ID, NodeInfo
from ._runtime import Node, process_info

__all__ = [
    "SCHEDULER_ID",
    "Node",
    "NodeInfo",
    "choose_host",
    "error_body",
    "error_from_body",
    "process_info",
    "split_address",
]
