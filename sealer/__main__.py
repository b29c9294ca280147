from sealer.cli import main

main(prog_name="sealer")
