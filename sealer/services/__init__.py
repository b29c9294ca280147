"""Services: one module per user job, composed from tpm/, luks/ and policy/."""
