"""``python -m sam3_lora.tradeoff run_dir=...``: a LoRA run's target gain against what it keeps of its
source, at each adapter scale from 0 (the base) to 1 (as trained), and the scale to ship.

Both the run's target dataset and its retention dataset (the run's own ``retention``, or one given:
``retention=coco retention.root=/data/source``) are scored on their held-out splits at each of
``scales``; the scale is chosen on the retention valid split (the largest whose segm AP drop against
the base stays within ``budget``). Writes ``tradeoff.json`` / ``.csv`` / ``.md`` / ``.png`` into the run
directory (or ``output=``) and prints the table. The library part: ``sam3_lora/pipeline/tradeoff.py``.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from sam3_lora.core.conf import CONF_DIR
from sam3_lora.core.device import resolve_device
from sam3_lora.core.errors import UserError, exit_on_user_error
from sam3_lora.core.outputs import check_output
from sam3_lora.data.prepare import prepare_dataset
from sam3_lora.pipeline import tradeoff
from sam3_lora.pipeline.settings import check_use_settings, run_command
from sam3_lora.pipeline.tuned import RunDirError, load_tuned, recorded_dataset, run_config

log = logging.getLogger("sam3_lora.tradeoff")


class TradeOffError(UserError, ValueError):
    """A trade-off that cannot be scanned as asked."""


def retention_dataset(cfg: DictConfig):
    """The retention dataset given on the command line, else the run's own."""
    if cfg.get("retention"):
        from hydra.utils import instantiate

        return instantiate(cfg.retention)
    recorded = run_config(cfg.run_dir).get("retention")
    if not recorded:
        raise TradeOffError(
            f"{cfg.run_dir} was trained without a retention dataset: give one (retention=coco "
            "retention.root=/path/to/source/export, or retention=toy_base)"
        )
    return recorded_dataset(recorded, f"{cfg.run_dir} (retention)")


def run(cfg: DictConfig):
    check_use_settings(cfg)
    check_output(cfg.output or cfg.run_dir, "output", folder=True)
    scales = [float(s) for s in cfg.scales]
    tuned = load_tuned(OmegaConf.create({"run_dir": cfg.run_dir, "adapter": None, "merge": False}))
    if tuned.adapter is None or tuned.dataset is None:
        raise RunDirError(f"{cfg.run_dir}: a LoRA training run (an adapter and its dataset) is needed")
    retention = retention_dataset(cfg)
    device = resolve_device(cfg.device)
    loader = dict(image_size=tuned.model.image_size, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    with tempfile.TemporaryDirectory(prefix="sam3_lora_tradeoff_") as clean:
        target = prepare_dataset(tuned.dataset, Path(clean) / "target", splits=("valid", "test"))
        kept = prepare_dataset(retention, Path(clean) / "retention", splits=("valid", "test"))
        kept.require("valid")  # the scale is chosen there
        result = tradeoff.scan(
            tuned.model.to(device), target, kept, scales, cfg.budget, device, {**loader, "max_dets": cfg.max_dets}
        )
    files = tradeoff.write(result, Path(cfg.output or cfg.run_dir))
    log.info("\n%s\nwritten: %s", files["md"].read_text(), ", ".join(str(p) for p in files.values()))
    return result


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="tradeoff")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    run_command(main)
