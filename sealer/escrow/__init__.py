"""Recovery-key escrow: the key, encrypted to the organisation's X.509 certificate.

``cms`` is the only place with envelope crypto (CMS AuthEnvelopedData, RFC 5083; it also
reads the RFC 5652 EnvelopedData of version 1 records); ``record`` is the JSON file that
carries one envelope and says which volume and keyslot it opens.
"""
