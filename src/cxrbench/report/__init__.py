"""Results are data, tables are generated: records, aggregation, tables."""
