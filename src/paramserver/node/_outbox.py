"""The requests a node has in flight, and what happens to them: a pure state machine.

An :class:`Outbox` owns, per request (by timestamp ``ts``), a :class:`Flight`: the
:class:`~paramserver.clock.Request` handle, the peers it awaits, the parts as they left
(to send them on to new owners) and, per part that may travel again, a
:class:`Delivery` (its encoded frames for resends, the message before filters for a
key-cache repair). The runtime feeds it events and performs what it answers:

========================  ===============================================================
event                     answer
========================  ===============================================================
:meth:`Outbox.open`       a new request in flight (nothing sent yet)
:meth:`Outbox.sent`       a part left: keep it for reroutes, resends and repairs
:meth:`Outbox.answer`     a :class:`Verdict` for a reply: complete, fail, reroute, repair,
                          or ignore (late, duplicate, unmatched)
:meth:`Outbox.peer_gone`  the flights that awaited the peer (its deliveries are dropped)
:meth:`Outbox.due`        the deliveries to send again at ``now``
:meth:`Outbox.close`      a finished request: forget it (ordered deliveries stay)
========================  ===============================================================

Invariants:

* every delivery key ``(ts, peer)`` of a request in flight has ``peer`` in its flight's
  ``peers``; reroutes send new requests, with their own timestamps;
* an *ordered* delivery (a push or clock tick with a sequence number) is kept until its
  receiver answers, even after its request ended: a missing sequence number would stall
  that channel for good;
* a part is sent on to new owners at most once (:meth:`Flight.claim`), whichever of a
  "moved" answer and a peer's death comes first.

The Outbox never touches a socket, a thread or a clock (``now`` is passed in), and never
calls into a Request: it only reads whether one is done.

Thread-safety: not thread-safe; the node runtime guards it with its lock.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..clock import Request
from ..protocol import Codec, Message, Op, Status

__all__ = ["Delivery", "Flight", "Outbox", "PartCallback", "Reroute", "Verdict", "VerdictKind"]

PartCallback = Callable[[Message], None]
#: ``reroute(peer, msg)``: send the part ``msg`` meant for ``peer`` to the keys' owners under
#: the current key map, as a new request whose completion completes that part.
Reroute = Callable[[int, Message], Request]

#: A part may be sent on to new owners this many times before its request fails.
MAX_REROUTES = 64


@dataclass(slots=True)
class Flight:
    """One request in flight. Mutable fields change only through the Outbox."""

    req: Request
    on_part: PartCallback | None
    reroute: Reroute | None
    #: the peers the request has a part for (fixed at creation)
    peers: tuple[int, ...]
    #: peer -> the part as it left (sequence number stamped, before filters); kept only
    #: for requests that may be rerouted
    sent: dict[int, Message] = field(default_factory=dict)
    hops: int = 0
    #: peers whose part was already sent on
    rerouted: set[int] = field(default_factory=set)

    def claim(self, peer: int) -> bool:
        """Mark ``peer``'s part as being sent on; False if it already was."""
        if peer in self.rerouted:
            return False
        self.rerouted.add(peer)
        return True


@dataclass(slots=True)
class Delivery:
    """One sent part that may have to travel again: resent after a timeout, or repaired
    (re-encoded with its keys) after a key-cache miss."""

    frames: list[Any]
    table: int
    due: float  # next resend time; inf when resends are off
    ordered: bool
    original: Message | None = None  # before filters, for repairs
    codecs: tuple[Codec, ...] = ()


class VerdictKind(enum.Enum):
    IGNORE = 0  # late (request ended), or a second answer to the same part
    UNMATCHED = 1  # no request of that timestamp: the role may want it (the scheduler does)
    COMPLETE = 2  # run on_part, then mark the part done
    FAIL = 3  # an error reply
    MOVED = 4  # the receiver does not own the keys: send the part on
    REPAIR = 5  # a key-cache miss: send the part again with its keys


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: VerdictKind
    flight: Flight | None = None
    delivery: Delivery | None = None


_IGNORE = Verdict(VerdictKind.IGNORE)
_UNMATCHED = Verdict(VerdictKind.UNMATCHED)


def is_ordered(msg: Message) -> bool:
    """A push or clock tick of a channel: its receiver must see it, exactly once."""
    return msg.seq > 0 and (msg.op == Op.PUSH or msg.op == Op.CLOCK)


class Outbox:
    """Requests in flight. See the module docstring."""

    __slots__ = ("deliveries", "flights")

    def __init__(self) -> None:
        self.flights: dict[int, Flight] = {}
        #: (ts, peer) -> what it takes to deliver that part again
        self.deliveries: dict[tuple[int, int], Delivery] = {}

    # ------------------------------------------------------------------ requests
    def open(self, req: Request, peers: tuple[int, ...], on_part: PartCallback | None = None,
             reroute: Reroute | None = None) -> Flight:
        """Track ``req``, which awaits one part from each of ``peers``."""
        flight = Flight(req, on_part, reroute, peers)
        self.flights[req.ts] = flight
        return flight

    def sent(self, ts: int, peer: int, snapshot: Message | None, delivery: Delivery | None) -> None:
        """The part of request ``ts`` for ``peer`` left: keep ``snapshot`` (the part before
        filters) for reroutes and ``delivery`` for resends and repairs. An ordered delivery
        is kept even when the request has ended meanwhile; another is dropped then."""
        flight = self.flights.get(ts)
        if snapshot is not None and flight is not None:
            flight.sent[peer] = snapshot
        if delivery is not None and (delivery.ordered or flight is not None):
            self.deliveries[(ts, peer)] = delivery

    def close(self, ts: int) -> None:
        """Forget a finished request and its parts' deliveries, except ordered ones."""
        flight = self.flights.pop(ts, None)
        if flight is None:
            return
        deliveries = self.deliveries
        for peer in flight.peers:
            key = (ts, peer)
            d = deliveries.get(key)
            if d is not None and not d.ordered:
                del deliveries[key]

    def get(self, ts: int) -> Flight | None:
        return self.flights.get(ts)

    def low_water(self) -> int:
        """The smallest timestamp of an unfinished request (0 if none): every request below
        it finished, so its parts are never sent again."""
        return min(self.flights, default=0)

    def requests(self) -> list[Request]:
        return [f.req for f in self.flights.values()]

    # ------------------------------------------------------------------ events
    def answer(self, msg: Message) -> Verdict:
        """Classify the reply ``msg``; drops its delivery unless it asks for a repair."""
        key = (msg.ts, msg.sender)
        flight = self.flights.get(msg.ts)
        if msg.status == Status.RESEND_KEYS:
            return Verdict(VerdictKind.REPAIR, flight, self.deliveries.get(key))
        self.deliveries.pop(key, None)
        if flight is None:
            return _UNMATCHED
        if not flight.req.awaits(msg.sender):
            return _IGNORE
        if msg.status == Status.MOVED:
            return Verdict(VerdictKind.MOVED, flight)
        if msg.status == Status.ERROR:
            return Verdict(VerdictKind.FAIL, flight)
        return Verdict(VerdictKind.COMPLETE, flight)

    def peer_gone(self, peer: int) -> list[Flight]:
        """The flights awaiting ``peer``, in issue order (pushes keep their order when sent
        on); every delivery to ``peer`` is dropped."""
        for key in [k for k in self.deliveries if k[1] == peer]:
            del self.deliveries[key]
        waiting = [f for f in self.flights.values() if f.req.awaits(peer)]
        waiting.sort(key=lambda f: f.req.ts)
        return waiting

    def start_reroute(self, flight: Flight, peer: int) -> tuple[Message | None, int]:
        """The part of ``flight`` for ``peer`` as it left, and the hops so far (counting
        this one); its delivery is dropped (the new owners get a new request)."""
        self.deliveries.pop((flight.req.ts, peer), None)
        flight.hops += 1
        return flight.sent.get(peer), flight.hops

    def due(self, now: float, resend_after: float) -> list[tuple[int, Delivery]]:
        """Deliveries whose resend time has come, rescheduled ``resend_after`` later."""
        out = []
        for (_, peer), d in self.deliveries.items():
            if d.due <= now:
                d.due = now + resend_after
                out.append((peer, d))
        return out
