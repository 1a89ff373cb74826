"""``python -m sam3_lora.check [overrides]``: is this machine ready to train?

What a first run needs, checked by one command: Python, PyTorch and CUDA, sam3 and its
tokenizer vocabulary, the settings' values, the base checkpoint, the data (present and valid), the checkpoint
``trainer.resume`` names (if set), a writable output folder. Takes the same overrides as
``sam3_lora.train`` and ends with the command to run. Exit code 0 when training can start,
1 otherwise.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import List

from sam3_lora.data.config import SPLIT_NAMES
from sam3_lora.benchmarks.run import readiness
from sam3_lora.pipeline.readiness import Check, base_weights, training_data
from sam3_lora.pipeline.settings import ConfigError, check_settings, compose


def _python() -> Check:
    ok = (3, 10) <= sys.version_info[:2] <= (3, 12)
    return "Python 3.10-3.12", ok, platform.python_version()


def _torch() -> List[Check]:
    import torch

    checks = [("PyTorch", True, torch.__version__)]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        bf16 = torch.cuda.is_bf16_supported()
        checks.append(("CUDA", True, f"{torch.cuda.device_count()} GPU(s): {names}; bf16 {'yes' if bf16 else 'no'}"))
    else:
        checks.append(("CUDA", True, "not available: CPU only (fine for the tiny model; the full model wants a GPU)"))
    try:
        import torchvision
        from torchvision.ops import nms

        nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
        checks.append(("torchvision ops", True, torchvision.__version__))
    except Exception as e:  # noqa: BLE001 - report whatever broke
        checks.append(("torchvision ops", False, f"{e}; reinstall torch and torchvision together from the index"))
    return checks


def _sam3() -> List[Check]:
    try:
        version = metadata.version("sam3")
    except metadata.PackageNotFoundError:
        return [("sam3", False, "not installed: pip install -e .")]
    from sam3_lora.models.assembly import default_bpe_path

    try:
        bpe = default_bpe_path()
        return [("sam3", version == "0.1.4", f"{version} (0.1.4 expected)"), ("BPE vocabulary", True, bpe)]
    except FileNotFoundError as e:
        return [("sam3", True, version), ("BPE vocabulary", False, str(e))]


def _data(dataset) -> List[Check]:
    """The training split (needed), then every split validated as training will (nothing written
    where the data is: repairs go to a temporary folder)."""
    import tempfile

    from sam3_lora.data.prepare import prepare_dataset

    needed = training_data(dataset)
    if dataset.generate is not None or not needed[1]:
        return [needed]
    checks = []
    with tempfile.TemporaryDirectory(prefix="sam3_lora_check_") as scratch:
        prepared = prepare_dataset(dataset, Path(scratch), strict=False)
    for split in SPLIT_NAMES:
        spec, report = dataset.split(split), prepared.reports.get(split)
        if report is None:
            where = "not configured" if spec is None else f"{spec.ann_file} not found"
            checks.append((f"data: {split}", split != "train", f"{where} (optional)"))
            continue
        detail = f"{report.num_images} images, {report.num_annotations} annotations"
        if report.errors:
            detail += "; problems:\n" + report.summary()
        elif report.repaired:
            detail += f"; {sum(report.repaired.values())} annotations will be repaired or skipped"
        checks.append((f"data: {split}", not report.errors, detail))
    return checks


def _resume(trainer) -> List[Check]:
    """``trainer.resume``: a training checkpoint (or a run directory holding one) that loads."""
    from sam3_lora.core.errors import UserError
    from sam3_lora.training import checkpoint as ckpt

    explicit = trainer.resume
    if not explicit:
        return []
    try:
        # an explicit path does not depend on the run directory (not yet created here)
        path = ckpt.find_resume_checkpoint(Path("."), str(explicit))
        state = ckpt.load(path)  # refuses other kinds of file, saying what they are
    except UserError as e:
        return [("trainer.resume", False, str(e))]
    return [("trainer.resume", True, f"{path} (epoch {state.get('epoch')}, step {state.get('step')})")]


def _outputs() -> Check:
    out = Path("outputs")
    try:
        out.mkdir(exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("ok")
        probe.unlink()
        return "outputs/ writable", True, str(out.resolve())
    except OSError as e:
        return "outputs/ writable", False, str(e)


def _run_checks(overrides: List[str]) -> List[Check]:
    """The settings exactly as ``train`` checks them; the files they name only when they are valid."""
    try:
        settings = check_settings(compose("train", overrides))
    except ConfigError as e:
        return [("settings", False, str(e))]
    checks = [("settings", True, "every group's values valid"), base_weights(settings.config.model)]
    if settings.benchmark is not None:
        checks.append(readiness(settings.benchmark))
    return checks + _data(settings.dataset) + _resume(settings.trainer)


def main(argv=None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    checks = [_python(), *_torch(), *_sam3(), *_run_checks(overrides), _outputs()]
    for what, ok, detail in checks:
        print(f"[{'ok' if ok else 'FAIL'}] {what}: {detail}")
    ready = all(ok for _, ok, _ in checks)
    command = "python -m sam3_lora.train " + " ".join(overrides)
    print(f"\nready: {command.strip()}" if ready else "\nnot ready: fix the FAIL lines above, then run this again")
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
