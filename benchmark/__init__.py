"""kernel-bench engine: config, data, prompts, models, kernels, methods, tracking and the CLI."""
