"""Datasets in nnU-Net v2 raw format: reading and validation, fingerprint and plan, MONAI
preprocessing, and the synthetic PET/CT demo data."""
