"""The `Run`: one experiment's run folder, its checked data and its folds, loaded once per verb.

Every verb opens a Run first (`Run.open(config)`): that is the one place the data check runs, and
every step after it takes the Run instead of re-reading the data. Sizes inside the workbench are
(H, W); (W, H) appears only in YAML and CLI text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from carvana.dataset import CarvanaData
from carvana.errors import WorkbenchError
from carvana.validate import DataSummary, check_data
from folds import Folds
from oof import Store
from stacking.maps import CHUNK, PhotoReader, StoreReader, TestMaps, TrainMaps, truth_at
from workbench.config import ExperimentConfig
from workbench.fingerprint import check_fingerprint
from workbench.runfolder import RunPaths, open_run_dir
from workbench.steps import FOLDS_CSV, load_folds


@dataclass(frozen=True)
class CheckedData:
    """A verb's data check (summary) and the data fingerprint it matched, handed by the driver to its jobs so that
    no job checks the data again (`make demo` checked it 26 times before)."""

    summary: DataSummary
    fingerprint: dict


@dataclass
class Run:
    """A run folder with its config, checked data (`summary`) and folds."""

    config: ExperimentConfig
    data: CarvanaData
    summary: DataSummary
    fingerprint: dict = field(default_factory=dict)

    @classmethod
    def open(cls, config: ExperimentConfig, checked: CheckedData | None = None) -> Run:
        """Refuse a folder that is not a run (workbench.runfolder), check the data once (headers and CSVs,
        see carvana.validate), refuse data other than the run's (workbench.fingerprint), and open the run.
        A job of a verb passes the driver's `checked` data instead: the driver checked it, the job trusts that."""
        open_run_dir(config.run_dir)
        if checked is not None:
            return cls(config, CarvanaData(config.data), checked.summary, checked.fingerprint)
        data, summary = CarvanaData(config.data), check_data(config.data)
        has_folds = (config.run_dir / FOLDS_CSV).is_file()
        return cls(config, data, summary, check_fingerprint(config.run_dir, data, summary, record=has_folds))

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir

    @property
    def checked(self) -> CheckedData:
        """This run's data check, for the jobs the verb hands work to."""
        return CheckedData(self.summary, self.fingerprint)

    @property
    def paths(self) -> RunPaths:
        """Every path of the run folder (`workbench.runfolder.RunPaths`)."""
        return RunPaths(self.config.run_dir)

    @property
    def native_hw(self) -> tuple[int, int]:
        """(H, W) of the photos."""
        return self.summary.size[1], self.summary.size[0]

    @property
    def resolution(self) -> tuple[int, int]:
        """(H, W) of the store's maps: `oof.resolution` or the photos' own size."""
        if self.config.oof.resolution is None:
            return self.native_hw
        width, height = self.config.oof.resolution
        return height, width

    @cached_property
    def folds(self) -> Folds:
        return load_folds(self.config)

    @cached_property
    def members_store(self) -> Store:
        return Store(self.paths.members)

    @cached_property
    def entries_store(self) -> Store:
        return Store(self.paths.entries)

    def check_resolution(self, members: Sequence[str]) -> None:
        """Refuse members whose maps are not at the config's store resolution (nothing is overwritten)."""
        height, width = self.resolution
        for member in members:
            found = self.members_store.resolution(member)
            if tuple(found) != (height, width):
                raise WorkbenchError(
                    f"{self.members_store.path / member}: maps are {found[1]}x{found[0]}, the config's store "
                    f"resolution is {width}x{height}; run `workbench fold-train --retrain {member}`, or set "
                    f"`oof.resolution: {found[1]}x{found[0]}` in the config"
                )

    def truth(self, img: str):
        """(H, W) uint8 0/1 truth of a train image at the store's resolution."""
        return truth_at(self.data.train_rles[img], self.native_hw, self.resolution)

    def train_maps(self, members: Sequence[str], chunk: int = CHUNK) -> TrainMaps:
        """The members' OOF maps of every train image with their truths, streamed from the store."""
        members = tuple(members)
        return TrainMaps(
            StoreReader(self.members_store, members, "train"),
            self.truth,
            self.folds.fold_of,
            members,
            chunk,
            threshold_range=self.config.tune.threshold_range,
            photo=PhotoReader(self.data.root, "train"),
        )

    def test_maps(self, members: Sequence[str], chunk: int = CHUNK) -> TestMaps:
        reader = StoreReader(self.members_store, tuple(members), "test")
        return TestMaps(reader, tuple(self.data.test_ids), chunk, photo=PhotoReader(self.data.root, "test"))
