"""Storage: the only owner of paths, schemas, Parquet/WebDataset IO and the DuckDB database."""
