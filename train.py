"""Train and evaluate adversarially robust models: ``python train.py fit --config configs/digits/at.yaml``."""

from lit_robust.cli import main

if __name__ == "__main__":
    main()
