"""NVIDIA specifics of the trust layer: the GPU device chain and its FWID (`certs`, `fwid`); OCSP (`ocsp`:
stances and per-certificate results, `ocsp_service`: NVIDIA's responder, `ocsp_store`: a directory of
responses, `ocsp_kinds`: responses in the collateral cache); and the Reference Integrity Manifests (`rim`:
verification, over `rim_xml` (safe parsing, SWID fields), `rim_signature` (the XML-DSig profile, signxml) and
`rim_roots` (the CoRIM root pin and its shipped PEM); `rim_ids`; `rim_store`: a directory and NVIDIA's RIM
service; `rim_kinds`: RIMs in the collateral cache; `golden`: measurements against RIMs)."""
