"""``python -m sam3_lora.report multirun/<date>/<time>``: a sweep's results table, by hand.

The sweeps of ``conf/experiment`` write it themselves when their last run ends; this
command rewrites it (after adding runs, say). What goes in it: ``sam3_lora/runs/sweep_report.py``.
"""

from __future__ import annotations

import sys

from sam3_lora.core.errors import UserError
from sam3_lora.core.outputs import check_output
from sam3_lora.core.schema import parse_command_line
from sam3_lora.pipeline.use_settings import ReportSettings
from sam3_lora.runs.sweep_report import REPORT_FILES, write_report


def main(argv=None) -> int:
    try:
        settings = parse_command_line(ReportSettings, argv, __doc__)
        check_output(settings.sweep_dir, "sweep_dir", folder=True)
        md = write_report(settings.sweep_dir)
    except UserError as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    print(md.read_text())
    print(f"written: {', '.join(str(md.with_name(name)) for name in REPORT_FILES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
