"""``python -m fourmica_x402`` runs the command line."""

from .cli import main

main()
