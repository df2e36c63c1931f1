"""A reference evaluator of network policy, written from the Kubernetes (and Calico) documentation.

Why it exists: the truth-table suite (tests/integration/node/test_policy_matrix.py) needs an
expected verdict for every (client, server, port, protocol) cell, and an expectation computed by
the compiler under test cannot fail. This package shares no code with ``datamodel/`` or
``felix_like/``: it reads the plain dicts of the YAML documents and answers "is this connection
allowed", nothing more (no nftables, no sets, no chains).
"""
