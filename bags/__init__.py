"""The bag: what one slide becomes (its tiles, labels and image statistics) and
its `tf.Example` encoding, written without TensorFlow."""
