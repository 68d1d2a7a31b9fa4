"""The broker's audit trail: the release log as an RFC 9162 Merkle tree with signed checkpoints, and the
hash-chained refusal log."""
