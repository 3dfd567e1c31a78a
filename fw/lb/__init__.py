"""The L4 load balancer's pieces: real servers, schedulers, the Maglev table, health checks.

How it fits: a virtual server (fw/policy/virtual_servers.py parses them) has a `Balancer`
(balancer.py) in each worker, and a policy's balancers live in one `VirtualServers` (service.py).
A balancer holds its real servers (servers.py), one scheduler chosen by name from
`schedulers.SCHEDULERS`, and an optional source-affinity table (persistence.py). The engine asks
the balancer for a real server when a session opens and keeps it in the session for life; the
daemon runs the health checks (health.py, the only module here doing I/O) and feeds their state
changes back. See docs/lb.md. This package imports nothing at load time, so importing a scheduler
does not pull in sockets.
"""
