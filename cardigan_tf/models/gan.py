"""SpadeGAN: the SPADE GAN training model (generator, discriminator, optional style encoder).

One ``train_step`` = one generator (+ encoder) update, then one discriminator update, as in
NVIDIA's SPADE trainer: both networks are updated in every step. Real and fake images go
through the discriminator in ONE call (concatenated along the batch), because spectral
normalisation renormalises its kernels on every training call. An exponential moving average
of the generator (``generator_ema``) is kept for samples and export.

The training step is TensorFlow code (``tf.GradientTape``); the networks are ``keras.ops``.
Data: ``(image in [0, 1] (B, H, W, 1), mask int32 (B, H, W))``; the GAN works in [-1, 1] and
converts at its boundary.

Example::

    gan = SpadeGAN(build_generator(gcfg), build_discriminator(dcfg), ema_decay=0.999, seed=0)
    gan.compile(g_optimizer=keras.optimizers.Adam(1e-4, beta_1=0.0, beta_2=0.999),
                d_optimizer=keras.optimizers.Adam(4e-4, beta_1=0.0, beta_2=0.999))
    gan.fit(dataset, epochs=..., steps_per_epoch=...)
    images = gan.generate(masks)            # [0, 1], EMA generator
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from cardigan_tf.losses import gan as L


@keras.saving.register_keras_serializable(package="cardigan_tf")
class ConstantThenLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Constant learning rate, then linear decay to 0 at ``total_steps``.

    SPADE / cardiGAN: ``niter`` epochs constant then ``niter_decay`` epochs of linear decay
    (cardiGAN: 20 + 10). ``decay_start`` is the step at which the decay begins.

    Args:
        initial_learning_rate: the constant rate.
        total_steps: the step at which the rate reaches 0.
        decay_start: first step of the decay (``>= total_steps`` means no decay).
    """

    def __init__(self, initial_learning_rate, total_steps, decay_start):
        self.initial_learning_rate = float(initial_learning_rate)
        self.total_steps = int(total_steps)
        self.decay_start = int(decay_start)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        span = max(self.total_steps - self.decay_start, 1)
        frac = ops.clip((step - self.decay_start) / span, 0.0, 1.0)
        return self.initial_learning_rate * (1.0 - frac)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "total_steps": self.total_steps,
            "decay_start": self.decay_start,
        }


METRIC_NAMES = (
    "d_loss", "d_real", "d_fake", "g_gan", "g_feat", "g_vgg", "g_kl", "g_total", "lr_g", "lr_d",
)


class SpadeGAN(keras.Model):
    """SPADE GAN training wrapper.

    Args:
        generator: mask one-hot (B, H, W, K) [+ z (B, z_dim)] -> image (B, H, W, 1) in [-1, 1];
            K (``num_classes``) is read from its mask input, and integer masks are one-hot
            encoded to K channels.
        discriminator: concat(mask one-hot, image) (B, H, W, K + 1) -> list over scales of lists
            of features (last = patch logits).
        encoder: optional style encoder, image (B, H, W, 1) in [-1, 1] -> (mu, logvar).
            When given the generator must take z as its second input.
        ema_decay: decay of the generator's exponential moving average.
        seed: seed of the noise SeedGenerator (z and the reparameterisation).
    """

    def __init__(self, generator, discriminator, encoder=None, ema_decay=0.999, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.encoder = encoder
        self.ema_decay = float(ema_decay)
        self.num_classes = int(generator.inputs[0].shape[-1])  # channels of the one-hot mask input
        self.style = len(generator.inputs) > 1
        self.z_dim = int(generator.inputs[1].shape[-1]) if self.style else 0
        if encoder is not None and not self.style:
            raise ValueError("SpadeGAN: an encoder needs a generator with a z input (style='encoder')")
        self.generator_ema = keras.models.clone_model(generator)
        self.generator_ema.set_weights(generator.get_weights())
        self.generator_ema.trainable = False
        self.seed_generator = keras.random.SeedGenerator(seed, name="gan_noise")
        self.step = keras.Variable(
            0, dtype="int64", trainable=False, aggregation="only_first_replica", name="gan_step"
        )
        self.trackers = {n: keras.metrics.Mean(name=n) for n in METRIC_NAMES}
        self.built = True

    # ------------------------------------------------------------------ setup
    def compile(self, g_optimizer, d_optimizer, e_optimizer=None, lambda_feat=10.0,
                lambda_vgg=10.0, lambda_kl=0.05, vgg=None, **kwargs):
        """Store the optimizers and loss weights, build the optimizers, then ``super().compile``.

        The encoder is trained by ``g_optimizer`` (as NVIDIA does) unless ``e_optimizer`` is
        given. Under ``mixed_float16`` both (all) optimizers are wrapped in
        ``LossScaleOptimizer`` here. Call inside the strategy scope. ``vgg``: a
        :class:`cardigan_tf.losses.gan.VGGPerceptualLoss` or None (VGG term off).
        Remaining keyword arguments (``jit_compile``, ``steps_per_execution``...) go to
        ``keras.Model.compile``.
        """
        fp16 = keras.mixed_precision.global_policy().name == "mixed_float16"

        def wrap(opt):
            if opt is not None and fp16 and not isinstance(opt, keras.optimizers.LossScaleOptimizer):
                return keras.optimizers.LossScaleOptimizer(opt)
            return opt

        self.g_optimizer = wrap(g_optimizer)
        self.d_optimizer = wrap(d_optimizer)
        self.e_optimizer = wrap(e_optimizer) if self.encoder is not None else None
        self.lambda_feat = float(lambda_feat)
        self.lambda_vgg = float(lambda_vgg)
        self.lambda_kl = float(lambda_kl)
        self.vgg = vgg
        g_vars = list(self.generator.trainable_variables)
        if self.encoder is not None and self.e_optimizer is None:
            g_vars += list(self.encoder.trainable_variables)
        self.g_optimizer.build(g_vars)
        self.d_optimizer.build(self.discriminator.trainable_variables)
        if self.e_optimizer is not None:
            self.e_optimizer.build(self.encoder.trainable_variables)
        super().compile(optimizer=self.g_optimizer, **kwargs)

    @property
    def metrics(self):
        vgg_off = getattr(self, "vgg", None) is None
        names = [n for n in METRIC_NAMES
                 if not (n == "g_vgg" and vgg_off) and not (n == "g_kl" and self.encoder is None)]
        return [self.trackers[n] for n in names]

    def checkpoint(self):
        """A ``tf.train.Checkpoint`` of everything a resumed run needs (weights, EMA weights,
        optimizer states, step counter and noise generator state)."""
        items = dict(generator=self.generator, discriminator=self.discriminator,
                     generator_ema=self.generator_ema, g_optimizer=self.g_optimizer,
                     d_optimizer=self.d_optimizer, step=self.step,
                     noise_state=self.seed_generator.state)
        if self.encoder is not None:
            items["encoder"] = self.encoder
        if self.e_optimizer is not None:
            items["e_optimizer"] = self.e_optimizer
        return tf.train.Checkpoint(**items)

    # ------------------------------------------------------------------ pieces
    def _noise(self, shape, call_index):
        """N(0, 1) noise, a pure function of (seed state, step, call index, replica id).

        The SeedGenerator's state is read, never advanced inside the step: the draw is
        stateless (``tf.random.stateless_normal``), so it works in replica context under
        MirroredStrategy, differs between replicas (the replica id is folded in), and a
        resumed run (the step counter is checkpointed) draws exactly the same noise.
        """
        base = tf.cast(self.seed_generator.state.value, tf.int64)
        step = tf.cast(self.step.value, tf.int64)
        rid = tf.constant(0, tf.int64)
        replica = tf.distribute.get_replica_context()
        if replica is not None:
            rid = tf.cast(replica.replica_id_in_sync_group, tf.int64)
        seed = base + tf.stack([step * 8 + call_index, rid * 1_000_003])
        return tf.random.stateless_normal(shape, seed=seed, dtype=tf.float32)

    def _style(self, real, batch, training, call_index=0):
        """z and (mu, logvar) for the generator: encoder posterior, N(0, 1), or None."""
        if not self.style:
            return None, None
        eps = self._noise(tf.stack([batch, self.z_dim]), call_index)
        if self.encoder is None:
            return eps, None
        mu, logvar = self.encoder(real, training=training)
        mu, logvar = tf.cast(mu, tf.float32), tf.cast(logvar, tf.float32)
        return mu + tf.exp(0.5 * logvar) * eps, (mu, logvar)

    def _generate(self, net, mask, z, training):
        out = net([mask, z], training=training) if z is not None else net(mask, training=training)
        return tf.cast(out, tf.float32)

    def _discriminate(self, mask, fake, real, training):
        """One D call on concat([fake, real]); returns (fake_out, real_out) split per tensor."""
        dt = self.discriminator.compute_dtype
        x = tf.concat([tf.concat([mask, fake], -1), tf.concat([mask, real], -1)], axis=0)
        out = self.discriminator(tf.cast(x, dt), training=training)
        if not isinstance(out, (list, tuple)):
            out = [[out]]
        elif not isinstance(out[0], (list, tuple)):
            out = [out]  # a single-scale discriminator returns one flat list
        fake_out = [[tf.split(t, 2, axis=0)[0] for t in scale] for scale in out]
        real_out = [[tf.split(t, 2, axis=0)[1] for t in scale] for scale in out]
        return fake_out, real_out

    def _g_losses(self, mask, real, training):
        batch = tf.shape(real)[0]
        z, post = self._style(real, batch, training)
        fake = self._generate(self.generator, mask, z, training)
        fake_out, real_out = self._discriminate(mask, fake, real, training)
        losses = {"g_gan": L.g_hinge_loss(fake_out),
                  "g_feat": L.feature_matching_loss(real_out, fake_out)}
        total = losses["g_gan"] + self.lambda_feat * losses["g_feat"]
        if self.vgg is not None:
            losses["g_vgg"] = self.vgg(real, fake)
            total = total + self.lambda_vgg * losses["g_vgg"]
        if post is not None:
            losses["g_kl"] = L.kl_loss(*post)
            total = total + self.lambda_kl * losses["g_kl"]
        losses["g_total"] = total
        return losses

    def _inputs(self, data):
        image, mask = data[0], data[1]
        real = tf.cast(image, tf.float32) * 2.0 - 1.0
        if mask.shape.rank == 3:
            mask = tf.one_hot(tf.cast(mask, tf.int32), self.num_classes, dtype=tf.float32)
        return real, tf.cast(mask, tf.float32)

    @staticmethod
    def _apply(opt, tape, scaled_loss, variables):
        """Gradients of an ``opt.scale_loss``-scaled loss (computed inside the tape), applied
        by ``opt`` (a LossScaleOptimizer unscales them and skips non-finite steps)."""
        grads = tape.gradient(scaled_loss, variables)
        opt.apply(grads, variables)

    def _update_ema(self):
        """ema <- d * ema + (1 - d) * generator, for every float weight (BN statistics too).

        ``d = min(ema_decay, (1 + step) / (10 + step))`` (the warm-up of
        tf.train.ExponentialMovingAverage with num_updates), so that short runs get a useful
        average instead of one still close to the random initialisation.

        Under a tf.distribute strategy the update runs in cross-replica context
        (``merge_call`` + ``extended.update``), as optimizers update their variables.
        """
        pairs = [(e, w) for e, w in zip(self.generator_ema.weights, self.generator.weights)]

        def blend(var, value):
            if var.dtype.is_floating:
                step = tf.cast(self.step.value, tf.float32)
                d = tf.minimum(tf.constant(self.ema_decay, tf.float32), (1.0 + step) / (10.0 + step))
                dd = tf.cast(d, var.dtype)
                return var.assign(dd * var + (1.0 - dd) * tf.cast(value, var.dtype))
            return var.assign(value)

        replica = tf.distribute.get_replica_context()
        if tf.distribute.has_strategy() and replica is not None:
            def merged(strategy):
                for e, w in pairs:
                    strategy.extended.update(e.value, blend, args=(w.value,))
            replica.merge_call(merged)
        else:
            for e, w in pairs:
                blend(e.value, w.value)

    # ------------------------------------------------------------------ steps
    def train_step(self, data):
        real, mask = self._inputs(data)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        lrs = dict(lr_g=self._lr(self.g_optimizer), lr_d=self._lr(self.d_optimizer))

        # Generator (+ encoder) update.
        g_vars = list(self.generator.trainable_variables)
        e_vars = list(self.encoder.trainable_variables) if self.encoder is not None else []
        with tf.GradientTape(persistent=self.e_optimizer is not None) as tape:
            g = self._g_losses(mask, real, training=True)
            g_loss = g["g_total"] / replicas
            g_scaled = self.g_optimizer.scale_loss(g_loss)
            e_scaled = self.e_optimizer.scale_loss(g_loss) if self.e_optimizer is not None else None
        if self.e_optimizer is not None:
            self._apply(self.g_optimizer, tape, g_scaled, g_vars)
            self._apply(self.e_optimizer, tape, e_scaled, e_vars)
        else:
            self._apply(self.g_optimizer, tape, g_scaled, g_vars + e_vars)
        del tape
        self._update_ema()

        # Discriminator update, on a fresh fake from the updated generator.
        batch = tf.shape(real)[0]
        z, _ = self._style(real, batch, training=True, call_index=1)
        fake = tf.stop_gradient(self._generate(self.generator, mask, z, training=True))
        d_vars = self.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            fake_out, real_out = self._discriminate(mask, fake, real, training=True)
            d_loss = L.d_hinge_loss(real_out, fake_out)
            scaled = self.d_optimizer.scale_loss(d_loss / replicas)
        self._apply(self.d_optimizer, tape, scaled, d_vars)
        self.step.assign_add(1)

        values = dict(g, d_loss=d_loss, d_real=L.d_scores(real_out), d_fake=L.d_scores(fake_out),
                      **lrs)
        return self._record(values)

    def test_step(self, data):
        """Generator losses and D scores on validation data, without any update."""
        real, mask = self._inputs(data)
        g = self._g_losses(mask, real, training=False)
        batch = tf.shape(real)[0]
        z, _ = self._style(real, batch, training=False)
        fake = self._generate(self.generator, mask, z, training=False)
        fake_out, real_out = self._discriminate(mask, fake, real, training=False)
        values = dict(g, d_loss=L.d_hinge_loss(real_out, fake_out), d_real=L.d_scores(real_out),
                      d_fake=L.d_scores(fake_out), lr_g=self._lr(self.g_optimizer),
                      lr_d=self._lr(self.d_optimizer))
        return self._record(values)

    @staticmethod
    def _lr(opt):
        return tf.cast(opt.learning_rate, tf.float32)

    def _record(self, values):
        for name, value in values.items():
            self.trackers[name].update_state(value)
        return {m.name: m.result() for m in self.metrics}

    # ------------------------------------------------------------------ inference
    def call(self, inputs, training=False):
        """``mask one-hot`` (or ``[mask, z]``) -> generator output in [-1, 1]."""
        return self.generator(inputs, training=training)

    def generate(self, mask, z=None, use_ema=True, image=None, batch_size=16):
        """Images in [0, 1] (numpy, (B, H, W, 1)) for masks (int (B, H, W) or one-hot).

        With a style generator, ``z`` defaults to the encoder's mean for ``image`` (in [0, 1])
        when given, else to N(0, 1) noise from a generator seeded by the model's seed state.
        """
        mask = np.asarray(mask)
        if mask.ndim == 3:
            mask = np.eye(self.num_classes, dtype=np.float32)[mask.astype(np.int64)]
        mask = mask.astype(np.float32)
        net = self.generator_ema if use_ema else self.generator
        if z is not None:
            z = np.asarray(z, np.float32)
        if self.style and z is None:
            if image is not None and self.encoder is not None:
                mu, _ = self.encoder(np.asarray(image, np.float32) * 2.0 - 1.0, training=False)
                z = np.asarray(ops.convert_to_numpy(mu))
            else:
                seed = int(np.asarray(self.seed_generator.state)[0]) % (2**31)
                z = np.random.default_rng(seed).standard_normal((len(mask), self.z_dim))
                z = z.astype(np.float32)
        outs = []
        for i in range(0, len(mask), batch_size):  # direct calls: no predict-function trace
            m = mask[i:i + batch_size]
            inputs = [m, np.asarray(z[i:i + batch_size], np.float32)] if self.style else m
            outs.append(np.asarray(ops.convert_to_numpy(net(inputs, training=False)), np.float32))
        out = np.concatenate(outs, axis=0)
        return (np.clip(out, -1.0, 1.0) + 1.0) / 2.0
