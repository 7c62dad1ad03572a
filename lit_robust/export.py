"""Export the network's weights of a checkpoint to a file a plain ``nn.Module`` loads:
``python -m lit_robust.export CKPT OUT`` writes ``OUT`` with ``torch.save(state_dict)``, the keys without
the module's ``model.`` prefix, so that ``network.load_state_dict(torch.load(OUT))`` works. The early-stopped
weights are those of RobustEarlyStopping's checkpoint (``checkpoints/early_stopping.ckpt``)."""

import argparse
import logging
import sys
from typing import Dict, Optional

import torch
from torch import Tensor

from lit_robust.errors import ConfigurationError, check

log = logging.getLogger(__name__)
PREFIX = "model."


def network_weights(ckpt_path: str) -> Dict[str, Tensor]:
    """The tensors of the network (``AdversarialModule.model``) in Lightning checkpoint ``ckpt_path``, by their
    names inside the network."""
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as error:  # whatever the reason, the file is not a checkpoint to export
        raise ConfigurationError(f"ckpt_path={ckpt_path!r} is not allowed: it cannot be read as a checkpoint "
                                 f"({type(error).__name__}: {error}).") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    check(isinstance(state, dict), "ckpt_path", ckpt_path, "a Lightning checkpoint (a file with a state_dict)")
    weights = {name[len(PREFIX):]: value for name, value in state.items() if name.startswith(PREFIX)}
    check(bool(weights), "ckpt_path", ckpt_path, "a checkpoint of an AdversarialModule (tensors named model.*)")
    return weights


def export(ckpt_path: str, out: str) -> Dict[str, Tensor]:
    """Write the network's weights of ``ckpt_path`` to ``out``; returns them."""
    weights = network_weights(ckpt_path)
    torch.save(weights, out)
    log.info("%d tensors of the network written to %s", len(weights), out)
    return weights


def main(args: Optional[list] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt_path", help="a checkpoint written by train.py or a Lightning Trainer")
    parser.add_argument("out", help="the file to write")
    options = parser.parse_args(args)
    try:
        export(options.ckpt_path, options.out)
    except ConfigurationError as error:
        sys.stderr.write(f"error: {error}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
