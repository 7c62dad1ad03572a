"""A callback's network and threat model, from an AdversarialModule or from a user's own LightningModule."""

import pytest
from pytorch_lightning import LightningModule
from torch import nn

from lit_robust.attacks import ThreatModel
from lit_robust.errors import ConfigurationError
from lit_robust.models import SmallCNN
from lit_robust.module_contract import network_of, threat_model_for
from lit_robust.modules import PGDAT


class Own(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(2, 2)


def test_network():
    own = Own()
    assert network_of(own, "net") is own.net
    assert network_of(own, lambda module: module.net) is own.net
    with pytest.raises(ConfigurationError, match=r"network='model'.*submodules: net"):
        network_of(own, "model", "FlatnessMonitor")
    module = PGDAT(SmallCNN(), epsilon=0.1, step_size=0.025)
    assert network_of(module) is module.model


def test_threat_model():
    module = PGDAT(SmallCNN(), epsilon=0.1, step_size=0.025)
    assert threat_model_for(module) == ThreatModel(0.1, 0.025, "linf")
    assert threat_model_for(module, epsilon=0.2) == ThreatModel(0.2, 0.025, "linf")
    assert threat_model_for(Own(), 0.3, 0.05) == ThreatModel(0.3, 0.05, "linf")
    with pytest.raises(ConfigurationError, match=r"^epsilon and step_size not set: RobustEarlyStopping"):
        threat_model_for(Own(), user="RobustEarlyStopping")
    with pytest.raises(ConfigurationError, match=r"^step_size not set"):
        threat_model_for(Own(), epsilon=0.1)
    with pytest.raises(ConfigurationError, match="epsilon=1.5"):
        threat_model_for(Own(), 1.5, 0.1)
    with pytest.raises(ConfigurationError, match="step_size=0.5"):
        threat_model_for(module, step_size=0.5)
