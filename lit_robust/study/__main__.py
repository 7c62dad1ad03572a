"""``python -m lit_robust.study``: the study runner (:func:`lit_robust.study.runner.main`)."""

from lit_robust.study.runner import main

if __name__ == "__main__":
    main()
