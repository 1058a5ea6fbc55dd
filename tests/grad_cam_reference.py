"""pytorch-grad-cam's Score-CAM, rewritten line by line in plain torch and NumPy from its source
(``pytorch_grad_cam/score_cam.py``, ``base_cam.py`` and ``utils/image.py``, commit 084273b). The
``grad-cam`` package itself imports torchvision and cv2, which do not import here."""

import numpy as np
import torch
import torch.nn.functional as F

GRAD_CAM_BATCH = 16  # ScoreCAM's BATCH_SIZE when the object has no batch_size attribute


def _cv2_resize(img: np.ndarray, target_size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(img, target_size)`` for a float32 ``[h, w]`` map, ``target_size = (width,
    height)``, when it upsamples (the only use here). cv2's default INTER_LINEAR takes output
    pixel ``d`` from source position ``(d + 0.5) * in / out - 0.5``, clamped to the first and last
    pixels, and mixes the two neighbours with float weights for float32 input; that is torch's
    bilinear interpolation with ``align_corners=False``, and neither antialiases."""
    t = torch.from_numpy(np.ascontiguousarray(img))[None, None]
    out = F.interpolate(t, size=(target_size[1], target_size[0]), mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def scale_cam_image(cam: np.ndarray, target_size: tuple[int, int] | None = None) -> np.ndarray:
    """``utils/image.py``: each map shifted to min 0, divided by ``1e-7 + max``, then resized."""
    result = []
    for img in cam:
        img = img - np.min(img)
        img = img / (1e-7 + np.max(img))
        if target_size is not None:
            img = _cv2_resize(np.float32(img), target_size)
        result.append(img)
    return np.float32(result)


def score_cam(net, x, t, batch: int = GRAD_CAM_BATCH) -> np.ndarray:
    """pytorch-grad-cam's ``ScoreCAM(net, [net.features[-2]])(x, targets)`` with
    ``ClassifierOutputTarget(t[b])`` per image, ``[B, H, W]`` float32 in [0, 1].

    ``net`` is a torchvision-named VGG whose ``features[:-1]`` ends at the last conv layer's ReLU
    (the target layer's output, which the original takes with a forward hook). Also the timing
    peer of ``score_cam`` in ``benchmarks/peers.py``: ``batch`` masked images per forward call.
    """
    device = x.device
    with torch.no_grad():
        # BaseCAM.forward / compute_cam_per_layer: the layer's activations, detached to NumPy.
        activations = net.features[:-1](x).cpu().data.numpy()  # [B, K, h, w]
        target_size = (x.size(-1), x.size(-2))  # get_target_width_height: (width, height)

        # ScoreCAM.get_cam_weights
        upsample = torch.nn.UpsamplingBilinear2d(size=x.shape[-2:])  # align_corners=True
        activation_tensor = torch.from_numpy(activations).to(device)
        upsampled = upsample(activation_tensor)
        maxs = upsampled.view(upsampled.size(0), upsampled.size(1), -1).max(dim=-1)[0]
        mins = upsampled.view(upsampled.size(0), upsampled.size(1), -1).min(dim=-1)[0]
        maxs, mins = maxs[:, :, None, None], mins[:, :, None, None]
        upsampled = (upsampled - mins) / (maxs - mins + 1e-8)
        input_tensors = x[:, None, :, :] * upsampled[:, :, None, :, :]  # [B, K, C, H, W]
        scores = []
        for target, tensor in zip(t, input_tensors):
            for i in range(0, tensor.size(0), batch):
                chunk = tensor[i: i + batch, :]
                scores.extend([o[target].cpu().item() for o in net(chunk)])  # ClassifierOutputTarget
        scores = torch.Tensor(scores).view(activations.shape[0], activations.shape[1])
        weights = torch.nn.Softmax(dim=-1)(scores).numpy()

    # BaseCAM.get_cam_image (no eigen_smooth), then compute_cam_per_layer and aggregate_multi_layers
    cam = (weights[:, :, None, None] * activations).sum(axis=1)
    cam = np.maximum(cam, 0)
    scaled = scale_cam_image(cam, target_size)
    per_layer = np.maximum(np.concatenate([scaled[:, None, :]], axis=1), 0)
    return scale_cam_image(np.mean(per_layer, axis=1))
