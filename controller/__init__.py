"""The composition root: resource API, datastore wiring, tabbyctl, daemons, the lab runner."""
