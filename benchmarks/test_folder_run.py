"""A folder run end to end (``jaxplain explain FOLDER``: decoding, overlays at each picture's size,
thumbnails, zarr, results.jsonl) against the kernel alone on the same pictures, method and batch,
by ``jaxplain.timing``'s method (``benchmarks.folder_run.measure``: a warm-up of both, 5
interleaved rounds). The small model on 24 pictures; ``python -m benchmarks.folder_run`` is the
full-size form (VGG16, 500 pictures). extra_info records both sides' images/s, the ratio
(``None`` when noisy) and ``Comparison.as_dict()``; the benchmark's own timing is one more folder run."""

import pytest

from benchmarks import folder_run

IMAGES, BATCH, METHOD, ROUNDS = 24, 8, "gradient", 5


@pytest.mark.quick
def test_folder_run(benchmark, device, tmp_path):
    model = folder_run.build("synthetic")
    files = folder_run.write_pictures(tmp_path / "pictures", IMAGES)
    result = folder_run.measure(model, "synthetic_vgg", files, METHOD, BATCH, ROUNDS, tmp_path)
    benchmark.group = "folder run"
    benchmark.pedantic(folder_run.folder_seconds, args=(model, "synthetic_vgg", tmp_path / "pictures", tmp_path / "out-last",
                                                        METHOD, BATCH), rounds=1, iterations=1)
    benchmark.extra_info.update(
        device, model="synthetic_vgg", method=METHOD, batch=BATCH, images=IMAGES,
        kernel_images_per_s=result["kernel_images_per_s"], folder_images_per_s=result["folder_images_per_s"],
        ratio=result["ratio"], ratio_text=result["ratio_text"], comparison=result["timing"], machine=result["machine"],
    )
