"""Authorized policies: policy digests, the machine's policy key, signed approvals."""
