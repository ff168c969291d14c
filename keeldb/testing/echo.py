"""A trivial system for measuring the simulator: nodes bounce small messages forever.

On start each node sends `WINDOW` messages to each peer; every message received is answered
at once. It also answers `read` requests with the number of messages it has received.
"""

from __future__ import annotations

from keeldb.node.effects import ClientRequest, Effect, Event, Received, Reply, Send, Start
from keeldb.types import NodeId

WINDOW = 4


class EchoNode:
    def __init__(self) -> None:
        self.received = 0
        self.node_id = NodeId("")

    def step(self, event: Event) -> list[Effect]:
        if isinstance(event, Received):
            self.received += 1
            return [Send(event.src, event.msg + 1)]
        if isinstance(event, Start):
            self.node_id = event.node
            return [Send(p, 0) for p in event.peers for _ in range(WINDOW)]
        if isinstance(event, ClientRequest):
            return [Reply(event.request_id, "ok", self.received)]
        return []
