"""The evidence report's sections, one per claim of the paper: convergence against the baseline, control
and best-of-N, guidance and the negative branch, chunk-level against step-level GRPO. Each is a mixin of
:class:`~miro.shapes.study.cells.ReportBase`; :class:`~miro.shapes.study.report.Report` combines them."""
