"""``python -m sam3_lora.report multirun/<date>/<time>``: a sweep's results table, by hand.

The sweeps of ``conf/experiment`` write it themselves when their last run ends; this
command rewrites it (after adding runs, say). What goes in it: ``sam3_lora/runs/sweep_report.py``.
"""

from __future__ import annotations

import argparse
import sys

from sam3_lora.runs.sweep_report import SweepReportError, write_report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", help="a multirun directory (its runs' results.json are read)")
    args = ap.parse_args(argv)
    try:
        md = write_report(args.sweep_dir)
    except SweepReportError as e:
        sys.exit(f"report: {e}")
    print(md.read_text())
    print(f"written: {md}, sweep_report.csv, sweep_report_runs.csv, sweep_report.png")


if __name__ == "__main__":
    main()
