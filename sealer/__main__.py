"""``python -m sealer``: the same command line as the ``sealer`` script."""

from sealer.cli import main

main(prog_name="sealer")
