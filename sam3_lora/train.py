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

from sam3_lora.lora import AdapterError, LoraConfigError, inject_lora, parameter_summary, save_adapter
from sam3_lora.models import CheckpointNotFoundError

log = logging.getLogger("sam3_lora.train")

# Errors in the user's config or files: reported as one clear message, exit code 2.
USER_ERRORS = (CheckpointNotFoundError, LoraConfigError, AdapterError)

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
    except Exception as e:  # noqa: BLE001 - user errors are reported without a traceback
        cause = _user_error(e)
        if cause is None:
            raise
        log.error("%s", cause)
        sys.exit(2)


def _user_error(e: BaseException):
    """The configuration or input error behind ``e`` (Hydra wraps errors raised while
    instantiating), or None for a genuine bug that deserves its traceback."""
    while e is not None:
        if isinstance(e, USER_ERRORS):
            return e
        e = e.__cause__
    return None


if __name__ == "__main__":
    main()
