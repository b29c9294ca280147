"""The boot-time unlocker and its wiring into the initramfs.

Modules here run inside the initramfs, where every imported module costs boot time and
initramfs size: import nothing that the keyscript does not need (no click, no pyudev).
"""
