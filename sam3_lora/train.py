"""``python -m sam3_lora.train``: compose the config, build SAM3, inject LoRA.

Hydra composes ``conf/train.yaml`` with the ``model`` and ``lora`` groups; the run
directory (``outputs/<date>/<time>``) gets Hydra's saved config, the parameter table
and the freshly initialised adapter.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sam3_lora.lora import LoraConfigError, inject_lora, parameter_summary, save_adapter
from sam3_lora.models import CheckpointNotFoundError

log = logging.getLogger("sam3_lora.train")

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def run(cfg: DictConfig, run_dir: Path) -> dict:
    torch.manual_seed(cfg.seed)
    model = instantiate(cfg.model)
    lora_config = instantiate(cfg.lora, _convert_="all")
    report = inject_lora(model, lora_config)
    log.info(report.describe())
    table = parameter_summary(model)
    log.info("trainable parameters by part:\n%s", table)
    result = {"targets": len(report.targets), "table": table}
    if cfg.save_adapter:
        path = save_adapter(model, run_dir / "adapter.safetensors", base_model=cfg.model.name)
        result["adapter"] = path
        log.info("adapter written: %s (%.2f MB)", path, path.stat().st_size / 1e6)
    return result


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run(cfg, run_dir)
    except (CheckpointNotFoundError, LoraConfigError) as e:
        log.error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    main()
