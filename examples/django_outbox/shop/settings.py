"""Settings for the outbox example: a shop on PostgreSQL whose events commit with its data.

The database is the one ``SHOP_DATABASE_URL`` names; the shop's tables go in
the schema ``SHOP_SCHEMA`` (``public`` unless told otherwise) and the events
in ``SHOP_EVENTS_SCHEMA`` (``aevents``), both in that database::

    export SHOP_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test
    python manage.py migrate
    python manage.py aevents_worker          # runs the receivers
"""

import os

from psycopg.conninfo import conninfo_to_dict

_url = conninfo_to_dict(
    os.environ.get("SHOP_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
)
_schema = os.environ.get("SHOP_SCHEMA", "public")

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "an example project, not a secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "aevents.contrib.django",  # imports each app's events.py once the apps are ready
    "orders",
]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "shop.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _url.get("dbname", "test"),
        "USER": _url.get("user", ""),
        "PASSWORD": _url.get("password", ""),
        "HOST": _url.get("host", ""),
        "PORT": _url.get("port", ""),
        "OPTIONS": {"options": f"-c search_path={_schema}"},
    }
}

# The store is a PostgresStore in the database of DATABASES["default"], in a schema
# of its own: events published in a transaction commit with the shop's rows.
AEVENTS = {
    "store": {
        "postgres": "default",
        "schema": os.environ.get("SHOP_EVENTS_SCHEMA", "aevents"),
    },
    "workers": 4,
    "lease": 10,
}
