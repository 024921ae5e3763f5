"""The checked store of out-of-fold (OOF) and test probability maps: `from oof import Store`."""

from oof.format import FORMAT, FORMAT_VERSION, canonical_id
from oof.store import MemberWriter, Store
from oof.swap import rebuild, recover

__all__ = ["FORMAT", "FORMAT_VERSION", "MemberWriter", "Store", "canonical_id", "rebuild", "recover"]
