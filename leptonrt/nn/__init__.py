"""The model, the fused mixed-precision training step, and gradient synchronisation."""
