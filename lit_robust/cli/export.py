"""Export the network's weights of a checkpoint to a file a plain ``nn.Module`` loads:
``python -m lit_robust.cli.export CKPT OUT`` writes ``OUT`` with ``torch.save(state_dict)``, the keys without
the module's ``model.`` prefix, so that ``network.load_state_dict(torch.load(OUT))`` works. Which weights:
``--weights saved`` (default) the checkpoint's ``state_dict``, which holds the averaged weights when the run
used ``WeightAveraging`` or ``StochasticWeightAveraging``; ``--weights current`` the weights training had
reached (``current_model_state``, kept next to an average). The early-stopped weights are those of
RobustEarlyStopping's checkpoint (``checkpoints/early_stopping.ckpt``)."""

import argparse
import logging
import os
import sys
from typing import Dict, Literal, Optional

import torch
from torch import Tensor

from lit_robust.errors import ConfigurationError, check, check_readable_file

log = logging.getLogger(__name__)
PREFIX = "model."


Weights = Literal["saved", "current"]


def network_weights(ckpt_path: str, weights: Weights = "saved") -> Dict[str, Tensor]:
    """The tensors of the network (``AdversarialModule.model``) in Lightning checkpoint ``ckpt_path``, by their
    names inside the network: those of its ``state_dict`` (``"saved"``: the average where weights were
    averaged) or of its ``current_model_state`` (``"current"``: the weights training had reached)."""
    check_readable_file(ckpt_path, "ckpt_path", "a checkpoint file written by train.py or a Lightning Trainer")
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as error:  # whatever the reason, the file is not a checkpoint to export
        raise ConfigurationError(f"ckpt_path={ckpt_path!r} is not allowed: it cannot be read as a checkpoint "
                                 f"({type(error).__name__}: {error}).") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    check(isinstance(state, dict), "ckpt_path", ckpt_path, "a Lightning checkpoint (a file with a state_dict)")
    if weights == "current":
        state = checkpoint.get("current_model_state")
        check(isinstance(state, dict), "weights", weights,
              "saved for a checkpoint of a run without weight averaging (it has no current_model_state)")
    network = {name[len(PREFIX):]: value for name, value in state.items() if name.startswith(PREFIX)}
    check(bool(network), "ckpt_path", ckpt_path, "a checkpoint of an AdversarialModule (tensors named model.*)")
    return network


def export(ckpt_path: str, out: str, which: Weights = "saved") -> Dict[str, Tensor]:
    """Write the network's weights of ``ckpt_path`` (``which``: see :func:`network_weights`) to ``out``;
    returns them."""
    weights = network_weights(ckpt_path, which)
    directory = os.path.dirname(os.path.abspath(out))
    check(not os.path.isdir(out) and os.path.isdir(directory) and os.access(directory, os.W_OK), "out", out,
          "a file to write in an existing, writable directory")
    torch.save(weights, out)
    log.info("%d tensors of the network written to %s", len(weights), out)
    return weights


def main(args: Optional[list] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt_path", help="a checkpoint written by train.py or a Lightning Trainer")
    parser.add_argument("out", help="the file to write")
    parser.add_argument("--weights", choices=["saved", "current"], default="saved",
                        help="saved: the checkpoint's state_dict (the average where weights were averaged); "
                             "current: the weights training had reached")
    options = parser.parse_args(args)
    try:
        export(options.ckpt_path, options.out, options.weights)
    except ConfigurationError as error:
        sys.stderr.write(f"error: {error}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
