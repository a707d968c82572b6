"""Face detection and 478-point landmarks: the one module that imports mediapipe.

mediapipe 0.10.14's legacy solutions bundle their models in the wheel, so nothing is downloaded:
`face_detection` (BlazeFace, full-range model by default) finds faces and scores them in the whole
frame; `face_mesh` (refine_landmarks=True: 468 points + 10 iris points) then runs on a square crop
around each detection. Cropping first keeps small and distant faces (which face_mesh's own
short-range detector misses in a large frame) and makes each face of a multi-face frame its own
mesh run. Every frame is processed independently (static mode, no tracking state), so the result
for a frame never depends on which frames came before it: an interrupted, resumed extraction gives
exactly the result of one clean run. At ~4 ms detection + ~4 ms landmarks per 720p face on one
core this is fast enough not to need tracking.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings

import cv2
import numpy as np

from jaxswap.errors import JaxswapError
from jaxswap.faces.geometry import NUM_LANDMARKS

_MESH_INPUT = 256  # side of the square crop handed to face_mesh


@dataclasses.dataclass
class Face:
  """One face in one frame, all coordinates in frame pixels (pixel centres at integers)."""
  bbox: np.ndarray  # (4,) float: x0, y0, x1, y1
  score: float  # face_detection confidence in [0, 1]
  landmarks: np.ndarray | None = None  # (478, 2) float32; None when the mesh found no face

  @property
  def size(self) -> float:
    """Face size in frame pixels: the larger side of the detection box."""
    return float(max(self.bbox[2] - self.bbox[0], self.bbox[3] - self.bbox[1]))


def _mediapipe():
  # mediapipe's C++ logging and an old protobuf call print noise on every start; keep errors only.
  os.environ.setdefault("GLOG_minloglevel", "2")
  warnings.filterwarnings("ignore", message=".*GetPrototype.*", category=UserWarning)
  try:
    # pylint: disable-next=g-import-not-at-top
    from mediapipe.python.solutions import face_detection, face_mesh
  except ImportError as e:
    raise JaxswapError(f"face detection needs mediapipe==0.10.14 ({e})") from None
  return face_detection, face_mesh


class FaceDetector:
  """Finds faces (bbox + score) and their 478 landmarks in RGB uint8 frames.

  Not thread-safe (mediapipe graphs are stateful objects); use one per thread.
  """

  def __init__(self, min_confidence: float = 0.5, model: str = "full",
               crop_scale: float = 2.0):
    if model not in ("full", "short"):
      raise JaxswapError(f"detector model {model!r} is not 'full' or 'short'")
    face_detection, face_mesh = _mediapipe()
    self.crop_scale = crop_scale
    with _quiet_stderr():  # TFLite/absl start-up chatter, printed straight to fd 2
      self._start(face_detection, face_mesh, min_confidence, model)

  def _start(self, face_detection, face_mesh, min_confidence: float, model: str) -> None:
    # full-range BlazeFace also finds faces a few metres away; short-range only close-ups.
    self._detector = face_detection.FaceDetection(
        model_selection=1 if model == "full" else 0, min_detection_confidence=min_confidence)
    self._close = face_detection.FaceDetection(model_selection=0,
                                               min_detection_confidence=min_confidence)
    # The crop holds one face at about half its width: face_mesh's own detector finds it easily,
    # so a low threshold there only avoids rejecting faces that face_detection already accepted.
    self._mesh = face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                    refine_landmarks=True, min_detection_confidence=0.3)
    blank = np.zeros((_MESH_INPUT, _MESH_INPUT, 3), np.uint8)
    self._detector.process(blank)  # the graphs load their models on the first frame
    self._close.process(blank)
    self._mesh.process(blank)

  def close(self) -> None:
    self._detector.close()
    self._close.close()
    self._mesh.close()

  def __enter__(self) -> "FaceDetector":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def find_faces(self, rgb: np.ndarray, tiles: int = 1) -> list[Face]:
    """Detections, largest first, without landmarks.

    tiles > 1 also searches a tiles x tiles grid of overlapping windows: BlazeFace sees the frame
    at 192 px, so in a large group photo a face under ~60 px is only found in a window.
    """
    rgb = _contiguous(rgb)
    h, w = rgb.shape[:2]
    # The short-range model adds large, close and partly cut-off faces the full-range one misses.
    faces = self._detect(self._detector, rgb, 0, 0) + self._detect(self._close, rgb, 0, 0)
    if tiles > 1:
      tw, th = min(w, int(w / tiles * 1.3)), min(h, int(h / tiles * 1.3))
      for gy in range(tiles):
        for gx in range(tiles):
          x0, y0 = round(gx * (w - tw) / (tiles - 1)), round(gy * (h - th) / (tiles - 1))
          window = np.ascontiguousarray(rgb[y0:y0 + th, x0:x0 + tw])
          faces += self._detect(self._detector, window, x0, y0)
    faces = _suppress_duplicates(faces)
    faces.sort(key=lambda f: -(f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
    return faces

  @staticmethod
  def _detect(detector, rgb: np.ndarray, x0: int, y0: int) -> list[Face]:
    h, w = rgb.shape[:2]
    faces = []
    for det in detector.process(rgb).detections or []:
      box = det.location_data.relative_bounding_box
      bx, by = box.xmin * w, box.ymin * h
      bbox = np.array([bx, by, bx + box.width * w, by + box.height * h], np.float64)
      bbox[[0, 2]] = np.clip(bbox[[0, 2]], 0, w)
      bbox[[1, 3]] = np.clip(bbox[[1, 3]], 0, h)
      if bbox[2] - bbox[0] >= 1 and bbox[3] - bbox[1] >= 1:
        faces.append(Face(bbox=bbox + (x0, y0, x0, y0), score=float(det.score[0])))
    return faces

  def landmarks(self, rgb: np.ndarray, face: Face) -> np.ndarray | None:
    """(478, 2) landmarks of `face` in frame pixels, or None when the mesh rejects it."""
    crop, x0, y0, side = _square_crop(rgb, face.bbox, self.crop_scale)
    unit = self._mesh_points(crop)
    if unit is None:
      return None
    # mediapipe's normalised coordinates put pixel centres at (i + 0.5) / size; so does resize.
    pts = unit * side + (x0 - 0.5, y0 - 0.5)
    centre = (face.bbox[:2] + face.bbox[2:]) / 2
    # A neighbour's face can win inside the crop; keep the mesh only if it is this detection's.
    if np.any(np.abs(pts.mean(0) - centre) > 0.5 * face.size):
      return None
    return pts.astype(np.float32)

  def crop_landmarks(self, crop: np.ndarray, margin: float = 0.35) -> np.ndarray | None:
    """(478, 2) landmarks of the face filling an aligned crop, in the crop's pixels, or None.

    The crop is framed as `landmarks` frames a detection (the face about half the mesh's input):
    `margin` x its side of black is added on every side before it is resized for the mesh.
    """
    crop = _contiguous(crop)
    side = crop.shape[0]
    pad = int(round(margin * side))
    framed = cv2.copyMakeBorder(crop, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    full = side + 2 * pad
    interp = cv2.INTER_AREA if full > _MESH_INPUT else cv2.INTER_CUBIC
    unit = self._mesh_points(cv2.resize(framed, (_MESH_INPUT, _MESH_INPUT), interpolation=interp))
    return None if unit is None else (unit * full - pad - 0.5).astype(np.float32)

  def _mesh_points(self, crop: np.ndarray) -> np.ndarray | None:
    """face_mesh on a mesh-sized crop: (478, 2) float64 in mediapipe's [0, 1] units, or None."""
    result = self._mesh.process(crop)
    if not result.multi_face_landmarks:
      return None
    lm = result.multi_face_landmarks[0].landmark
    if len(lm) != NUM_LANDMARKS:
      return None
    return np.array([[p.x, p.y] for p in lm], np.float64)

  def detect(self, rgb: np.ndarray, min_size: float = 0.0, tiles: int = 1) -> list[Face]:
    """Faces, largest first, with landmarks for those at least `min_size` pixels large."""
    faces = self.find_faces(rgb, tiles)
    for face in faces:
      if face.size >= min_size:
        face.landmarks = self.landmarks(rgb, face)
    return faces


def _suppress_duplicates(faces: list[Face], overlap: float = 0.5) -> list[Face]:
  """Greedy non-maximum suppression: of boxes covering each other, keep the best scored."""
  kept: list[Face] = []
  for face in sorted(faces, key=lambda f: -f.score):
    a = face.bbox
    dup = False
    for other in kept:
      b = other.bbox
      iw = min(a[2], b[2]) - max(a[0], b[0])
      ih = min(a[3], b[3]) - max(a[1], b[1])
      if iw > 0 and ih > 0:
        smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
        dup = iw * ih > overlap * smaller  # also catches a face cut in two by a tile edge
      if dup:
        break
    if not dup:
      kept.append(face)
  return kept


@contextlib.contextmanager
def _quiet_stderr():
  try:
    saved = os.dup(2)
  except OSError:
    yield
    return
  try:
    with open(os.devnull, "wb") as null:
      os.dup2(null.fileno(), 2)
      yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def _contiguous(rgb: np.ndarray) -> np.ndarray:
  if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
    raise ValueError(f"expected an RGB uint8 image, got {rgb.dtype} {rgb.shape}")
  return np.ascontiguousarray(rgb)


def _square_crop(rgb: np.ndarray, bbox: np.ndarray, crop_scale: float):
  """A square window of `crop_scale` x the box's larger side, centred on it, resized to 256.

  Returns (crop, x0, y0, side): the window's top-left frame pixel and its side, so a point at
  normalised crop position u in [0, 1] is at frame pixel u * side + x0 - 0.5. Off-frame parts are
  black; shrinking uses an area filter so large faces in 4K frames do not alias.
  """
  h, w = rgb.shape[:2]
  side = max(8, int(round(crop_scale * max(bbox[2] - bbox[0], bbox[3] - bbox[1]))))
  x0 = int(round((bbox[0] + bbox[2]) / 2 - side / 2))
  y0 = int(round((bbox[1] + bbox[3]) / 2 - side / 2))
  cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
  window = rgb[cy0:cy1, cx0:cx1]
  if window.size == 0:
    window = np.zeros((side, side, 3), np.uint8)
  elif window.shape[:2] != (side, side):
    window = cv2.copyMakeBorder(window, cy0 - y0, y0 + side - cy1, cx0 - x0, x0 + side - cx1,
                                cv2.BORDER_CONSTANT, value=(0, 0, 0))
  interp = cv2.INTER_AREA if side > _MESH_INPUT else cv2.INTER_LINEAR
  crop = cv2.resize(window, (_MESH_INPUT, _MESH_INPUT), interpolation=interp)
  return crop, x0, y0, side
