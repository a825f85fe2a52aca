"""A browsable, self-contained HTML report of a finished dissection (``discover report RUN``)."""

from discover_ray.report.build import Report, build_report, default_folder
from discover_ray.report.thumbnails import ProbeMismatch

__all__ = ["ProbeMismatch", "Report", "build_report", "default_folder"]
