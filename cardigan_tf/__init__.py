"""cardigan_tf: SPADE GAN echocardiogram synthesis and U-Net segmentation on CAMUS.

Keras 3 (TensorFlow backend) reimplementation of cardiGAN (INSA Lyon / CREATIS, 2021).

Importing the package chooses Keras' backend, once for every module: TensorFlow unless
``KERAS_BACKEND`` is already set (the networks also run on JAX). Keras reads the variable
when it is first imported, which is after this.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"
