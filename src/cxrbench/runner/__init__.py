"""Planning and executing jobs (pre-training, transfer), with provenance."""
