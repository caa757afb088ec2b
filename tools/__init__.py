"""Command-line tools around the engine: doctor, one-off generation, the tiny test model, the GPU worker."""
