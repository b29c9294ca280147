.PHONY: setup demo test deb lifecycle bench-boot bench-measure bench-peers bench-enroll bench-wire fuzz bench-fleet

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/python scripts/demo.py

test:
	bash scripts/test.sh

# The Debian package: dist/sealer_<version>_amd64.deb (debian/, scripts/deb.sh); as root.
deb:
	bash scripts/deb.sh

# An installed Debian 12 (mmdebstrap, shim + GRUB, LUKS2 root) from the .deb through kernel
# updates, booted six times in QEMU (tests/lifecycle/; 25 to 40 minutes; not in make test).
lifecycle: deb
	bash scripts/setup.sh --boot-chain
	.venv/bin/python -m pytest -q -s -m lifecycle tests/lifecycle

bench-boot:
	bash scripts/setup.sh --boot-chain
	.venv/bin/python bench/boot_unlock.py --json bench/boot_unlock.json

bench-measure:
	bash scripts/setup.sh --boot-chain
	.venv/bin/python bench/measured_boot.py --json bench/measured_boot.json

bench-peers:
	bash scripts/setup.sh --boot-chain
	.venv/bin/python bench/peers.py --json bench/peers.json --markdown bench/peers.md

# Where sealer enroll's time goes (imports, cryptsetup, TPM), beside systemd-cryptenroll's.
bench-enroll:
	bash scripts/setup.sh --boot-chain
	.venv/bin/python bench/enroll_time.py --json bench/enroll_time.json

# The Ansible provision playbook on simulated machines: first run and idempotent rerun.
bench-fleet: setup
	.venv/bin/python bench/fleet.py --machines 3 --json bench/fleet.json

bench-wire:
	bash scripts/setup.sh --boot-chain
	.venv/bin/python bench/wire_audit.py --json bench/wire_audit.json --markdown bench/wire_audit.md

# Coverage-guided fuzzing of the four parsers (fuzz/run.py), one target after the other;
# the unit tests run the same targets for 10 s each.
FUZZ_SECONDS ?= 120
fuzz: setup
	.venv/bin/python fuzz/run.py --target all --seconds $(FUZZ_SECONDS)
