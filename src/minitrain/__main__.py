"""`python -m minitrain`: the command line (cli.py)."""

from minitrain.cli import main

raise SystemExit(main())
