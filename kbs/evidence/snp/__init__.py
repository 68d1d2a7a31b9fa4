"""AMD SEV-SNP evidence: the report (C parser), the CoCo guest's JSON form, the extended report's
certificate table, collateral, verification and appraisal, and the verifier the registry uses."""
