"""WebSocket bookkeeping: stamp activity on every frame both ways, bound memory, close at logout.

mitmproxy keeps every message of a live WebSocket in ``flow.websocket.messages``; clearing it after
each frame keeps a week-long terminal session at constant memory.
"""

from __future__ import annotations

from mitmproxy import http

from hubproxy.context import ROUTED, SESSION, USER, HubContext
from hubproxy.guard import close_connection, fail_closed


class Activity:
    def __init__(self, context: HubContext) -> None:
        self.context = context

    @fail_closed
    def websocket_start(self, flow: http.HTTPFlow) -> None:
        session = flow.metadata.get(SESSION)
        if not flow.metadata.get(ROUTED) or session is None:
            close_connection(flow)
            return
        if self.context.sessions.get(session.sid, session.user) is None:
            close_connection(flow)  # logged out between the upgrade request and now
            return
        self.context.websockets.setdefault(session.sid, set()).add(flow)

    @fail_closed
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        user = flow.metadata.get(USER)
        messages = flow.websocket.messages
        if user is not None and messages:
            self.context.control.touch(user, "ws-in" if messages[-1].from_client else "ws-out")
        messages.clear()

    @fail_closed
    def websocket_end(self, flow: http.HTTPFlow) -> None:
        session = flow.metadata.get(SESSION)
        if session is not None:
            flows = self.context.websockets.get(session.sid)
            if flows is not None:
                flows.discard(flow)
                if not flows:
                    del self.context.websockets[session.sid]
