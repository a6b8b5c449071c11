"""cardigan_tf.jobs."""
