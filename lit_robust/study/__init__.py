"""Studies: many runs through submitit (:mod:`~lit_robust.study.runner`, ``python -m lit_robust.study``; the jobs
themselves :mod:`~lit_robust.study.jobs`), the report of their results as one table and plots
(:mod:`~lit_robust.study.report`, ``python -m lit_robust.study.report``), any set of models measured
(:mod:`~lit_robust.study.measure`, ``lit-robust-measure``; its models :mod:`~lit_robust.study.zoo`), and the
statistics over the models (:mod:`~lit_robust.study.statistics`) with their report
(:mod:`~lit_robust.study.measures_report`).

Nothing is imported here, so that ``python -m lit_robust.study.report`` runs the report as loaded once."""
