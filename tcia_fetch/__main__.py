"""``python -m tcia_fetch`` runs the command line."""

from tcia_fetch.cli.main import main

main()
