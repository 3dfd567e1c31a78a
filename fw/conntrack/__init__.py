"""Connection tracking: the session table (table.py) and TCP state tracking (tcp.py)."""
