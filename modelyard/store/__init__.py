"""The local store: an OCI image layout on disk (see store.py for the layout)."""

from modelyard.store.store import ModelParts, PrunePlan, Store, VerifyReport

__all__ = ["ModelParts", "PrunePlan", "Store", "VerifyReport"]
