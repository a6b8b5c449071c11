"""cardigan_tf.serving."""
