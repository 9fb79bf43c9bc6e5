"""``picorl report``: a run folder as one self-contained HTML page (curves, eval table, group browser)."""

from picorl.report.page import REPORT_FILE, render_report, write_report

__all__ = ["REPORT_FILE", "render_report", "write_report"]
