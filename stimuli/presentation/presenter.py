"""Show stimulus frames on the rig's display with PsychoPy, time-stamp every flip, capture them.

PsychoPy is imported when a window opens, never at module import: the rig PC imports
`stimuli` for files and protocols without a display, and `psychopy.visual` fails to import
where there is no X server.

Pixel exactness. Frames go through the profile's luminance table in numpy, are mirrored in
numpy, and reach OpenGL as a float texture `level / 127.5 - 1` (PsychoPy's `rgb` space,
-1..1), which the pipeline maps back to exactly `level` in the 8-bit frame buffer. The
texture is magnified with nearest-neighbour sampling (`interpolate=False`) onto a rectangle
whose edges lie on whole screen pixels, so each stimulus pixel is a sharp `scale x scale`
block. PsychoPy never alters grey levels: the window's gamma is left alone headless (Xvfb has
no hardware ramp) and set to 1 (identity ramp) on the rig, so the profile's table is the only
correction. `tests/test_presentation.py` checks the captured back buffer against
`geometry.expected_screen` pixel for pixel.

Timing. On the rig the window waits for vertical blanking, so `win.flip()` returns at the
refresh. Under Xvfb there is no vsync and flips return at once; with `pace=True` (the default
headless) `_VsyncPacer` holds each flip for the next point of a refresh-period grid and logs
that point as its time, so a frame drawn too late lands a refresh (or more) later and is
reported as dropped, as on a display.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import sys
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import numpy as np

from stimuli.errors import InputError
from stimuli.presentation.geometry import (
    PHOTODIODE_OFF,
    Rect,
    orient,
    photodiode_level,
    photodiode_rect,
    stimulus_rect,
)
from stimuli.presentation.log import PresentationLog, find_dropped
from stimuli.presentation.luminance import profile_lut
from stimuli.presentation.rig_profile import RigProfile

# Sleep until this close to a paced flip, then spin (sleep overshoots by ~0.1-1 ms).
_SPIN_S = 0.002


class NoDisplayError(RuntimeError):
    """There is no X display to open a window on."""


def level_to_rgb(levels: np.ndarray) -> np.ndarray:
    """Output levels `[...]` uint8 -> PsychoPy `rgb` values `[...]` float32 in -1..1."""
    return levels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


class Presenter:
    """A PsychoPy window laid out by a rig profile. Use as a context manager.

    `headless=True`: render to a window on the current X display (Xvfb in tests and CI),
    windowed at the top-left, without waiting for vertical blanking; flips are paced by a
    clock (`pace`, default True) and the hardware gamma ramp is not touched.
    `headless=False`: the rig: fullscreen on `profile.screen` when the profile says so (or
    `fullscreen`), flips wait for vertical blanking, the gamma ramp is set to identity.
    """

    def __init__(self, profile: RigProfile, headless: bool = True, *, pace: bool | None = None,
                 fullscreen: bool | None = None) -> None:
        self.profile = profile
        self.headless = headless
        self.pace = headless if pace is None else pace
        self.fullscreen = (profile.fullscreen and not headless) if fullscreen is None else fullscreen
        if headless and self.fullscreen:
            raise InputError("headless rendering is windowed; fullscreen=True needs headless=False")
        self._win: Any = None
        self._patch: Any = None

    # --- window lifetime ------------------------------------------------------------------
    def open(self) -> Presenter:
        if self._win is not None:
            return self
        if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
            raise NoDisplayError(
                "no X display (DISPLAY is unset): run under "
                "xvfb-run -a -s \"-screen 0 1024x768x24 +extension GLX\" (as `make test` does)")
        if self.headless:
            self._check_fits_display()
        from psychopy import logging as plog
        from psychopy import visual

        # PsychoPy warns about its missing monitor calibration file on every window; the rig
        # profile is the calibration here, so keep the console to errors.
        plog.console.setLevel(plog.ERROR)
        p = self.profile
        bg = float(level_to_rgb(np.uint8(profile_lut(p)[p.background])))
        try:
            win = visual.Window(
                size=(p.monitor_width_px, p.monitor_height_px),
                pos=(0, 0) if not self.fullscreen else None,
                units="pix", color=(bg, bg, bg), colorSpace="rgb",
                fullscr=self.fullscreen, screen=p.screen, winType="pyglet",
                allowGUI=not self.fullscreen, useFBO=False, useRetina=False,
                waitBlanking=not self.headless, checkTiming=False, autoLog=False,
                # None leaves the OS ramp as it is (Xvfb has none); 1.0 makes it identity.
                gamma=None if self.headless else 1.0,
                multiSample=False, blendMode="avg",
            )
        except OSError as err:
            raise RuntimeError(f"could not open the rig window on screen {p.screen}: {err}") from err
        if tuple(int(s) for s in win.size) != (p.monitor_width_px, p.monitor_height_px):
            size = tuple(win.size)
            win.close()
            raise RuntimeError(f"window opened at {size[0]}x{size[1]} px, not the profile's "
                               f"{p.monitor_width_px}x{p.monitor_height_px}: pixel mapping would be wrong")
        self._win = win
        patch = photodiode_rect(p)
        if patch is not None:
            self._patch = visual.Rect(win, width=patch.w, height=patch.h, pos=self._centre(patch),
                                      units="pix", lineWidth=0, lineColor=None,
                                      fillColor=(-1, -1, -1), colorSpace="rgb",
                                      interpolate=False, autoLog=False)
        return self

    def close(self) -> None:
        if self._win is not None:
            self._win.close()
            self._win = None
            self._patch = None

    def __enter__(self) -> Presenter:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _check_fits_display(self) -> None:
        import pyglet

        screen = pyglet.canvas.get_display().get_default_screen()
        p = self.profile
        # A window hanging off the X screen has no pixels there: its back buffer would be
        # undefined outside the screen and captures would not match.
        if p.monitor_width_px > screen.width or p.monitor_height_px > screen.height:
            raise InputError(
                f"rig {p.name!r} needs a {p.monitor_width_px}x{p.monitor_height_px} window but the "
                f"X screen is {screen.width}x{screen.height}; use a larger Xvfb screen "
                "(-screen 0 WxHx24) or a smaller profile")

    def _centre(self, rect: Rect) -> tuple[float, float]:
        """PsychoPy `pix` position (centre, y up, origin at the window centre) of a screen rect."""
        hs, ws = self.profile.screen_shape
        return (rect.x + rect.w / 2 - ws / 2, hs / 2 - (rect.y + rect.h / 2))

    # --- presentation ---------------------------------------------------------------------
    def present(self, frames: np.ndarray, frame_rate: float, *, capture: bool = False,
                capture_region: Literal["screen", "stimulus"] = "screen") -> PresentationLog:
        """Show frames `[T, H, W]` uint8 (designed grey levels) at `frame_rate` Hz.

        Each frame stays up for `refresh_rate / frame_rate` refreshes (must be a whole number).
        `capture=True` reads the back buffer before each frame's first flip into
        `log.captured`: the whole screen `[T, Hs, Ws]` (`capture_region="screen"`) or only the
        stimulus rectangle `[T, H*scale, W*scale]` (`"stimulus"`, for long movies), plus the
        photodiode patch level into `log.photodiode`.
        """
        frames = self._checked(frames, capture_region)                        # 1. check
        show = self._prepare(frames, frame_rate, capture, capture_region)     # 2. textures and buffers
        lead_in, end = self._show(frames, show)                               # 3. the flips
        return self._log(show, frame_rate, lead_in, end, capture, capture_region)  # 4. timing log

    def _checked(self, frames: np.ndarray, capture_region: str) -> np.ndarray:
        if self._win is None:
            raise RuntimeError("the presenter is not open: use `with Presenter(profile) as p:`")
        frames = np.asarray(frames)
        if frames.ndim != 3 or frames.dtype != np.uint8:
            raise InputError(f"frames must be [T, H, W] uint8, got {list(frames.shape)} {frames.dtype}")
        if frames.shape[0] < 1:
            raise InputError("frames holds no frame")
        if capture_region not in ("screen", "stimulus"):
            raise InputError(f"capture_region must be 'screen' or 'stimulus', got {capture_region!r}")
        return frames

    def _prepare(self, frames: np.ndarray, frame_rate: float, capture: bool, capture_region: str) -> _Showing:
        from psychopy import visual

        p = self.profile
        n_frames, height, width = frames.shape
        n_per = p.refreshes_per_frame(frame_rate)
        rect = stimulus_rect(p, height, width)
        hs, ws = p.screen_shape
        region = Rect(0, 0, ws, hs) if capture_region == "screen" else rect
        patch = photodiode_rect(p)
        lut = profile_lut(p)
        image = visual.ImageStim(
            self._win, image=self._texture(frames[0], lut), size=(rect.w, rect.h),
            pos=self._centre(rect), units="pix", interpolate=False, colorSpace="rgb",
            color=(1.0, 1.0, 1.0), autoLog=False)
        return _Showing(
            image=image, lut=lut, n_per=n_per, rect=rect, region=region, patch=patch, screen_height=hs,
            captured=np.empty((n_frames, region.h, region.w), dtype=np.uint8) if capture else None,
            photodiode=np.empty(n_frames, dtype=np.uint8) if capture and patch is not None else None,
            refresh_abs=np.empty(n_frames * n_per, dtype=np.float64))

    def _show(self, frames: np.ndarray, show: _Showing) -> tuple[float, float]:
        """Every refresh of every frame; returns the lead-in and closing flips' times."""
        from psychopy import logging as plog

        clock = plog.defaultClock
        win = self._win
        pacer = _VsyncPacer(clock, self.profile.refresh_period_s) if self.pace else None

        def flip() -> float:
            if pacer is not None:
                return pacer.flip(win)
            stamp = win.flip()
            # Without waitBlanking PsychoPy returns None; this is the clock it would have read.
            return float(stamp) if stamp is not None else float(clock.getTime())

        # A garbage-collection pause mid-movie drops frames; collect before, not during.
        gc.collect()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            # Lead-in flip: shows background and a dark patch, and gives frame 0 an interval.
            self._draw_patch(PHOTODIODE_OFF)
            lead_in = flip()
            k = 0
            for i in range(len(frames)):
                if i > 0:
                    show.image.image = self._texture(frames[i], show.lut)
                level = photodiode_level(i)
                for r in range(show.n_per):
                    show.image.draw()
                    self._draw_patch(level)
                    if r == 0:
                        if show.captured is not None:
                            show.captured[i] = _read_back_buffer(show.region, show.screen_height)
                        if show.photodiode is not None:
                            show.photodiode[i] = np.round(_read_back_buffer(show.patch, show.screen_height).mean())
                        self._frame_drawn(i)
                    show.refresh_abs[k] = flip()
                    k += 1
            # Closing flip: the last frame leaves the screen at a logged time.
            self._draw_patch(PHOTODIODE_OFF)
            end = flip()
        finally:
            if gc_was_enabled:
                gc.enable()
        return lead_in, end

    def _frame_drawn(self, index: int) -> None:
        """Called once frame `index` is drawn, before its first flip (nothing here; a busy machine stalls)."""

    def _log(self, show: _Showing, frame_rate: float, lead_in: float, end: float, capture: bool,
             capture_region: str) -> PresentationLog:
        p = self.profile
        refresh_abs, n_per = show.refresh_abs, show.n_per
        origin = float(refresh_abs[0])
        return PresentationLog(
            frame_index=np.arange(len(refresh_abs) // n_per, dtype=np.int64),
            flip_time=np.ascontiguousarray(refresh_abs[::n_per]) - origin,
            refresh_time=refresh_abs - origin,
            dropped=find_dropped(refresh_abs, lead_in, n_per, p.refresh_rate_hz),
            refresh_rate_hz=p.refresh_rate_hz,
            frame_rate_hz=float(frame_rate),
            n_refreshes_per_frame=n_per,
            clock_origin=origin,
            end_time=end - origin,
            stimulus_rect=show.rect,
            paced=self.pace,
            photodiode=show.photodiode,
            captured=show.captured,
            capture_region=capture_region if capture else None,
        )

    def _texture(self, frame: np.ndarray, lut: np.ndarray) -> np.ndarray:
        # OpenGL textures start at the bottom row; numpy frames at the top.
        return np.ascontiguousarray(level_to_rgb(orient(lut[frame], self.profile))[::-1])

    def _draw_patch(self, level: int) -> None:
        if self._patch is not None:
            value = float(level_to_rgb(np.uint8(level)))
            self._patch.fillColor = (value, value, value)
            self._patch.draw()


@dataclass(frozen=True, eq=False)
class _Showing:
    """One presentation's stimulus, geometry and buffers (filled in while it is shown)."""

    image: Any  # the PsychoPy ImageStim
    lut: np.ndarray
    n_per: int  # refreshes per frame
    rect: Rect  # the stimulus on the screen
    region: Rect  # what a capture reads
    patch: Rect | None  # the photodiode patch
    screen_height: int
    captured: np.ndarray | None  # [T, h, w] uint8
    photodiode: np.ndarray | None  # [T] uint8
    refresh_abs: np.ndarray  # [T * n_per] flip times, the presentation clock


class _VsyncPacer:
    """Stands in for vertical blanking where there is none (Xvfb).

    Refreshes happen on a grid of one period, starting at the first flip. A flip waits for
    the next grid point after the previous flip's; a frame that is not drawn by then goes
    out at the first grid point after it is ready, as on a display that missed a refresh.
    The flip time is that grid point, as `win.flip()` with waitBlanking reports the blank.
    """

    def __init__(self, clock: Any, period: float) -> None:
        self.clock = clock
        self.period = period
        self.origin: float | None = None
        self.tick = 0

    def flip(self, win: Any) -> float:
        now = float(self.clock.getTime())
        if self.origin is None:
            win.flip()
            self.origin = float(self.clock.getTime())
            return self.origin
        ready = math.ceil((now - self.origin) / self.period)
        self.tick = max(self.tick + 1, ready)
        target = self.origin + self.tick * self.period
        _wait_until(self.clock, target)
        win.flip()
        return target


def _wait_until(clock: Any, target: float) -> None:
    while True:
        remaining = target - clock.getTime()
        if remaining <= 0:
            return
        if remaining > _SPIN_S:
            time.sleep(remaining - _SPIN_S)


def _read_back_buffer(rect: Rect, screen_height: int) -> np.ndarray:
    """A screen rectangle of the back buffer as grey levels `[h, w]` uint8, top row first."""
    from pyglet import gl

    rgb = np.empty((rect.h, rect.w, 3), dtype=np.uint8)
    gl.glReadBuffer(gl.GL_BACK)
    gl.glPixelStorei(gl.GL_PACK_ALIGNMENT, 1)
    # OpenGL counts rows from the bottom of the window.
    gl.glReadPixels(rect.x, screen_height - rect.y - rect.h, rect.w, rect.h, gl.GL_RGB, gl.GL_UNSIGNED_BYTE,
                    rgb.ctypes.data_as(ctypes.POINTER(gl.GLubyte)))
    grey = rgb[..., 0]
    # Stimuli are grey: unequal channels mean a colour transform crept into the pipeline.
    if not ((grey == rgb[..., 1]).all() and (grey == rgb[..., 2]).all()):
        raise RuntimeError("captured screen is not grey (R, G, B differ): the colour path is wrong")
    return grey[::-1]
