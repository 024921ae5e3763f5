"""Honesty checks of a member's maps against the folds and the test set.

An OOF map is honest only if the fold model that predicted it never saw the image's car: the map of
image i must come from fold `fold_of[i]` and from no other fold. Every refusal names the member,
the store path, one offending image, how many more there are, and the fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from carvana.errors import WorkbenchError, and_more
from oof.format import canonical_id, retrain_hint

if TYPE_CHECKING:
    from oof.store import Store


def check_coverage(store: Store, member: str, fold_of: Mapping[str, int], folds_hash: str) -> None:
    """WorkbenchError unless `member`'s OOF maps are exactly one per image of `fold_of`, each from fold_of[img].

    `folds_hash` is the sha256 hex of the folds.csv that `fold_of` came from; a member built on
    other folds is refused outright, since its maps were predicted by models that saw other cars.
    """
    where = f"{store.path / member}: member {member}"
    built_on = store.metadata(member)["folds_hash"]
    if built_on != folds_hash:
        raise WorkbenchError(
            f"{where} was built on other folds (folds_hash {built_on[:12]}..., folds.csv has {folds_hash[:12]}...); "
            f"its OOF maps would leak: {retrain_hint(member)}"
        )
    expected = {canonical_id(img): int(fold) for img, fold in fold_of.items()}
    written = store.train_folds(member)
    # Two maps of one image always include a wrong fold, so duplicates are caught as leaks too.
    leaks = sorted(img for img, folds in written.items() if img in expected and any(k != expected[img] for k in folds))
    if leaks:
        img = leaks[0]
        wrong = [k for k in written[img] if k != expected[img]]
        raise WorkbenchError(
            f"{where}: OOF map of {img} was written by fold {wrong[0]}, whose model trained on that car "
            f"(a leak; its car is held out by fold {expected[img]}){and_more(leaks)}: {retrain_hint(member)}"
        )
    extra = sorted(set(written) - set(expected))
    if extra:
        raise WorkbenchError(
            f"{where}: OOF map of {extra[0]} (fold {written[extra[0]][0]}), an image not in folds.csv"
            f"{and_more(extra)}; "
            f"the store belongs to other data: {retrain_hint(member)}"
        )
    missing = sorted(set(expected) - set(written))
    if missing:
        folds = sorted({expected[img] for img in missing})
        raise WorkbenchError(
            f"{where}: no OOF map of train image {missing[0]} (fold {expected[missing[0]]}){and_more(missing)}; "
            f"{'folds' if len(folds) > 1 else 'fold'} {', '.join(map(str, folds))} incomplete: {retrain_hint(member)}"
        )


def check_test(store: Store, member: str, test_ids: Iterable[str]) -> None:
    """WorkbenchError unless `member` has a test map for exactly the images `test_ids`."""
    where = f"{store.path / member}: member {member}"
    expected = {canonical_id(img) for img in test_ids}
    written = set(store.ids(member, "test"))
    missing, extra = sorted(expected - written), sorted(written - expected)
    if missing:
        raise WorkbenchError(
            f"{where}: no test map of {missing[0]}{and_more(missing)}; re-run `workbench fold-train` (it predicts "
            "missing test maps)"
        )
    if extra:
        raise WorkbenchError(
            f"{where}: test map of {extra[0]}, an image not in the test set{and_more(extra)}; the store belongs to "
            f"other data: {retrain_hint(member)}"
        )
