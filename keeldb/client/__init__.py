"""keeldb's Python client: `connect("HOST:PORT")` to a keeldb server (RESP over TCP).

    from keeldb.client import connect
"""

from __future__ import annotations

from keeldb.client.resp_client import Client, ClientTransaction, connect, error_for

__all__ = ["Client", "ClientTransaction", "connect", "error_for"]
