"""Write a Keras model's weights as a legacy HDF5 file in the layout of Keras' published files
(VGG's 2016 names, or Keras 2's ``layer/role:0`` as in the ResNet files; batch norm's four arrays
in Keras' order gamma, beta, moving_mean, moving_variance)."""

import h5py
import numpy as np


def write_legacy_h5(model, path, style: str = "published") -> None:
    """Root attr ``layer_names`` lists every layer; each group's ``weight_names`` lists its arrays.

    ``style="published"``: names as in the 2016 files (``block1_conv1_W_1:0``, flat in the group);
    ``style="keras2"``: names as Keras 2 wrote them (``block1_conv1/kernel:0``, ``conv1_bn/gamma:0``).
    """
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([l.name.encode() for l in model.layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.0.8"
        for layer in model.layers:
            g = f.create_group(layer.name)
            arrays = [np.asarray(w) for w in layer.get_weights()]
            roles = [w.name.rsplit("/", 1)[-1].split(":")[0] for w in layer.weights]  # kernel, gamma, ...
            if style == "published":
                names = [f"{layer.name}_{ {'kernel': 'W', 'bias': 'b'}.get(r, r)}_1:0" for r in roles]
            else:
                names = [f"{layer.name}/{r}:0" for r in roles]
            g.attrs["weight_names"] = np.array([n.encode() for n in names])
            for n, a in zip(names, arrays):
                g.create_dataset(n, data=a)
