"""The broker daemon: KBS protocol 0.4.0, admin API, metrics and health, on aiohttp."""
