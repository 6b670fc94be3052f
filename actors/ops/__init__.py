"""Operations: the embedded PostgreSQL (`pgserver`), the migrations runner
(`migrate`) and the ledger audit (`audit`)."""
