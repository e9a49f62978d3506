"""``python -m ibcore`` — see :mod:`ibcore.cli`."""

from ibcore.cli import main

raise SystemExit(main())
