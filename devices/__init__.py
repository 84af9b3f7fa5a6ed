"""Devices: profiles (data files with budgets), host detection, and `hiap bench`, where a profile picks the runner."""
