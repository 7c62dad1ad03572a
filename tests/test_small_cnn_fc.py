"""SmallCNNFC: the layers of its description written out, its activation everywhere, features and logits,
normalisation inside, clear errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_robust.errors import ConfigurationError
from lit_robust.models import PSwish, SmallCNNFC
from lit_robust.models.small_cnn import DIGITS_MEAN, DIGITS_STD


def written_out(model, x):
    """conv-BN-ReLU (32), conv-BN-ReLU (64), 2x2 max-pool, flatten (1024), Linear(256) + ReLU, Linear(10),
    with the layers' own weights, on (x - mean) / std."""
    h = (x - DIGITS_MEAN[0]) / DIGITS_STD[0]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for conv, norm in zip(convs, norms):
        h = F.conv2d(h, conv.weight, padding=1)
        h = F.relu(F.batch_norm(h, norm.running_mean, norm.running_var, norm.weight, norm.bias, training=False))
    h = F.max_pool2d(h, 2).flatten(1)
    hidden, classifier = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert h.shape[1] == 1024 and hidden.out_features == 256
    features = F.relu(hidden(h))
    return features, classifier(features)


def test_layers_features_and_logits_match_the_description():
    torch.manual_seed(0)
    model = SmallCNNFC().eval()
    for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):  # non-trivial statistics
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
    x = torch.rand(5, 1, 8, 8)
    features, logits = written_out(model, x)
    assert model.num_features == 256
    assert torch.allclose(model.forward_features(x), features, atol=1e-5)
    assert torch.allclose(model(x), logits, atol=1e-5)
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [32, 64]


def test_activation_everywhere_and_sizes():
    model = SmallCNNFC(width=4, hidden=16, num_classes=7, in_channels=3, image_size=16,
                       activation="pswish", activation_kwargs={"beta": 2.0})
    activations = [m for m in model.modules() if isinstance(m, PSwish)]
    assert len(activations) == 3 and all(m.beta == 2.0 for m in activations)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    x = torch.rand(2, 3, 16, 16)
    assert model.forward_features(x).shape == (2, 16) and model(x).shape == (2, 7)


@pytest.mark.parametrize("kwargs, setting", [({"activation": "nope"}, "activation"), ({"hidden": 0}, "hidden"),
                                             ({"image_size": 7}, "image_size"), ({"width": 0}, "width"),
                                             ({"dropout": 1.0}, "dropout")])
def test_bad_settings_are_refused(kwargs, setting):
    with pytest.raises(ConfigurationError, match=setting):
        SmallCNNFC(**kwargs)
