"""BGP for Tabby: peer calculation, a RIB with best-path and loop checks, and the ExaBGP speaker bridge.

ExaBGP speaks the protocol but keeps no FIB and does no best-path or loop check: this package does.
"""
