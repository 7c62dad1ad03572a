"""Studies: many runs through submitit (:mod:`~lit_robust.study.runner`, ``python -m lit_robust.study``), the
report of their results as one table and plots (:mod:`~lit_robust.study.report`, ``python -m
lit_robust.study.report``) and the statistics it uses (:mod:`~lit_robust.study.statistics`).

Nothing is imported here, so that ``python -m lit_robust.study.report`` runs the report as loaded once."""
