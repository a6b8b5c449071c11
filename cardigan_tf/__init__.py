"""cardigan_tf: SPADE GAN echocardiogram synthesis and U-Net segmentation on CAMUS.

Keras 3 (TensorFlow backend) reimplementation of cardiGAN (INSA Lyon / CREATIS, 2021).
"""

__version__ = "0.1.0"
