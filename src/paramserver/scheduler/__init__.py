"""The scheduler role: membership, the server manager's key map, tables, barriers, job end."""

from ._core import Connect, Disconnect, Finish, Probe, SchedulerCore, Send
from ._process import SchedulerProcess

__all__ = ["Connect", "Disconnect", "Finish", "Probe", "SchedulerCore", "SchedulerProcess", "Send"]
