"""Install-time boot wiring: crypttab, the initramfs hooks and bundle, boot enable/disable."""
