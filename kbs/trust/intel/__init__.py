"""Intel specifics of the trust layer (DCAP, for TDX quotes): the SGX Root CA pin, PCK chains and their
SGX extension (`certs`), TCB info and QE identity (`collateral`), Intel QVL's TCB status algorithm (`tcb`),
the PCS client (`pcs`), collateral from files (`offline`) and the collateral cache's Intel kinds
(`cache_kinds`).  Nothing here parses a quote: callers pass the values a quote carries."""
