"""The catalog of open models (what sizing needs, where to get them) and the cloud price table."""

from models.catalog import Catalog, ModelSpec, load_catalog
from models.prices import Price, load_prices

__all__ = ["Catalog", "ModelSpec", "Price", "load_catalog", "load_prices"]
