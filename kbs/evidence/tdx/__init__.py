"""Intel TDX evidence: the CC event log and its RTMR replay, and the TDX claims and trust vector."""
