"""A Django app for the inbox crash test: a receiver that SIGKILLs its own process once per
event at a planned point (before its write, between its write and the commit, or after
the commit), read from ``INBOX_CRASH_PLAN`` (``{order id: point}``) and a directory of
markers (``INBOX_CRASH_DIR``) so that each planned crash happens once."""
