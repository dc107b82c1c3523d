"""fod: Focus the Discrepancy (Yao et al., ICCV 2023) for image anomaly detection."""

__version__ = "0.1.0"
