"""Host side of the benchmark: manifest, datasets, images, scheduling, merging, CLI."""
