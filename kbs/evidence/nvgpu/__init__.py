"""NVIDIA confidential GPUs (Hopper, Blackwell): SPDM measurement reports as additional evidence."""
