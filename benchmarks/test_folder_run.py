"""A folder run end to end (``jaxplain explain FOLDER``: decoding, overlays at each picture's size,
thumbnails, zarr, results.jsonl) against the kernel alone on the same pictures, method and batch,
interleaved: each round times the kernel (in the setup) and then the folder run. The small model on
24 pictures; ``python -m benchmarks.folder_run`` is the full-size form (VGG16, 500 pictures)."""

import itertools

import pytest

from benchmarks import folder_run

IMAGES, BATCH, METHOD = 24, 8, "gradient"


@pytest.mark.quick
def test_folder_run(benchmark, device, tmp_path):
    model = folder_run.build("synthetic")
    files = folder_run.write_pictures(tmp_path / "pictures", IMAGES)
    x = folder_run.decoded(model, files)
    folder_run.kernel_seconds(model, x, METHOD, BATCH)  # compile both
    folder_run.folder_seconds(model, "synthetic_vgg", tmp_path / "pictures", tmp_path / "warm", METHOD, BATCH)
    kernel: list[float] = []
    outs = (tmp_path / f"out-{i}" for i in itertools.count())

    def setup():
        kernel.append(folder_run.kernel_seconds(model, x, METHOD, BATCH))
        return (), {}

    def folder():
        folder_run.folder_seconds(model, "synthetic_vgg", tmp_path / "pictures", next(outs), METHOD, BATCH)

    benchmark.group = "folder run"
    benchmark.pedantic(folder, setup=setup, rounds=3, iterations=1)
    folder_rate = IMAGES / benchmark.stats.stats.median
    kernel_rate = IMAGES / sorted(kernel)[len(kernel) // 2]
    benchmark.extra_info.update(
        device, model="synthetic_vgg", method=METHOD, batch=BATCH, images=IMAGES, kernel_images_per_s=kernel_rate,
        folder_images_per_s=folder_rate, ratio=folder_rate / kernel_rate, machine=folder_run.machine(),
    )
