"""Per-modality standardisation, fitted on the training rows only (never on test rows)."""

from __future__ import annotations

import numpy as np
import torch

from pyro_mmt.data.dataset import MultimodalDataset, check_modality_names

__all__ = ["Standardiser"]


class Standardiser:
    """Centre and scale each feature of each modality: x' = (x - mean) / scale.

    ``fit`` estimates, per modality j and feature, the mean and the standard deviation (ddof=0,
    i.e. divided by the number of rows) over the rows of the given data set where modality j is
    *observed*; missing rows are ignored and stay missing after ``transform``. Fit on the
    training rows only, then transform training and test data with the same statistics.

    A constant feature (standard deviation 0, or below 1e-12 times its magnitude) gets
    ``scale = 1``: it is centred but not divided by zero, so it becomes 0 everywhere in the
    training data.

    Attributes
    ----------
    mean_ : dict[str, numpy.ndarray]
        Modality -> float64 [n_j] feature means (set by ``fit``).
    scale_ : dict[str, numpy.ndarray]
        Modality -> float64 [n_j] feature standard deviations, 1 for constant features.

    Examples
    --------
    >>> scaler = Standardiser().fit(split.train)                    # doctest: +SKIP
    >>> train, test = scaler.transform(split.train), scaler.transform(split.test)  # doctest: +SKIP
    """

    def __init__(self):
        self.mean_: dict[str, np.ndarray] | None = None
        self.scale_: dict[str, np.ndarray] | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities it was fitted on (empty before ``fit``)."""
        return () if self.mean_ is None else tuple(self.mean_)

    def _check_fitted(self):
        if self.mean_ is None:
            raise ValueError("Standardiser: not fitted; call fit(dataset) first")

    def fit(self, dataset: MultimodalDataset) -> Standardiser:
        """Estimate the per-modality feature means and standard deviations on ``dataset``'s
        observed rows. Every modality needs at least one observed row."""
        if not isinstance(dataset, MultimodalDataset):
            raise ValueError(
                f"dataset: expected a MultimodalDataset; found {type(dataset).__name__}"
            )
        mean, scale = {}, {}
        for j, name in enumerate(dataset.modalities):
            present = dataset.mask[:, j]
            if not bool(present.any()):
                raise ValueError(
                    f"dataset: modality {name!r} is observed in no row; expected at least one "
                    "observed row to fit its mean and scale"
                )
            x = dataset.x[name][present].detach().cpu().to(torch.float64).numpy()
            if name in dataset.cells:  # the observed cells of each feature only
                x = np.where(dataset.cells[name][present].numpy(), x, np.nan)
                empty = np.flatnonzero(np.isnan(x).all(axis=0))
                if empty.size:
                    raise ValueError(
                        f"dataset: features {empty[:5].tolist()} of modality {name!r} are "
                        "observed in no row; expected each feature observed at least once"
                    )
                m, s = np.nanmean(x, axis=0), np.nanstd(x, axis=0, ddof=0)
            else:
                m = x.mean(axis=0)
                s = x.std(axis=0, ddof=0)
            constant = s <= 1e-12 * np.maximum(np.abs(m), 1.0)
            mean[name] = m
            scale[name] = np.where(constant, 1.0, s)
        self.mean_, self.scale_ = mean, scale
        return self

    def _check_modality(self, name, width, argument):
        self._check_fitted()
        check_modality_names((name,), self.modalities, argument)
        if width != self.mean_[name].shape[0]:
            raise ValueError(
                f"{argument}: modality {name!r} has {width} features; expected "
                f"{self.mean_[name].shape[0]} as in the data the Standardiser was fitted on"
            )

    def transform(self, dataset: MultimodalDataset) -> MultimodalDataset:
        """Standardise every modality of ``dataset`` (all must be among the fitted ones, with the
        same dimensions). Returns a new data set with the same dtype, labels and mask; missing
        rows stay missing (stored as 0.0)."""
        if not isinstance(dataset, MultimodalDataset):
            raise ValueError(
                f"dataset: expected a MultimodalDataset; found {type(dataset).__name__}"
            )
        x = {}
        for j, name in enumerate(dataset.modalities):
            self._check_modality(name, dataset.dims[name], "dataset")
            t = dataset.x[name]
            mean = torch.as_tensor(self.mean_[name], dtype=torch.float64, device=t.device)
            scale = torch.as_tensor(self.scale_[name], dtype=torch.float64, device=t.device)
            z = (t.to(torch.float64) - mean) / scale
            z[~dataset.mask[:, j].to(t.device)] = 0.0
            if name in dataset.cells:  # missing cells stay 0.0
                z[~dataset.cells[name].to(t.device)] = 0.0
            x[name] = z.to(t.dtype)
        return dataset._replace(x=x)

    def fit_transform(self, dataset: MultimodalDataset) -> MultimodalDataset:
        """``fit(dataset)`` then ``transform(dataset)``."""
        return self.fit(dataset).transform(dataset)

    def transform_modality(self, name: str, array):
        """Standardise an array or tensor [..., n_j] of modality ``name``: (x - mean) / scale.
        Returns the same type (numpy in float64, tensors in their own dtype)."""
        return self._apply(name, array, inverse=False)

    def inverse_transform_modality(self, name: str, array):
        """Map standardised values [..., n_j] of modality ``name`` back to the data scale:
        x = z * scale + mean. Returns the same type (numpy in float64, tensors in their own
        dtype), e.g. to read decoder means in the original units."""
        return self._apply(name, array, inverse=True)

    def _apply(self, name, array, inverse):
        width = array.shape[-1] if getattr(array, "ndim", 0) >= 1 else None
        self._check_modality(name, width, "array")
        if isinstance(array, torch.Tensor):
            mean = torch.as_tensor(self.mean_[name], dtype=array.dtype, device=array.device)
            scale = torch.as_tensor(self.scale_[name], dtype=array.dtype, device=array.device)
        else:
            array = np.asarray(array, dtype=np.float64)
            mean, scale = self.mean_[name], self.scale_[name]
        return array * scale + mean if inverse else (array - mean) / scale

    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays: ``modalities`` (unicode), ``mean_<modality>`` and
        ``scale_<modality>`` (float64), e.g. for ``numpy.savez``."""
        self._check_fitted()
        state = {"modalities": np.array(self.modalities, dtype=np.str_)}
        for name in self.modalities:
            state[f"mean_{name}"] = self.mean_[name].copy()
            state[f"scale_{name}"] = self.scale_[name].copy()
        return state

    @classmethod
    def from_state_dict(cls, state) -> Standardiser:
        """Rebuild a fitted Standardiser from :meth:`state_dict`'s arrays (a dict or an
        ``np.load`` result)."""
        try:
            names = [str(name) for name in np.asarray(state["modalities"]).tolist()]
            mean = {n: np.asarray(state[f"mean_{n}"], dtype=np.float64) for n in names}
            scale = {n: np.asarray(state[f"scale_{n}"], dtype=np.float64) for n in names}
        except KeyError as error:
            raise ValueError(
                f"state: expected arrays 'modalities', 'mean_<modality>' and 'scale_<modality>'; "
                f"missing {error}"
            ) from error
        for n in names:
            if mean[n].shape != scale[n].shape or mean[n].ndim != 1 or not (scale[n] > 0).all():
                raise ValueError(
                    f"state: modality {n!r} needs 1-D mean and positive scale of equal shape; "
                    f"found shapes {mean[n].shape} and {scale[n].shape}"
                )
        scaler = cls()
        scaler.mean_, scaler.scale_ = mean, scale
        return scaler
