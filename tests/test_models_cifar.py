"""ResNet-18, PreAct ResNet-18 and WideResNet for 32x32 images."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_robust.errors import ConfigurationError
from lit_robust.models import PreActResNet18, PSwish, ResNet18, WideResNet
from lit_robust.models.preact_resnet import PreActBlock
from lit_robust.models.resnet import BasicBlock


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("make, parameters", [
    (ResNet18, 11_173_962),                      # the CIFAR ResNet-18 (Stutz et al. 2021, supplement Sec. F): 11.17M
    (PreActResNet18, 11_172_170),                # Rice et al.'s PreAct ResNet-18 (final BN + activation)
    (lambda: WideResNet(34, 10), 46_160_474),    # WRN-34-10: 46.2M
    (lambda: WideResNet(28, 10), 36_479_194),    # WRN-28-10: 36.5M
])
def test_parameter_counts_are_the_standard_ones(make, parameters):
    assert count(make()) == parameters


def test_number_of_classes_changes_only_the_classifier():
    assert count(ResNet18(num_classes=100)) - count(ResNet18()) == 90 * 512 + 90


def test_resnet18_keeps_32x32_resolution_in_the_stem():
    """3x3 stem with stride 1 and no max-pooling: the four stages see 32, 16, 8 and 4 pixels."""
    model = ResNet18(width=8).eval()
    sizes = []
    for stage in model.stages:
        stage.register_forward_hook(lambda module, inputs, output: sizes.append(output.shape[-1]))
    model(torch.rand(2, 3, 32, 32))
    assert sizes == [32, 32, 16, 16, 8, 8, 4, 4]
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)


@pytest.mark.parametrize("make", [lambda **kw: ResNet18(width=8, **kw), lambda **kw: PreActResNet18(width=8, **kw),
                                  lambda **kw: WideResNet(10, 1, **kw)])
def test_features_logits_and_normalisation_inside(make):
    torch.manual_seed(0)
    model = make(num_classes=7).eval()
    x = torch.rand(3, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (3, model.num_features)
    assert torch.allclose(model.classifier(features), model(x))
    assert model(x).shape == (3, 7)
    # the first layer whitens with CIFAR-10's mean and standard deviation (Stutz et al. 2021, supplement Sec. F)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    assert torch.allclose(model.normalize(x), (x - mean) / std)
    model.normalize = nn.Identity()
    assert torch.allclose(model((x - mean) / std), model.classifier(features), atol=1e-5)


@pytest.mark.parametrize("make, expected", [(lambda **kw: ResNet18(width=4, **kw), 17),
                                            (lambda **kw: PreActResNet18(width=4, **kw), 17),
                                            (lambda **kw: WideResNet(16, 1, **kw), 13)])
def test_every_activation_is_the_requested_one(make, expected):
    model = make(activation="pswish", activation_kwargs={"beta": 4.0})
    activations = [m for m in model.modules() if isinstance(m, PSwish)]
    assert len(activations) == expected and all(m.beta == 4.0 for m in activations)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    leaky = make(activation="leaky_relu", activation_kwargs={"slope": -0.2})
    assert {m.negative_slope for m in leaky.modules() if isinstance(m, nn.LeakyReLU)} == {-0.2}
    assert sum(isinstance(m, nn.SiLU) for m in make(activation=nn.SiLU).modules()) == expected


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ConfigurationError, match="activation"):
        ResNet18(activation="swishy")
    with pytest.raises(ConfigurationError, match="depth"):
        WideResNet(depth=30)
    with pytest.raises(ConfigurationError, match="dropout"):
        PreActResNet18(dropout=1.0)
    with pytest.raises(ConfigurationError, match="mean/std"):
        ResNet18(in_channels=1)
    assert ResNet18(in_channels=1, mean=[0.5], std=[0.25], width=4)(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False)


def test_basic_block_against_its_equations():
    """He et al.: relu(bn2(conv2(relu(bn1(conv1 x)))) + bn_s(conv_s x)), in eval mode."""
    torch.manual_seed(0)
    block = BasicBlock(4, 8, 2, "relu", {}).eval()
    for bn in (block.bn1, block.bn2, block.shortcut[1]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 4, 8, 8)
    out = F.relu(_bn(F.conv2d(x, block.conv1.weight, stride=2, padding=1), block.bn1))
    out = _bn(F.conv2d(out, block.conv2.weight, padding=1), block.bn2)
    shortcut = _bn(F.conv2d(x, block.shortcut[0].weight, stride=2), block.shortcut[1])
    assert torch.allclose(block(x), F.relu(out + shortcut), atol=1e-5)


def test_preact_block_against_its_equations():
    """He et al. (identity mappings): conv2(relu(bn2(conv1(a)))) + conv_s(a) with a = relu(bn1 x)."""
    torch.manual_seed(0)
    block = PreActBlock(4, 8, 2, "relu", {}).eval()
    for bn in (block.bn1, block.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 4, 8, 8)
    a = F.relu(_bn(x, block.bn1))
    out = F.conv2d(F.relu(_bn(F.conv2d(a, block.conv1.weight, stride=2, padding=1), block.bn2)),
                   block.conv2.weight, padding=1)
    assert torch.allclose(block(x), out + F.conv2d(a, block.shortcut.weight, stride=2), atol=1e-5)
    identity = PreActBlock(4, 4, 1, "relu", {}).eval()
    assert identity.shortcut is None


@pytest.mark.parametrize("make", [ResNet18, PreActResNet18, lambda **kw: WideResNet(10, 1, **kw)])
def test_dropout_is_random_in_training_only(make):
    torch.manual_seed(0)
    kwargs = {"width": 8} if make in (ResNet18, PreActResNet18) else {}
    model = make(dropout=0.3, **kwargs)
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules()) == len(model.stages)
    x = torch.rand(4, 3, 32, 32)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("make", [lambda **kw: ResNet18(width=8, **kw), lambda **kw: PreActResNet18(width=8, **kw),
                                  lambda **kw: WideResNet(10, 2, **kw)])
def test_channels_last_gives_the_same_function(make):
    torch.manual_seed(0)
    reference = make().eval()
    fast = make(channels_last=True).eval()
    fast.load_state_dict(reference.state_dict())
    convolutions = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convolutions)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    (grad_reference,) = torch.autograd.grad(reference(x).sum(), x)
    (grad_fast,) = torch.autograd.grad(fast(x).sum(), x)
    assert torch.allclose(fast(x), reference(x), atol=1e-5)
    assert torch.allclose(grad_fast, grad_reference, atol=1e-5)
