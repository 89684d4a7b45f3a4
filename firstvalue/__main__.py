"""`python -m firstvalue`: the same as the `firstvalue` command."""

from firstvalue.cli.main import main

main()
