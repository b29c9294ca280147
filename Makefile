.PHONY: setup demo test bench-boot bench-measure bench-peers

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/python scripts/demo.py

test:
	bash scripts/test.sh

bench-boot:
	bash scripts/setup.sh --boot-chain
	.venv/bin/python bench/boot_unlock.py --json bench/boot_unlock.json

bench-measure:
	bash scripts/setup.sh --boot-chain
	.venv/bin/python bench/measured_boot.py --json bench/measured_boot.json

bench-peers:
	bash scripts/setup.sh --boot-chain
	.venv/bin/python bench/peers.py --json bench/peers.json --markdown bench/peers.md
