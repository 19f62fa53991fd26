"""The ASGI application: Django, plus an aevents runtime for as long as the server runs.

``uvicorn mysite.asgi:application``. Django's own handler refuses the ASGI
lifespan; the aevents wrapper answers it, starting the runtime configured by
``settings.AEVENTS`` at startup and draining it at shutdown.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

from aevents.contrib.django import get_asgi_application

application = get_asgi_application()
