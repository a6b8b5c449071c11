"""cardigan_tf.losses."""
