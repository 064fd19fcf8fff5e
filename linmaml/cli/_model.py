"""``--model`` and ``--model-kwargs`` of the commands that work on a trained run (``evaluate``,
``analyze``): the user's own network, for a run whose ``config.json`` does not say where to import it
from (a run trained from Python with ``train(model=...)``). ``linmaml train`` declares the same two
options from its settings (:class:`linmaml.benchmarks.settings.TrainConfig`'s ``model_import`` and
``model_kwargs``), and a run it trained with them records both, so these commands rebuild the model
without being told."""
from __future__ import annotations

import argparse
import json

from linmaml.benchmarks.settings import check_model_kwargs, declared, flag
from linmaml.errors import ArgumentError, renamed


def model_kwargs_option(text: str) -> dict:
    """``--model-kwargs``: a JSON object of keyword arguments (argparse reports a refusal as one line)."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"hidden\": 32}}' ({error})") from None
    try:
        return check_model_kwargs(value)
    except TypeError as error:
        raise argparse.ArgumentTypeError(getattr(error, "detail", str(error))) from None


def add_model_options(parser) -> None:
    """``--model MODULE:CLASS`` and ``--model-kwargs JSON``, with the training settings' help."""
    settings = declared()
    parser.add_argument(flag("model_import"), dest="model_import", default=None,
                        metavar=settings["model_import"].metavar,
                        help="a run on your own network that its config.json does not say where to import from: "
                             "the class, as for linmaml train (default: the one the run records)")
    parser.add_argument(flag("model_kwargs"), dest="model_kwargs", default=None, type=model_kwargs_option,
                        metavar=settings["model_kwargs"].metavar, help=settings["model_kwargs"].help)


def model_from_args(args):
    """The module ``--model``/``--model-kwargs`` name (None without ``--model``); errors name the flag."""
    if args.model_import is None:
        if args.model_kwargs is not None:
            raise ArgumentError("--model-kwargs", "needs --model (the class they are the keyword arguments of)")
        return None
    from linmaml.benchmarks.config import import_model  # lazy: imports torch (not at `linmaml --help`)

    try:
        return import_model(args.model_import, args.model_kwargs)
    except (ValueError, TypeError) as error:
        raise renamed(error, {name: flag(name) for name in ("model_import", "model_kwargs")}) from error
