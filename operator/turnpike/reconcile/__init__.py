"""Pure reconcile decisions: what to apply, given desired and observed objects."""
