"""What reads results: run files, the regression gate, the report, parity, developer experience, overhead."""
