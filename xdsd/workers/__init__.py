"""``xdsd serve --workers N``: several worker daemons serving as one.

``merge.py`` (pure) merges the workers' admin answers into one daemon's; ``admin.py``
serves them merged on the public admin address (``MergedAdmin``).
"""
