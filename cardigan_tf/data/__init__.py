"""cardigan_tf.data."""
