"""Defaults shared by every variant; variant files override a few fields.

Every key a run may set exists here, so `--config.KEY=VALUE` with an unknown KEY is an error
(the ConfigDict is locked).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.steps = 100_000
  c.batch_size = 64  # per identity, global (over all devices and processes)
  c.image_size = 64
  c.dtype = "float32"  # compute dtype; params and optimizer state stay float32

  c.model = ml_collections.ConfigDict()
  c.model.name = "original"  # original | lightweight | sae128 | tiny
  c.model.learn_mask = False
  # Kernel initialiser: "auto" = the variant's reference (2017 code and DeepFaceLab:
  # glorot_uniform; faceswap: he_uniform), or glorot_uniform | he_uniform | lecun_normal (Flax's).
  c.model.init = "auto"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"  # adam | adamw | sgd
  c.optimizer.learning_rate = 5e-5
  c.optimizer.b1 = 0.5
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-7
  c.optimizer.weight_decay = 0.0
  c.optimizer.clip_norm = 0.0  # 0 disables global-norm clipping
  c.optimizer.warmup_steps = 0
  # >0: cosine decay of the learning rate to decay_floor * learning_rate at this step (after
  # the warmup), constant after it. Short runs end sharper when the rate comes down.
  c.optimizer.decay_steps = 0
  c.optimizer.decay_floor = 0.05

  c.loss = ml_collections.ConfigDict()
  c.loss.mae = 1.0
  c.loss.mse = 0.0
  c.loss.dssim = 0.0  # (1 - SSIM) / 2, 11x11 Gaussian window, sigma 1.5
  c.loss.ms_ssim = 0.0  # 1 - MS-SSIM
  c.loss.laplacian = 0.0  # sharpness: L1 between the Laplacians (edges) of prediction and target
  c.loss.mask = 0.0  # MSE of the learned mask against the dataset mask
  c.loss.masked = False  # restrict the image loss to the dataset mask when present
  c.loss.eye_mouth_weight = 0.0  # extra weight on eye/mouth regions (0 disables)
  # What that weight multiplies: "pixel", the image loss's own MAE/MSE terms on the eye/mouth
  # pixels (faceswap's eye/mouth multipliers); "mae", a plain MAE there (DeepFaceLab's
  # eyes_mouth_prio: 300 x MAE beside 10 x DSSIM + 10 x MSE). Both are means over all pixels.
  c.loss.eye_mouth_loss = "pixel"
  # DeepFaceLab's true_face_power (df models): weight of a code discriminator's loss that pushes
  # the encoder to give A's faces codes it cannot tell from B's, so A's decoder learns on the
  # kind of code a swap feeds it. 0 disables; DeepFaceLab suggests 0.01, small data more.
  c.loss.true_face = 0.0

  c.augment = ml_collections.ConfigDict()
  c.augment.rotation_deg = 10.0
  c.augment.zoom = 0.05
  c.augment.shift = 0.05
  c.augment.flip_prob = 0.5
  c.augment.warp = True
  c.augment.warp_grid = 5
  c.augment.warp_sigma = 5.0 / 256.0  # noise std as a fraction of the image size
  # DeepFaceLab's advice to switch random_warp off once the faces are learnt: > 0 warps the input
  # only before this step, then trains on unwarped inputs (the affine, flip and colours stay), so
  # the model stops being taught to ignore where the features lie. 0 warps throughout.
  c.augment.warp_until = 0
  c.augment.brightness = 0.1
  c.augment.contrast = 0.1
  c.augment.saturation = 0.1
  c.augment.hue = 0.02
  # DeepFaceLab's random_hsv_power: the network's *input* only (targets keep their colours) gets
  # a random hue shift of up to +-power/2 turns and brightness / saturation changes of up to
  # +-power/2, so the encoder cannot tell the people apart by colour alone. 0 disables.
  c.augment.input_hsv = 0.0
  # DeepFaceLab's ct_mode: "rct" recolours each A face toward a random B face of the batch
  # (Reinhard, L*a*b* statistics inside the masks) before augmenting; "none" leaves colours.
  c.augment.color_transfer = "none"

  c.data = ml_collections.ConfigDict()
  c.data.dir = ""  # TFDS data_dir; empty means ~/tensorflow_datasets
  # jaxswap_faces | jaxswap_synthetic (the builder's name, optionally :version)
  c.data.name = "jaxswap_faces"
  c.data.split = "train"
  # Parts each split is cut into; each process reads its own parts. 0 = one per process. Fix it
  # (e.g. 8) to keep the exact data order when resuming with a different number of processes.
  c.data.shards = 0
  c.data.prefetch = 2  # host batches decoded ahead of the step
  c.data.workers = 2  # decode threads
  # Decoded faces kept in memory (MB, per process; 0 = decode every time): from the second epoch
  # on a batch is a gather instead of PNG decoding, which a GPU would otherwise wait on.
  c.data.cache_mb = 2048
  # A record that cannot be read (truncated shard, damaged PNG): False = stop with an error naming
  # it; True = replace it with the next readable record and count it in the metrics.
  c.data.skip_corrupt = False

  # Persistent XLA compilation cache: "auto" = <workdir>/../.jax_cache (shared by sibling runs),
  # "" = off, anything else = that folder. A restarted run then starts in seconds.
  c.compilation_cache = "auto"

  # Start a new run from the parameters of another run's latest checkpoint (same architecture),
  # e.g. one trained on a pooled dataset of many people (DeepFaceLab's pretraining). The step
  # count and optimiser state start afresh; ignored once this run has a checkpoint of its own.
  c.init_from = ""
  # What it carries over: "all" the parameters, or "encoder" only the encoder side (df: the
  # encoder; LIAE: the encoder and inter_AB), the decoders (and LIAE's inter_B) starting afresh,
  # as faceswap's --load-weights does. Pretrained decoders draw any face they are shown, B's
  # included, and take long to unlearn it (README "How good, how fast").
  c.init_from_parts = "all"

  c.profile_steps = 0  # >0: jax.profiler trace of that many steps into <workdir>/profile

  # "auto": a damaged newest checkpoint is moved to checkpoints/corrupt-STEP/ and the newest intact
  # one is used; "strict": stop instead.
  c.resume = "auto"
  # GPU: set XLA's deterministic-ops flag so a resumed run is bit-exact (costs some speed; see
  # README "Failure and recovery"). CPU and TPU are deterministic either way.
  c.deterministic = True

  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.log_every = 50
  c.preview_every = 1000
  c.preview_faces = 6
  return c
