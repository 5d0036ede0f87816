"""``python -m hms_bus`` is the ``hms-bus`` command."""

from .cli import main

raise SystemExit(main())
