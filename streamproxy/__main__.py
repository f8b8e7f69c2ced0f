"""`python -m streamproxy ...`: the same command line as the `streamproxy` script."""

from streamproxy.cli import main

raise SystemExit(main())
