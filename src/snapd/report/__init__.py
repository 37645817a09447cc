"""The morning report: where every thread of a core was, without opening a debugger.

    from snapd import report
    rep = report.run_report(core_path, firing_tid=tid, exe=exe, context=ctx, event=ev)
    print(report.render_text(rep))     # coredumpctl-like stack traces, then the modules
    report.where(rep)                  # "aeMain": the WHERE column of list-cores

``run_report`` computes the report in a sandboxed worker (:mod:`snapd.sandbox`) and always
returns a dict (``rep["error"]`` says why when it failed or timed out). Native frames come from
drgn, Python frames and the GIL holder from pystack, the package notes from the modules' ELF
headers. The shape is in :mod:`snapd.report.model`.
"""

from snapd.report.model import MAX_EVENT_STACK, EventStack, Report, ReportLimits
from snapd.report.render import render_text, where
from snapd.report.run import ReportJob, run_report, start_report

__all__ = [
    "MAX_EVENT_STACK",
    "EventStack",
    "Report",
    "ReportJob",
    "ReportLimits",
    "render_text",
    "run_report",
    "start_report",
    "where",
]
