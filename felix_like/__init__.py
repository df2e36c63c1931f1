"""The per-node dataplane: desired-state calculation (pure) and kernel reconcilers that own only what they made."""
