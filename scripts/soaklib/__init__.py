"""scripts/soak's modules: a chaos soak of the gateway (run it with scripts/soak)."""
