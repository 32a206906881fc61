"""Prediction on raw NIfTI files with a trained checkpoint or an exported model.

* :class:`Predictor` -- ``from_checkpoint(path, device=...)``, ``predict(paths) -> nibabel image``,
  ``predict_array(array, affine) -> numpy``; a list of models or a folder of folds gives an
  :class:`EnsemblePredictor` (the mean of their softmax probabilities).
* :func:`predict_cases` -- a list of cases into a folder (``veloxseg predict``).
* :func:`resolve_input` / :func:`select_part` -- cases from a folder or files; ``--num-parts``.
"""

from .cases import Case, case_from_files, cases_from_folder, resolve_input, select_part
from .engines import ENGINES, LoadedModel, load_model
from .ensemble import EnsemblePredictor, load_predictor
from .predictor import CasePrediction, Predictor
from .runner import RunSummary, predict_cases

__all__ = ["Case", "CasePrediction", "ENGINES", "EnsemblePredictor", "LoadedModel", "Predictor", "load_predictor", "RunSummary", "case_from_files",
           "cases_from_folder", "load_model", "predict_cases", "resolve_input", "select_part"]
