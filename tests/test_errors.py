"""One error type per kind of fault, each printed by the CLI as one line without a traceback."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wsdm_helpers import cli, errors


@pytest.mark.parametrize("kind", [errors.ConfigError, errors.DataError, errors.SubmissionError,
                                  errors.BundleError, errors.NumericalError, errors.MissingResourceError])
def test_every_kind_is_printed_without_a_traceback(kind, monkeypatch, capsys):
    def fail(args):
        raise kind("what is wrong, where, and the fix")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    args = parser.parse_args(["data", "validate", "x.csv"])
    monkeypatch.setattr(args, "handler", fail, raising=False)
    monkeypatch.setattr(parser, "parse_args", lambda argv=None: args)
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert err == "error: what is wrong, where, and the fix\n"


def test_nan_validation_logits_are_a_numerical_error():
    from wsdm_helpers.training import EvalSet

    evalset = EvalSet.__new__(EvalSet)
    evalset.frame, evalset.n = pd.DataFrame({"label": [0, 1]}), 2
    prediction = type("P", (), {"predictions": np.array([[np.nan, 0.0], [0.0, 1.0]]),
                                "label_ids": (np.array([0, 1]), np.array([0, 1]))})()
    with pytest.raises(errors.NumericalError, match="1 of 2 validation rows have NaN/inf logits"):
        evalset.compute_metrics(prediction)


def test_a_missing_package_is_a_missing_resource():
    from wsdm_helpers.modeling import _package_dir

    with pytest.raises(errors.MissingResourceError, match="pip install no-such-package"):
        _package_dir("no_such_package")
