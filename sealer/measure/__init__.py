"""Measured boot: the TCG event log, PE hashing, PCR prediction."""
