"""Calico-style IP address management: pools cut into blocks with node affinity, in etcd."""
