"""Recovery-key escrow: the key, encrypted to the organisation's X.509 certificate.

``cms`` is the only place with envelope crypto (CMS EnvelopedData, RFC 5652); ``record``
is the JSON file that carries one envelope and says which volume and keyslot it opens.
"""
