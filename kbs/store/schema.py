"""The tables every backend holds, written once and rendered per SQL dialect.

Both stores create the same tables with the same columns in the same order, so rows, MACs and
queries mean the same thing on SQLite and PostgreSQL.  Columns use a small portable vocabulary
mapped per dialect: timestamps are seconds since the epoch in a double (PostgreSQL's REAL is
single precision, hence DOUBLE PRECISION there), so the values the row MACs cover round-trip
exactly on both.  SCHEMA_VERSION is the one version both backends record (SQLite in
`PRAGMA user_version`, PostgreSQL in `kbs_schema`); a change to the tables bumps it, and each
backend's opening code upgrades older databases from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SCHEMA_VERSION = 7  # 3: the decision generation and its triggers; 4: kek_state (kbs.store.kek_state);
# 5: the release log's Merkle tree and signed checkpoints (kbs.store.tlog); 6: owners, owned keys and proposals
# (kbs.store.owners: new tables only, created on upgrade like on a new database); 7: owners' contributions to
# contributed keys, and owned keys and contributions in the decision generation (a new table and triggers)

Dialect = Literal["sqlite", "postgresql"]

# Portable column types -> each dialect's.  "seq" is a log's position: an integer key the store assigns.
TYPES: dict[Dialect, dict[str, str]] = {
    "sqlite": {"text": "TEXT", "int": "INTEGER", "real": "REAL", "blob": "BLOB",
               "seq": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "postgresql": {"text": "TEXT", "int": "BIGINT", "real": "DOUBLE PRECISION", "blob": "BYTEA",
                   "seq": "BIGINT PRIMARY KEY"},
}


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]  # (name, portable type, with " not null" when required)
    primary_key: tuple[str, ...] = ()
    indexes: tuple[tuple[str, str], ...] = ()  # (index name, column)

    def create(self, dialect: Dialect) -> list[str]:
        types = TYPES[dialect]
        columns = []
        for name, kind in self.columns:
            base, _, rest = kind.partition(" ")
            columns.append(f"{name} {types[base]}{' NOT NULL' if rest == 'not null' else ''}")
        if self.primary_key:
            columns.append(f"PRIMARY KEY ({', '.join(self.primary_key)})")
        out = [f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(columns)})"]
        out += [f"CREATE INDEX IF NOT EXISTS {index} ON {self.name}({column})" for index, column in self.indexes]
        return out


_LOG_COLUMNS = (
    ("seq", "seq"), ("at", "real not null"), ("decision", "text not null"), ("reason", "text not null"),
    ("resource", "text not null"), ("version", "int"), ("session_id", "text"), ("tee", "text"),
    ("policy_id", "text"), ("policy_hash", "text"), ("attestation_id", "text"), ("ref", "text"), ("actor", "text"),
    ("detail", "text"), ("prev_hash", "text not null"), ("entry_hash", "text not null"), ("mac", "text"),
    ("evidence", "text"), ("tee_key", "text"), ("refs_hash", "text"))  # the last three: schema 5
# Columns schema 5 added to both logs (older databases get them by ALTER TABLE).
LOG_COLUMNS_V5 = (("evidence", "text"), ("tee_key", "text"), ("refs_hash", "text"))

TABLES = (
    Table("sessions", (("session_id", "text not null"), ("tee", "text not null"), ("nonce", "text not null"),
                       ("created_at", "real not null"), ("expires_at", "real not null"), ("state", "text not null"),
                       ("evidence_digest", "text"), ("token", "text")),
          ("session_id",), (("sessions_expiry", "expires_at"),)),
    Table("secrets", (("name", "text not null"), ("value", "blob not null")), ("name",)),
    Table("resources", (("path", "text not null"), ("version", "int not null"), ("state", "text not null"),
                        ("sealed", "blob not null"), ("policy_id", "text not null"), ("created_by", "text not null"),
                        ("created_at", "real not null"), ("mac", "text")), ("path", "version")),
    Table("policies", (("policy_id", "text not null"), ("version", "int not null"), ("dialect", "text not null"),
                       ("text", "text not null"), ("content_hash", "text not null"), ("created_by", "text not null"),
                       ("created_at", "real not null"), ("immutable", "int not null"), ("mac", "text")),
          ("policy_id", "version")),
    Table("reference_sets", (("name", "text not null"), ("body", "text not null"), ("mac", "text")), ("name",)),
    Table("attestations", (("attestation_id", "text not null"), ("at", "real not null"),
                           ("session_id", "text not null"), ("tee", "text not null"), ("claims", "text not null"),
                           ("mac", "text")), ("attestation_id",), (("attestations_at", "at"),)),
    Table("release_log", _LOG_COLUMNS),
    Table("refusal_log", _LOG_COLUMNS, indexes=(("refusal_log_at", "at"),)),
    Table("log_heads", (("chain", "text not null"), ("first_seq", "int not null"), ("anchor_hash", "text not null"),
                        ("head_seq", "int not null"), ("head_hash", "text not null"), ("mac", "text not null")),
          ("chain",)),
    Table("admin_token_ids", (("jti", "text not null"), ("expires_at", "real not null")), ("jti",)),
    Table("health", (("id", "int not null"), ("at", "real not null")), ("id",)),
    # The release log's Merkle tree: every complete subtree's hash (level 0: the leaves), and signed checkpoints.
    Table("log_tree", (("level", "int not null"), ("idx", "int not null"), ("hash", "blob not null")),
          ("level", "idx")),
    Table("log_checkpoints", (("size", "int not null"), ("note", "text not null"), ("at", "real not null")),
          ("size",)),
    # Issue 15 (kbs.store.owners): owners' public keys, owned keys (owner set, threshold; `kind` and `contributed`
    # say how the value came to be), proposals and their approvals (signatures, checked again whenever counted).
    Table("owners", (("name", "text not null"), ("public_key", "text not null"), ("created_by", "text not null"),
                     ("created_at", "real not null"), ("mac", "text not null")), ("name",)),
    Table("owned_resources", (("path", "text not null"), ("owners", "text not null"), ("threshold", "int not null"),
                              ("kind", "text not null"), ("contributed", "int not null"),
                              ("created_by", "text not null"), ("created_at", "real not null"),
                              ("mac", "text not null")), ("path",)),
    Table("proposals", (("id", "text not null"), ("resource", "text not null"), ("document", "text not null"),
                        ("status", "text not null"), ("created_by", "text not null"), ("created_at", "real not null"),
                        ("expires_at", "real not null"), ("closed_at", "real"), ("mac", "text not null")),
          ("id",), (("proposals_resource", "resource"),)),
    # Contributed keys (issue 15, item 3): who contributed, its own policy, its signature; the share itself is in
    # `secrets`, sealed under the KEK (kbs.owners.share_secret).
    Table("owner_contributions", (("path", "text not null"), ("owner", "text not null"), ("policy", "text"),
                                  ("signature", "text not null"), ("created_at", "real not null"),
                                  ("mac", "text not null")), ("path", "owner")),
    Table("proposal_approvals", (("proposal_id", "text not null"), ("owner", "text not null"),
                                 ("signature", "text not null"), ("at", "real not null")), ("proposal_id", "owner")),
    # One row: which KEK the database is sealed under and any rotation begun (public ids, never keys).
    Table("kek_state", (("id", "int not null"), ("kek_id", "text not null"), ("rotating_to", "text"),
                        ("changed_at", "real not null"), ("mac", "text not null")), ("id",)),
)


# What a release decision reads: any insert, update or delete in these tables bumps the decision generation,
# by a trigger in the same transaction, whoever writes (this broker, another replica, an operator's SQL).
# Owned keys and contributions too: a release of an owned key reads them through the same cache.
DECISION_TABLES = ("resources", "policies", "reference_sets", "owned_resources", "owner_contributions")
GENERATION = Table("decision_generation", (("id", "int not null"), ("value", "int not null")), ("id",))


def _generation_statements(dialect: Dialect) -> list[str]:
    out = [*GENERATION.create(dialect)]
    if dialect == "sqlite":
        out.append("INSERT OR IGNORE INTO decision_generation VALUES (1, 0)")
        for table in DECISION_TABLES:
            for event in ("INSERT", "UPDATE", "DELETE"):
                out.append(f"CREATE TRIGGER IF NOT EXISTS {table}_{event.lower()}_generation AFTER {event} ON {table} "
                           "BEGIN UPDATE decision_generation SET value = value + 1 WHERE id = 1; END")
        return out
    out.append("INSERT INTO decision_generation VALUES (1, 0) ON CONFLICT (id) DO NOTHING")
    out.append("CREATE OR REPLACE FUNCTION kbs_bump_decision_generation() RETURNS trigger LANGUAGE plpgsql AS "
               "$$ BEGIN UPDATE decision_generation SET value = value + 1 WHERE id = 1; RETURN NULL; END $$")
    for table in DECISION_TABLES:
        out.append(f"CREATE OR REPLACE TRIGGER {table}_generation AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE "
                   f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION kbs_bump_decision_generation()")
    return out


def statements(dialect: Dialect) -> list[str]:
    """CREATE statements for every table, index and trigger, idempotent (IF NOT EXISTS, OR REPLACE)."""
    return [*(sql for table in TABLES for sql in table.create(dialect)), *_generation_statements(dialect)]
