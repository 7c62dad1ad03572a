"""The names under which metrics are logged, written to ``metrics.json`` and read back by the report.

TensorBoard groups the metrics by prefix; ``docs/architecture.md`` ("Metric names") says what each one is.
Errors are fractions in [0, 1]; RErr counts the examples misclassified clean or under the attack; RLoss is the
cross-entropy at the adversarial example.
"""

# prefixes: one per group of metrics
TRAIN = "train/"
TRAIN_STEP = "train_step/"
VAL = "val/"
TEST = "test/"
FLATNESS = "flatness/"
LANDSCAPE = "landscape/"
ROBUST_OVERFITTING = "robust_overfitting/"
EARLY_STOPPING = "early_stopping/"
# what the split after a metric's name says when it was measured on the train-eval split
TRAIN_SUFFIX = "_train"

# the training adversarial examples (AdversarialModule)
TRAIN_LOSS = TRAIN + "loss"
TRAIN_ERR = TRAIN + "err"
TRAIN_RLOSS = TRAIN + "rloss"
# the held-out split (AdversarialModule)
VAL_RLOSS = VAL + "rloss"
# the evaluation split (AdversarialModule; with test_on_train also on the train-eval split)
TEST_ERR = TEST + "err"
TEST_RERR_PGD = TEST + "rerr_pgd"
TEST_RLOSS_PGD = TEST + "rloss_pgd"
TEST_RERR_AA = TEST + "rerr_aa"
TEST_RERR_PGD_TRAIN = TEST_RERR_PGD + TRAIN_SUFFIX
TEST_RLOSS_PGD_TRAIN = TEST_RLOSS_PGD + TRAIN_SUFFIX
TEST_RERR_AA_TRAIN = TEST_RERR_AA + TRAIN_SUFFIX
# the flatness measures (FlatnessMonitor, LandscapeMonitor)
FLATNESS_AVG_RLOSS = FLATNESS + "avg_rloss"
FLATNESS_WORST_RLOSS = FLATNESS + "worst_rloss"
FLATNESS_AVG_LOSS = FLATNESS + "avg_loss"
FLATNESS_WORST_LOSS = FLATNESS + "worst_loss"
FLATNESS_LAMBDA_MAX = FLATNESS + "lambda_max"
FLATNESS_INPUT_LAMBDA_MAX = FLATNESS + "input_lambda_max"
# robust overfitting on the held-out split (RobustOverfitting; the report derives rise_absolute)
ROBUST_OVERFITTING_RLOSS = ROBUST_OVERFITTING + "rloss"
ROBUST_OVERFITTING_BEST_RLOSS = ROBUST_OVERFITTING + "best_rloss"
ROBUST_OVERFITTING_FINAL_RLOSS = ROBUST_OVERFITTING + "final_rloss"
ROBUST_OVERFITTING_BEST_EPOCH = ROBUST_OVERFITTING + "best_epoch"
ROBUST_OVERFITTING_RISE_ABSOLUTE = ROBUST_OVERFITTING + "rise_absolute"
# early stopping on the held-out split (RobustEarlyStopping)
EARLY_STOPPING_RERR = EARLY_STOPPING + "rerr"
EARLY_STOPPING_BEST_RERR = EARLY_STOPPING + "best_rerr"
EARLY_STOPPING_BEST_EPOCH = EARLY_STOPPING + "best_epoch"
