"""Test harnesses: local stand-ins for the machines cluster-launcher drives (see containers.py)."""
