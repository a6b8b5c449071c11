"""cardigan_tf.metrics."""
