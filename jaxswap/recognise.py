"""An independent judge of faces: dlib's HOG detector, 68-point landmarks and ResNet descriptor.

The evaluator must not grade jaxswap with jaxswap's own eyes (mediapipe finds the faces the model
was trained on), so it asks a different family of models. This module is the only dlib importer;
dlib and its model files come with the optional extra `jaxswap[eval]` (`dlib-bin` +
`face_recognition_models`) and are loaded on first use, never by training.

Descriptors are 128-d; two faces of the same person lie closer than `SAME_PERSON` (0.6, dlib's
threshold, ~99.4 % on LFW). Landmarks follow the iBUG 300-W 68-point scheme in frame pixels.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os

import cv2
import numpy as np

from jaxswap.errors import JaxswapError

SAME_PERSON = 0.6
EYES = tuple(range(36, 48))
MOUTH = tuple(range(48, 68))
# HOG's sliding window is 80 px: a smaller face needs an upsampled image. Detection runs on a copy
# whose longer side is at most DETECT_SIDE (a 4K frame costs 10x more and finds nothing more);
# upsampling stops before the image it searches would exceed MAX_UPSAMPLED_PIXELS.
DETECT_SIDE = 1280
MAX_UPSAMPLED_PIXELS = 2048 * 2048

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels (x1, y1 exclusive)


class MissingEvalExtra(JaxswapError):
  """dlib or its model files are not installed."""


@dataclasses.dataclass(frozen=True)
class Face:
  box: Box
  landmarks: np.ndarray  # (68, 2) float64, frame pixels
  descriptor: np.ndarray | None  # (128,) float64, or None when not asked for
  detected: bool  # found by the detector (False: placed in a box the caller gave)


def _model_file(name: str) -> str:
  """A model file of face_recognition_models, found without importing that package (its
  __init__ imports pkg_resources, which new setuptools releases no longer ship)."""
  spec = importlib.util.find_spec("face_recognition_models")
  if spec is None or not spec.submodule_search_locations:
    raise MissingEvalExtra('the evaluator needs dlib\'s face models (face_recognition_models): '
                           'pip install "jaxswap[eval]"')
  path = os.path.join(list(spec.submodule_search_locations)[0], "models", name)
  if not os.path.isfile(path):
    raise MissingEvalExtra(f"{path} is missing; reinstall the models: "
                           'pip install --force-reinstall "jaxswap[eval]"')
  return path


@functools.lru_cache(maxsize=1)
def _models():
  """(detector, shape predictor, recogniser), loaded once: the files take ~1.5 s to read."""
  try:
    import dlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise MissingEvalExtra('the evaluator needs dlib (an optional extra): '
                           'pip install "jaxswap[eval]"') from None
  landmarks_file = _model_file("shape_predictor_68_face_landmarks.dat")
  descriptor_file = _model_file("dlib_face_recognition_resnet_model_v1.dat")
  try:
    return (dlib.get_frontal_face_detector(), dlib.shape_predictor(landmarks_file),
            dlib.face_recognition_model_v1(descriptor_file))
  except RuntimeError as e:
    raise MissingEvalExtra(f"cannot load dlib's face models ({e}); reinstall them: "
                           'pip install --force-reinstall "jaxswap[eval]"') from None


def load() -> None:
  """Loads the models now; raises MissingEvalExtra (a JaxswapError) without the extra."""
  _models()


def _rgb8(image: np.ndarray) -> np.ndarray:
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f"expected an RGB uint8 image, got {image.dtype} {image.shape}")
  return np.ascontiguousarray(image)


def detect(rgb: np.ndarray, upsample: int | None = None) -> list[tuple[Box, float]]:
  """Face boxes with their HOG scores, best first.

  `upsample=None` tries 0, then 1, 2, ... upsamplings until a face is found (small faces), as long
  as the searched image stays under MAX_UPSAMPLED_PIXELS.
  """
  detector = _models()[0]
  rgb = _rgb8(rgb)
  h, w = rgb.shape[:2]
  scale = min(1.0, DETECT_SIDE / max(h, w))
  small = rgb if scale == 1.0 else cv2.resize(rgb, (round(w * scale), round(h * scale)),
                                              interpolation=cv2.INTER_AREA)
  pixels = small.shape[0] * small.shape[1]
  tries = [upsample] if upsample is not None else [
      u for u in range(4) if u == 0 or pixels * 4 ** u <= MAX_UPSAMPLED_PIXELS]
  for u in tries:
    rects, scores, _ = detector.run(small, u, 0.0)
    if len(rects):
      found = []
      for r, s in zip(rects, scores):
        # Not clipped: a face cut by the frame edge keeps its true extent for the landmarks.
        box = (round(r.left() / scale), round(r.top() / scale),
               round((r.right() + 1) / scale), round((r.bottom() + 1) / scale))
        found.append((box, float(s)))
      return sorted(found, key=lambda f: -f[1])
  return []


def _rect(box: Box):
  import dlib  # pylint: disable=g-import-not-at-top  (only after _models() succeeded)
  return dlib.rectangle(int(box[0]), int(box[1]), int(box[2]) - 1, int(box[3]) - 1)


def landmarks(rgb: np.ndarray, box: Box) -> np.ndarray:
  """The 68 landmarks (frame pixels) of the face in `box`."""
  shape = _models()[1](_rgb8(rgb), _rect(box))
  return np.array([(p.x, p.y) for p in shape.parts()], np.float64)


def descriptor(rgb: np.ndarray, box: Box, points: np.ndarray, num_jitters: int = 1) -> np.ndarray:
  """The 128-d identity descriptor of the face with these landmarks (dlib aligns it itself)."""
  import dlib  # pylint: disable=g-import-not-at-top
  _, _, recogniser = _models()
  shape = dlib.full_object_detection(_rect(box), [dlib.point(int(round(x)), int(round(y)))
                                                  for x, y in points])
  return np.array(recogniser.compute_face_descriptor(_rgb8(rgb), shape, num_jitters), np.float64)


def analyse(rgb: np.ndarray, box: Box | None = None, *, with_descriptor: bool = True,
            num_jitters: int = 1, upsample: int | None = None) -> Face | None:
  """The largest face of a frame (or the face in a known `box`), None when there is none."""
  detected = box is None
  if box is None:
    found = detect(rgb, upsample)
    if not found:
      return None
    box = max(found, key=lambda f: box_area(f[0]))[0]
  points = landmarks(rgb, box)
  desc = descriptor(rgb, box, points, num_jitters) if with_descriptor else None
  return Face(box=tuple(int(v) for v in box), landmarks=points, descriptor=desc,
              detected=detected)


def box_area(box: Box) -> int:
  return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


def iou(a: Box, b: Box) -> float:
  inter = box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
  union = box_area(a) + box_area(b) - inter
  return inter / union if union else 0.0


def distance(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))


def one_person(descriptors: np.ndarray) -> np.ndarray:
  """bool mask of the descriptors of the person most of them show.

  A reference video can show other faces besides its subject (someone passing, a photo or a
  drawing on a screen); one of them in the mean descriptor pulls it away from the subject. Kept:
  the faces within SAME_PERSON of the medoid (the face with the smallest median distance to the
  others), which is the subject's whenever the subject is most of the faces.
  """
  d = np.asarray(descriptors, np.float64)
  dist = np.linalg.norm(d[:, None, :] - d[None, :, :], axis=-1)
  medoid = int(np.argmin(np.median(dist, axis=1)))
  return dist[medoid] < SAME_PERSON
