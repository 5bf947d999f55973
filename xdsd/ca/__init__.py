"""xdsd as the mesh's certificate authority (``[mesh.ca]``): the CA itself
(``authority.py``: loaded from the operator's files or generated in the state directory;
workload certificates, CSR signing, the trust bundle) and the tokens proxies prove who
they are with (``tokens.py``). Private keys are held in memory only (a generated CA's key
in the state directory, 0600), never logged or shown.
"""
