"""The thin shell: kopf handlers observe, call the core, apply and report."""
