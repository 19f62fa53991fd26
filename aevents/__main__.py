"""``python -m aevents``: see ``aevents._cli``."""

from ._cli import main

raise SystemExit(main())
