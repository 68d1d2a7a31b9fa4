"""Release policies: claims document, dialects (SKR-style JSON and Rego), reference values."""
