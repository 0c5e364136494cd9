"""The discrete-event core: scheduler, step registry, effect log, digest."""
