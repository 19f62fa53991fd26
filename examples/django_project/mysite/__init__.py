"""An example Django project that runs aevents under uvicorn (see ``asgi.py``)."""
