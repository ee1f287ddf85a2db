"""`python -m cli` is the `pulse` command."""

from cli.main import main

main()
