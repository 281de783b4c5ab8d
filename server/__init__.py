"""hybridrec.server."""
