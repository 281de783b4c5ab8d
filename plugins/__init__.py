"""Built-in pipeline stages. Each module is registered through the `hybridrec` entry-point
group in pyproject.toml, exactly as an external plugin package registers its own, so these
are the examples to copy when writing a new stage."""
