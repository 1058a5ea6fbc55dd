"""Write a Keras model's weights as a legacy HDF5 file in the layout of Keras' published VGG files."""

import h5py
import numpy as np


def write_legacy_h5(model, path, style: str = "published") -> None:
    """Root attr ``layer_names`` lists every layer; each group's ``weight_names`` lists its arrays.

    ``style="published"``: names as in the 2016 files (``block1_conv1_W_1:0``, flat in the group);
    ``style="keras2"``: names as Keras 2 wrote them (``block1_conv1/kernel:0``, nested groups).
    """
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([l.name.encode() for l in model.layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.0.8"
        for layer in model.layers:
            g = f.create_group(layer.name)
            arrays = [np.asarray(w) for w in layer.get_weights()]
            if style == "published":
                names = [f"{layer.name}_{s}_1:0" for s in ("W", "b")][: len(arrays)]
            else:
                names = [f"{layer.name}/{s}:0" for s in ("kernel", "bias")][: len(arrays)]
            g.attrs["weight_names"] = np.array([n.encode() for n in names])
            for n, a in zip(names, arrays):
                g.create_dataset(n, data=a)
