"""medparse-gateway: shared core (settings, imaging, masks, endpoint client, CLI)."""

__version__ = "0.1.0"
