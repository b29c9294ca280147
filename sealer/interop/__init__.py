"""Reading other tools' LUKS2 TPM bindings (systemd-cryptenroll, clevis)."""
