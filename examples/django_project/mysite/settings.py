"""Settings for the example project: a blog whose events run on aevents.

The SQLite database and the event journal live in ``BLOG_STATE_DIR`` (a
fresh temporary directory per run in the tests)::

    export BLOG_STATE_DIR=$(mktemp -d)
    python manage.py migrate
    uvicorn mysite.asgi:application
"""

import os
import tempfile
from pathlib import Path

STATE_DIR = Path(
    os.environ.get("BLOG_STATE_DIR", Path(tempfile.gettempdir()) / "aevents-django-example")
)
STATE_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "an example project, not a secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "aevents.contrib.django",  # imports each app's events.py once the apps are ready
    "blog",
]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "mysite.urls"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": STATE_DIR / "blog.sqlite3",
        # Views and the runtime's worker threads write concurrently: wait for the lock.
        "OPTIONS": {"timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

# EventRuntime's options; "store" is a path to an aevents.SQLiteStore journal.
AEVENTS = {
    "workers": 4,
    "strict": True,  # only names declared in a Catalog can be published
    "store": STATE_DIR / "events.journal",
    "shutdown_timeout": 30,
}
