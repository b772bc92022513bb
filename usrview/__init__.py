"""usrview: /usr as a read-only view over per-package btrfs subvolumes, checked
against the signed RPM headers of the distribution."""

__version__ = "0.1.0"
