"""Protocol metrics with documented definitions (PROTOCOLS.md §1)."""
