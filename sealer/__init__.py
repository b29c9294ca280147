"""sealer: unlock LUKS2 volumes with a TPM 2.0 bound to a verified UEFI boot chain."""

__version__ = "0.1.0"
