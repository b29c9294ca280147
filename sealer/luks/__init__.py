"""LUKS2: the only package that runs cryptsetup. Keyslots, tokens, header dumps."""
