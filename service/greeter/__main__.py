"""``python -m greeter`` is the ``greeter`` command."""

from greeter.cli import main

raise SystemExit(main())
