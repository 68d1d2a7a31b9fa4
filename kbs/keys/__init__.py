"""Keys the broker releases and the envelopes that carry them to a guest."""
