"""Apps for ``python -m aevents inspect`` to import in a subprocess (never in the test process).

Catalogs declare names process-wide, so importing these in the test process
would leak their declarations into every later test.
"""
