"""Devices: profiles with budgets, host detection and the per-device bench protocol (issue 4; not built yet)."""
