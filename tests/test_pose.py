"""Head pose from landmarks (both schemes) and pose coverage, against closed-form cases."""

import cv2
import numpy as np
import pytest

from jaxswap.faces import geometry
from jaxswap.faces import pose

OBJECT = np.array(list(pose.HEAD.values()))


def project(rvec, scheme, count, height=480, width=640):
  """Landmarks of the generic head turned by rvec (the other points left at 0)."""
  proj, _ = cv2.projectPoints(OBJECT, np.array(rvec, np.float64), np.array([5.0, -10.0, 600.0]),
                              pose.camera(height, width), None)
  points = np.zeros((count, 2))
  points[[scheme[k] for k in pose.HEAD]] = proj[:, 0]
  return points


@pytest.mark.parametrize("scheme,count", [(pose.DLIB68, 68),
                                          (pose.MEDIAPIPE478, geometry.NUM_LANDMARKS)])
def test_head_rotation_recovers_a_known_rotation(scheme, count):
  for rvec in ([0.0, 0.0, 0.0], [0.1, -0.3, 0.05], [0.0, 0.0, np.radians(10)]):
    rot = cv2.Rodrigues(np.array(rvec))[0]
    got = pose.head_rotation(project(rvec, scheme, count), 480, 640, scheme)
    assert np.degrees(np.arccos(np.clip((np.trace(got @ rot.T) - 1) / 2, -1, 1))) < 0.1
  # Turned about the vertical axis only: all yaw.
  yaw, pitch, roll = pose.yaw_pitch_roll(
      pose.head_rotation(project([0.0, np.radians(20), 0.0], scheme, count), 480, 640, scheme))
  assert yaw == pytest.approx(20.0, abs=0.2) and abs(pitch) < 0.2 and abs(roll) < 0.2


def test_no_pose_without_finite_landmarks():
  points = project([0.0, 0.0, 0.0], pose.DLIB68, 68)
  points[30] = np.nan
  assert np.isnan(pose.yaw_pitch_roll(pose.head_rotation(points, 480, 640))).all()


def test_pose_range_and_outside_fraction():
  span = pose.pose_range([[-5.0, -10.0, 0.0], [5.0, 0.0, 3.0], [np.nan, 0.0, 0.0]], margin=5.0)
  assert span["yaw"] == [-10.0, 10.0] and span["pitch"] == [-15.0, 5.0]
  poses = [[0.0, 0.0, 0.0], [0.0, 20.0, 0.0], [-12.0, 0.0, 0.0], [9.0, 4.0, 40.0]]
  assert pose.outside_fraction(poses, span) == pytest.approx(0.5)  # roll is not A's to cover
  assert pose.pose_range([], 5.0) is None and pose.outside_fraction([], span) is None


def test_pose_range_tail_ignores_a_few_misfits():
  rng = np.random.default_rng(0)
  angles = np.stack([rng.uniform(-10, 10, 200), rng.uniform(-5, 5, 200), np.zeros(200)], 1)
  angles[0] = (80.0, -70.0, 0.0)  # one bad fit
  assert pose.pose_range(angles, 0.0)["yaw"][1] == 80.0
  span = pose.pose_range(angles, 0.0, tail=0.01)
  assert span["yaw"][1] < 10.5 and span["pitch"][0] > -5.5
