"""nnU-Net v2's intensity normalisation of one input channel, in NumPy.

Used by :class:`medseg.transforms.nnunet.NnunetPreprocessing` and copied into the
torch-free runner of ``medseg export``, so both normalise with nnU-Net's arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.errors import DataError

__all__ = ["ChannelNormalization", "SCHEMES"]

#: nnU-Net normalisation schemes (plans' ``normalization_schemes``).
SCHEMES = ("CTNormalization", "ZScoreNormalization", "NoNormalization",
           "RescaleTo01Normalization", "RGBTo01Normalization")
_EPS = 1e-8  # nnU-Net's floor for a standard deviation or a range (float32 targets)


@dataclass(frozen=True)
class ChannelNormalization:
    """nnU-Net's intensity normalisation of one input channel.

    Parameters
    ----------
    scheme : one of :data:`SCHEMES`.
    use_mask_for_norm : ZScore only: statistics and normalisation inside the non-zero
        mask (voxels outside keep 0).
    mean, std, percentile_00_5, percentile_99_5 : CT only: the dataset's foreground
        intensity statistics (HU): clip to the percentiles, subtract ``mean``, divide by
        ``std``.
    """

    scheme: str
    use_mask_for_norm: bool = False
    mean: float | None = None
    std: float | None = None
    percentile_00_5: float | None = None
    percentile_99_5: float | None = None

    def apply(self, image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """Normalise ``image`` (float32, any shape; changed in place) and return it.

        ``mask`` (bool, same shape) is the non-zero mask, used with ``use_mask_for_norm``.
        The arithmetic is nnU-Net's (float32, Python-float constants), so results are equal.

        Raises
        ------
        DataError : RGBTo01Normalization of values outside 0..255.
        """
        if self.scheme == "CTNormalization":
            np.clip(image, self.percentile_00_5, self.percentile_99_5, out=image)
            image -= self.mean
            image /= max(self.std, _EPS)
        elif self.scheme == "ZScoreNormalization":
            _zscore(image, mask if self.use_mask_for_norm else None)
        elif self.scheme == "RescaleTo01Normalization":
            image -= image.min()
            image /= np.clip(image.max(), a_min=_EPS, a_max=None)
        elif self.scheme == "RGBTo01Normalization":
            if image.size and (image.min() < 0 or image.max() > 255):
                raise DataError(f"RGBTo01Normalization needs values in 0..255, got "
                                f"{image.min()}..{image.max()}")
            image /= 255.0
        return image


def _zscore(image: np.ndarray, mask: np.ndarray | None) -> None:
    if mask is None:
        mean, std = image.mean(), image.std()
        image -= mean
        image /= max(std, _EPS)
        return
    inside = image[mask]
    mean, std = inside.mean(), inside.std()
    image[mask] = (inside - mean) / max(std, _EPS)
