"""Framework glue, one leaf module per framework; the core never imports these.

Each module imports its framework and fails with a ``pip install 'aevents[...]'``
hint when it is missing.
"""
