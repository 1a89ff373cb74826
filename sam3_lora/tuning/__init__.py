"""How a run tunes SAM3: one class per method, built by the ``lora`` config group's ``_target_``.

* :class:`TuningMethod` (``method.py``): the interface: train (``apply``), save and load the shipped
  weights, describe itself (results label, table title, model-card lines, export formats).
* :class:`LoraTuning` (``lora.py``), :class:`FullFineTuning` (``full.py``, ``lora=none``).
* ``records.py``: a method read back from a run directory's files, safely.

A new method is one subclass and one ``conf/lora/<option>.yaml`` with ``_target_`` naming it.
"""

from sam3_lora.tuning.full import FullFineTuning
from sam3_lora.tuning.lora import LoraTuning
from sam3_lora.tuning.method import NoSettings, TuningMethod
from sam3_lora.tuning.records import TuningRecordError, method_of_record, method_of_run_config, method_of_section

__all__ = [
    "FullFineTuning",
    "LoraTuning",
    "NoSettings",
    "TuningMethod",
    "TuningRecordError",
    "method_of_record",
    "method_of_run_config",
    "method_of_section",
]
