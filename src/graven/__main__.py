"""``python -m graven``."""

from graven.cli.main import main

raise SystemExit(main())
