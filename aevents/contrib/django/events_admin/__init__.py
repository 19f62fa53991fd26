"""Django admin pages for the dead letters and deliveries of an aevents store.

Add ``"aevents.contrib.django.events_admin"`` to ``INSTALLED_APPS`` (next to
``django.contrib.admin``) and run ``migrate``: the admin gains an "Events"
section with the dead letters (filters, payloads, redeliver and discard
actions after a confirmation) and the deliveries (backlog per receiver,
leases, pending ones). Its two models are unmanaged: they create no table and
hold no rows; they give the pages their place in the admin and their
permissions (view; change to redeliver; delete to discard). The pages read
the store through the store protocol, never through Django's database.

The store comes from ``settings.AEVENTS_ADMIN_STORE`` (a path, or a callable
that returns a new, unopened store), else from ``settings.AEVENTS["store"]``.
"""
