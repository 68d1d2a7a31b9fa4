"""The broker's audit trail: hash-chained logs of decisions and changes."""
