"""pytorch-grad-cam's algorithms written in plain torch (the ``grad-cam`` package imports
torchvision, which does not import beside the CPU torch here)."""

import torch
import torch.nn.functional as F

GRAD_CAM_BATCH = 16  # pytorch-grad-cam ScoreCAM's default masked images per forward call


def score_cam(net, x, t, batch: int = GRAD_CAM_BATCH):
    """pytorch-grad-cam's ``ScoreCAM`` algorithm in plain torch, ``[B, H, W]``, as the peer for
    ``score_cam`` (the grad-cam package imports torchvision): the last conv layer's ReLU output,
    each channel upsampled (bilinear, half-pixel, as ours) and min-max normalised, masks the image;
    ``batch`` masked images per forward call; softmax over the channels' target logits."""
    size = tuple(x.shape[-2:])
    with torch.no_grad():
        acts = net.features[:-1](x)  # [B, K, h, w]
        up = F.interpolate(acts, size=size, mode="bilinear", align_corners=False)
        lo = up.flatten(2).min(-1)[0][..., None, None]
        hi = up.flatten(2).max(-1)[0][..., None, None]
        up = torch.where(hi > lo, (up - lo) / torch.where(hi > lo, hi - lo, 1.0), 0.0)
        scores = torch.stack([
            torch.cat([net(x[b] * up[b, i:i + batch, None])[:, t[b]] for i in range(0, up.shape[1], batch)])
            for b in range(x.shape[0])])
        cam = torch.relu((torch.softmax(scores, -1)[..., None, None] * acts).sum(1))
        return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
