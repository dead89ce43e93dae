"""What every command shares: alpha parsing (`--alpha F=v`), JSON without NaN, failure reasons."""
from __future__ import annotations

import json
import math

import numpy as np

from bilevel.game.formulations import DEFAULT_ALPHA, FORMULATIONS


def json_clean(obj):
    """`obj` ready for strict JSON: every NaN or infinity becomes None (null), numpy scalars and
    arrays become plain Python, recursively through dicts, lists and tuples."""
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if math.isfinite(x) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return json_clean(obj.tolist())
    if isinstance(obj, dict):
        return {k: json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    return obj


def json_dumps(obj, **kw) -> str:
    """json.dumps of json_clean(obj): never writes NaN or Infinity (strict JSON)."""
    return json.dumps(json_clean(obj), allow_nan=False, **kw)


def failure_reason(e: BaseException) -> str:
    """One line: the exception's class and message."""
    msg = " ".join(str(e).split())
    return f"{e.__class__.__name__}: {msg}" if msg else e.__class__.__name__


def _parse_alpha(text: str | None):
    """`A` (every formulation with an alpha) or `F=A[,F=A]`; ValueError (one line) on anything
    else: a malformed item, a formulation that is unknown or has no alpha (PAL, MAL), a number
    outside [0, 1]."""
    if text is None:
        return None
    has = ", ".join(DEFAULT_ALPHA)
    if "=" not in text:
        return _alpha_number(text, text)
    out = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key or "=" in value:
            raise ValueError(f"malformed item {part.strip()!r} in {text!r} (expected F=A[,F=A] "
                             f"with F one of {has})")
        if key not in DEFAULT_ALPHA:
            why = "has no alpha" if key in FORMULATIONS else "is not a formulation"
            raise ValueError(f"{key!r} {why} (alpha is set for {has})")
        if key in out:
            raise ValueError(f"{key!r} given twice in {text!r}")
        out[key] = _alpha_number(value, part.strip(), key)
    return out


def _alpha_number(value: str, item: str, key: str | None = None) -> float:
    where = f"{key}: " if key else ""
    try:
        a = float(value)
    except ValueError:
        raise ValueError(f"{where}not a number: {item!r}") from None
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"{where}alpha must lie in [0, 1], got {value.strip()!r}")
    return a


def add_occupancy_arg(parser) -> None:
    """--occupancy discounted|average: the data's occupancy, instead of the file's `occupancy`
    (average: the T-step averaged occupancy of episodes of the file's horizon T)."""
    from bilevel.mdp.model import OCCUPANCIES
    parser.add_argument("--occupancy", choices=OCCUPANCIES, default=None,
                        help="the occupancy that weights the model's loss: discounted, or average "
                             "(T-step episodes, T = the file's horizon; the reported return J is "
                             "then the T-step return); default: the file's `occupancy`")


def add_model_class_arg(parser) -> None:
    """--model-class tabular|aggregated|linear: `tabular` drops the file's model class (every
    floored model on the file's support); `aggregated` / `linear` name the class the file
    defines (an error when it defines another)."""
    from bilevel.mdp.model_class import MODEL_CLASSES
    parser.add_argument("--model-class", choices=MODEL_CLASSES, default=None,
                        help="the models the model player may choose: tabular (every floored model "
                             "on the support), or the file's aggregated / linear `model_class`; "
                             "default: the file's")


def apply_model_class(mdp, choice: str | None):
    """`mdp` with the class --model-class asks for (None: unchanged); MDPError naming the file
    and field when the file defines no class of that kind."""
    from bilevel.mdp.model import MDPError, with_model_class
    from bilevel.mdp.model_class import TABULAR
    if choice is None or choice == mdp.model_class.kind:
        return mdp
    if choice == "tabular":
        return with_model_class(mdp, TABULAR)
    raise MDPError(mdp.source, "model_class", f"--model-class {choice}: the file defines "
                   f"{mdp.model_class.as_defined()}")
