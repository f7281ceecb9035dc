"""`python -m membt_host` runs the membt-host command."""

from membt_host.cli import main

raise SystemExit(main())
