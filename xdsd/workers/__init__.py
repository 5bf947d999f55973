"""``xdsd serve --workers N``: N serving processes behind one set of ports, as one daemon.

``supervisor`` is the parent process: it binds the gRPC and REST listening sockets once,
starts the workers (each ``xdsd serve`` with a hidden ``--worker`` flag, inheriting those
sockets), serves the merged admin server, and alone speaks to systemd. ``worker`` is a
worker's entry point: a normal ``xdsd.app.Daemon`` whose gRPC and REST listeners accept
on the inherited sockets. ``merge.py`` (pure) merges the workers' admin answers into one
daemon's; ``admin.py`` serves them merged on the public admin address (``MergedAdmin``).
"""
