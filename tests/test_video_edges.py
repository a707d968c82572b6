"""Videos that are not well behaved: audio of another length, a truncated stream, a variable or
missing frame rate, and error messages that name the real cause."""

import os
import subprocess

import numpy as np
import pytest

from jaxswap import convert, extract, provenance, video
from jaxswap.errors import JaxswapError
from jaxswap.faces import alignments
from tests.test_convert import FPS, N, make_video, needs_ffmpeg, read_frames

pytestmark = needs_ffmpeg


def encode(path: str, frames: np.ndarray, fps: float = FPS, audio_seconds: float = 0.0,
           video_filter: tuple = ()) -> None:
  """An H.264 mp4 with its index first (+faststart), so a cut file still opens."""
  h, w = frames.shape[1:3]
  cmd = [video.ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
         "-s", f"{w}x{h}", "-r", str(fps), "-i", "-"]
  if audio_seconds:
    cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={audio_seconds}", "-c:a", "aac"]
  cmd += [*video_filter, "-c:v", "libx264", "-crf", "18", "-pix_fmt", "yuv420p",
          "-movflags", "+faststart", path]
  subprocess.run(cmd, input=frames.tobytes(), check=True)


def duration(path: str, kind: str) -> float:
  """Seconds of a file's first video or audio stream (ffmpeg decodes it to the null muxer)."""
  err = subprocess.run([video.ffmpeg_exe(), "-i", path, "-map", f"0:{kind}:0", "-f", "null", "-"],
                       capture_output=True, text=True, check=True).stderr
  stamp = err.rsplit("time=", 1)[1].split()[0]
  h, m, s = stamp.split(":")
  return int(h) * 3600 + int(m) * 60 + float(s)


def noise(n: int, h: int = 96, w: int = 128) -> np.ndarray:
  return np.random.default_rng(0).integers(0, 256, (n, h, w, 3), np.uint8)


@pytest.mark.parametrize("audio_seconds", [0.3, 2.5])
def test_output_keeps_every_frame_whatever_the_audio_length(tiny_run, tmp_path, audio_seconds):
  path, doc, _ = make_video(str(tmp_path))
  clip = str(tmp_path / "clip.mp4")
  # Same frames, with a soundtrack shorter (0.3 s) or longer (2.5 s) than the 1 s of video.
  subprocess.run([video.ffmpeg_exe(), "-y", "-loglevel", "error", "-i", path, "-f", "lavfi",
                  "-i", f"sine=frequency=440:duration={audio_seconds}", "-map", "0:v", "-map",
                  "1:a", "-c:v", "copy", "-c:a", "aac", clip], check=True)
  out = str(tmp_path / "out.mp4")
  summary = convert.convert(clip, tiny_run, out, convert.Options(batch=8), alignments_path=doc,
                            progress=False)
  assert summary["frames"] == N and len(read_frames(out)) == N
  assert video.audio_codec(out) == "aac"
  assert duration(out, "v") == pytest.approx(N / FPS, abs=0.11)
  # The audio is cut to the video, or ends early; never the other way round.
  assert duration(out, "a") == pytest.approx(min(audio_seconds, N / FPS), abs=0.1)


def test_a_video_truncated_mid_stream_is_an_error_naming_file_and_frame(tiny_run, tmp_path,
                                                                        capsys):
  whole = str(tmp_path / "whole.mp4")
  encode(whole, noise(40))
  data = open(whole, "rb").read()
  cut = tmp_path / "cut.mp4"
  cut.write_bytes(data[:int(len(data) * 0.6)])
  assert video.VideoSource(str(cut)).reported_frames == 40  # the index still promises 40

  code = extract.main(["--input", str(cut), "--output", str(tmp_path / "ext"), "--quiet"])
  err = capsys.readouterr().err
  assert code == 2 and "cut.mp4" in err and "cannot decode frame" in err and "of the 40" in err
  assert not os.path.exists(tmp_path / "ext" / alignments.FILENAME)  # never marked complete

  out = tmp_path / "out.mp4"
  code = convert.main(["--input", str(cut), "--workdir", tiny_run, "--output", str(out), "--to",
                       "a", "--quiet"])
  err = capsys.readouterr().err
  assert code == 2 and "cut.mp4" in err and "cannot decode frame" in err
  assert not out.exists() and not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_variable_frame_rate_is_refused_with_the_reason(tiny_run, tmp_path, capsys):
  vfr = str(tmp_path / "vfr.mp4")
  # Frames 0-19 every 0.1 s, then every 0.2 s: a phone-style variable-rate clip.
  encode(vfr, noise(30), video_filter=("-vf", "setpts='if(lt(N,20),N,2*N-20)/10/TB'",
                                       "-fps_mode", "passthrough"))
  out = tmp_path / "out.mp4"
  code = convert.main(["--input", vfr, "--workdir", tiny_run, "--output", str(out), "--to", "a",
                       "--quiet"])
  err = capsys.readouterr().err
  assert code == 2 and "vfr.mp4" in err and "variable frame rate" in err and "-fps_mode cfr" in err
  assert not out.exists()
  # PNG frames carry no rate: the same clip converts frame by frame.
  summary = convert.convert(vfr, tiny_run, None, convert.Options(batch=8), progress=False,
                            png_dir=str(tmp_path / "png"))
  assert summary["frames"] == 30


def test_missing_frame_rate():
  assert video.frame_rate(25.0, []) == 25.0
  for broken in (0.0, float("nan"), None, 90000.0):  # 90000: a time base, not a rate
    assert video.frame_rate(broken, [0.0, 40.0]) == pytest.approx(25.0)
    assert video.frame_rate(broken, [0.0]) is None
  with pytest.raises(JaxswapError, match="frame rate of 0"):
    video.Mp4Writer("/tmp/never.mp4", 8, 8, 0, provenance.provenance("test"))


def test_errors_name_their_real_cause(video_and_run, capsys):
  path, doc, run = video_and_run
  code = convert.main(["--input", path, "--workdir", run, "--png-dir", "x", "--to", "a",
                       "--face-index", "one", "--quiet"])
  err = capsys.readouterr().err
  assert code == 2 and "--face-index 'one'" in err
  # Not every failure is the face index's: a bad --frames says so itself.
  code = convert.main(["--input", path, "--workdir", run, "--png-dir", "x", "--to", "a",
                       "--frames", "a:b", "--quiet"])
  err = capsys.readouterr().err
  assert code == 2 and "--frames" in err and "face-index" not in err


@pytest.fixture
def video_and_run(tiny_run, tmp_path):
  path, doc, _ = make_video(str(tmp_path))
  return path, doc, tiny_run
