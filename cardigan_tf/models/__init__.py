"""cardigan_tf.models."""
