"""Process-level helpers every Tabby program shares (one log set-up, a private etcd for demos and tests).

A library layer below everything else: it imports nothing of the project, so the product
(controller/), the lab runner (lab/) and the tests can all use it without import cycles.
"""
