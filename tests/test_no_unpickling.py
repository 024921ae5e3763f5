"""Nothing a run folder or an import holds is unpickled (issue 23): a crafted training checkpoint and a
crafted .npy map are refused in one line, and the code they carry never runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import assert_user_error, run_cli


class Payload:
    """Unpickling this creates `marker`: the proof that a loader ran code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.slow
def test_a_crafted_checkpoint_in_a_run_folder_runs_nothing(tiny_config, tmp_path):
    import torch

    tiny_config.write_text(tiny_config.read_text() + "zoo:\n  train: {epochs: 1}\n  members: [unet_test_resnet_64]\n")
    assert run_cli("folds", "--config", str(tiny_config)).returncode == 0
    marker = tmp_path / "code_ran"
    fold = tmp_path / "run" / "members" / "unet_test_resnet_64" / "fold0"
    fold.mkdir(parents=True)
    torch.save({"model": Payload(marker)}, fold / "last.pt")
    result = run_cli("fold-train", "--config", str(tiny_config), "--fold", "0")
    assert "not a training checkpoint this workbench loads" in result.stdout + result.stderr
    assert result.returncode != 0 and not marker.exists()


def test_a_crafted_npy_map_is_refused_without_running_it(tiny_config, tiny_data, tmp_path):
    from carvana.dataset import CarvanaData

    assert run_cli("folds", "--config", str(tiny_config)).returncode == 0
    marker = tmp_path / "code_ran"
    oof, test = tmp_path / "oof", tmp_path / "test"
    for folder, split in [(oof, "train"), (test, "test")]:
        folder.mkdir()
        for img in CarvanaData(tiny_data).ids(split):
            np.save(folder / f"{img}.npy", np.zeros((64, 96), dtype=np.uint8))
    first = sorted(oof.iterdir())[0]
    np.save(first, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    result = run_cli("import-member", "mate", "--config", str(tiny_config), "--oof", str(oof), "--test", str(test))
    assert_user_error(result, str(first), "no pickles")
    assert not marker.exists()
