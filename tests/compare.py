"""Helpers for comparing with torch/Captum: layout conversion and the relative-error check."""

import numpy as np
import torch


def to_torch(x: np.ndarray) -> torch.Tensor:
    """NHWC numpy -> NCHW torch (a leaf that may require grad)."""
    return torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), requires_grad=True)


def to_nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def close(a, b, rtol: float = 1e-5) -> None:
    """max |a - b| <= rtol * max |b| (a zero ``b`` asks for equality)."""
    a, b = np.asarray(a), np.asarray(b)
    scale = max(np.abs(b).max(), 1e-30)
    assert a.shape == b.shape and np.abs(a - b).max() <= rtol * scale, (np.abs(a - b).max(), scale)


def assert_close(ours, ref, tol: float = 1e-5) -> None:
    """max |ours - ref| <= tol * max |ref|, with a non-trivial reference."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    err, scale = np.abs(ours - ref).max(), np.abs(ref).max()
    assert scale > 0 and err <= tol * scale, (err, scale)
