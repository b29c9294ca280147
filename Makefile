.PHONY: setup demo test

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/python scripts/demo.py

test:
	bash scripts/test.sh
