"""The TPM 2.0: the only package that imports tpm2_pytss.

tpm2-tss logs every failed command to stderr by itself; sealer reports failures in its own
words, so the library's logging is switched off unless the user set TSS2_LOG.
"""

import os

os.environ.setdefault("TSS2_LOG", "all+NONE")
