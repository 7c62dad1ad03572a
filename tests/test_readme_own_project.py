"""Every Python snippet of the README's "In your own Lightning project" section runs as written, in order, on
tiny stand-ins: ``my_datamodule`` (small digits), a batch ``x, y`` and a Trainer of one short epoch."""

import functools
import os
import re

import pytorch_lightning
import torch

from lit_robust.data import DigitsDataModule

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def snippets():
    """The fenced Python blocks of the section."""
    text = open(README).read()
    section = text[text.index("## In your own Lightning project"):]
    section = section[:section.index("\n## ", 3)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_states_the_contracts():
    text = open(README).read()
    section = text[text.index("## In your own Lightning project"):text.index("## CIFAR-10 on a GPU")]
    for words in ("lit_robust.callbacks", "batch_keys", "(x, y, index)", "[0, 1]", "Normalize", "network",
                  "val/rloss", "train/rloss", '`norm` is `"linf"` unless told'):
        assert words in section, words


def test_every_snippet_of_the_section_runs(tmp_path, monkeypatch):
    blocks = snippets()
    assert len(blocks) == 3
    tiny = functools.partial(pytorch_lightning.Trainer, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                             accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    monkeypatch.setattr(pytorch_lightning, "Trainer", tiny)
    data = DigitsDataModule(held_out_size=16, eval_size=32, train_eval_size=16, batch_size=16)
    data.setup("fit")
    x, y = next(iter(data.test_dataloader()))
    namespace = {"my_datamodule": data, "x": x, "y": y}
    for block in blocks:
        exec(compile(block, README, "exec"), namespace)
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    scaled, labels, index = namespace["scale"]([(images[i], torch.tensor(i), i) for i in range(3)])
    assert torch.equal(scaled, images.float() / 255) and torch.equal(index, torch.arange(3))
    assert (namespace["x_adv"] - x).abs().max() <= 8 / 255 + 1e-6
    assert namespace["module"].trainer.global_step == 2
