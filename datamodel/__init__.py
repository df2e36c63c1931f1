"""Plain data shared by every layer: projectcalico.org/v3 resources and the selector language."""
