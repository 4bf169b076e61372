"""Drawing a PushT scene the way DINO-WM's PushT env draws it (spec 2.5).

Everything is drawn with pygame on a white 512x512 canvas in world pixels (y grows downward), then
resized to the observation size. The renderer is a pure function of the scene's geometry, so the
single env, the batched env and the data generator all produce identical frames for identical
states.

Upstream draws through pymunk's debug-draw with a custom drawer; here the same primitives are issued
directly, in a fixed order (goal, block, agent, walls, contact marks), because pymunk's internal
shape iteration order is not part of its API. pymunk's default debug-draw flags also draw every
contact of the last physics sub-step as a short red line; that is reproduced too.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

# pygame prints a banner on import unless told not to.
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pygame  # noqa: E402

WINDOW_SIZE = 512
UPSTREAM_RENDER_SIZE = 224

Color = tuple[int, int, int]
Point = tuple[float, float]

WHITE: Color = (255, 255, 255)
GOAL_COLOR: Color = (144, 238, 144)  # pygame "LightGreen"
AGENT_COLOR: Color = (65, 105, 225)  # "RoyalBlue"
BLOCK_COLOR: Color = (119, 136, 153)  # "LightSlateGray"
WALL_COLOR: Color = (211, 211, 211)  # "LightGray"
CONTACT_COLOR: Color = (231, 76, 60)  # pymunk's default collision-point colour

# Upstream always draws polygon edges as fat segments of this radius.
POLYGON_EDGE_RADIUS = 2.0
# Inner disc of a circle is this much smaller than the circle.
CIRCLE_INNER_INSET = 4.0
# Chipmunk draws each contact as a segment reaching this far into both shapes.
CONTACT_MARK_DEPTH = 2.0


def light_color(color: Color) -> Color:
    """Upstream's "light" variant: each channel x1.2, capped at 255, rounded to the nearest integer
    (pymunk's `SpaceDebugColor.as_int`): LightSlateGray (119, 136, 153) -> (143, 163, 184)."""
    return tuple(round(min(1.2 * c, 255.0)) for c in color)  # type: ignore[return-value]


def to_canvas(point: Point) -> tuple[int, int]:
    """World point -> integer canvas pixel. Python's round (half to even), as pymunk's pygame_util."""
    return round(point[0]), round(point[1])


@dataclass(frozen=True)
class Segment:
    """A fat segment in world pixels (walls)."""

    a: Point
    b: Point
    radius: float


@dataclass(frozen=True)
class Scene:
    """What a frame shows, all in world pixels.

    goal_parts / block_parts: convex polygons (lists of world vertices) of the goal outline and the
    block; agent_position/agent_radius: the pusher disc; walls: static fat segments; contacts: pairs
    of world points (start, end) of the contact marks.
    """

    goal_parts: Sequence[Sequence[Point]]
    block_parts: Sequence[Sequence[Point]]
    agent_position: Point
    agent_radius: float
    walls: Sequence[Segment]
    contacts: Sequence[tuple[Point, Point]] = ()


def _draw_fat_segment(canvas: pygame.Surface, a: Point, b: Point, radius: float, color: Color) -> None:
    p1, p2 = to_canvas(a), to_canvas(b)
    width = round(max(1.0, radius * 2))
    pygame.draw.lines(canvas, color, False, [p1, p2], width)
    if width <= 2:
        return
    # Upstream widens the line with a quad offset along the absolute-valued normal, then caps both
    # ends with discs; for a non-axis-aligned edge the quad is therefore slightly skewed.
    normal = [abs(p2[1] - p1[1]), abs(p2[0] - p1[0])]
    if normal == [0, 0]:
        return
    scale = radius / math.sqrt(normal[0] ** 2 + normal[1] ** 2)
    nx, ny = round(normal[0] * scale), round(normal[1] * scale)
    quad = [(p1[0] - nx, p1[1] - ny), (p1[0] + nx, p1[1] + ny), (p2[0] + nx, p2[1] + ny), (p2[0] - nx, p2[1] - ny)]
    pygame.draw.polygon(canvas, color, quad)
    pygame.draw.circle(canvas, color, p1, round(radius))
    pygame.draw.circle(canvas, color, p2, round(radius))


def _closed_outline(vertices: Sequence[Point]) -> list[tuple[int, int]]:
    """Canvas points of a polygon with the first vertex repeated at the end, as upstream passes them."""
    points = [to_canvas(v) for v in vertices]
    return points + points[:1]


def _draw_polygon(canvas: pygame.Surface, vertices: Sequence[Point], color: Color) -> None:
    pygame.draw.polygon(canvas, light_color(color), _closed_outline(vertices))
    for i, a in enumerate(vertices):
        _draw_fat_segment(canvas, a, vertices[(i + 1) % len(vertices)], POLYGON_EDGE_RADIUS, color)


def _draw_circle(canvas: pygame.Surface, center: Point, radius: float, color: Color) -> None:
    c = to_canvas(center)
    pygame.draw.circle(canvas, color, c, round(radius))
    pygame.draw.circle(canvas, light_color(color), c, round(radius - CIRCLE_INNER_INSET))


def draw_canvas(scene: Scene) -> np.ndarray:
    """The full-resolution frame: uint8 (512, 512, 4) RGBX, row = y, column = x."""
    canvas = pygame.Surface((WINDOW_SIZE, WINDOW_SIZE))
    canvas.fill(WHITE)
    for part in scene.goal_parts:
        pygame.draw.polygon(canvas, GOAL_COLOR, _closed_outline(part))
    for part in scene.block_parts:
        _draw_polygon(canvas, part, BLOCK_COLOR)
    _draw_circle(canvas, scene.agent_position, scene.agent_radius, AGENT_COLOR)
    for wall in scene.walls:
        _draw_fat_segment(canvas, wall.a, wall.b, wall.radius, WALL_COLOR)
    for start, end in scene.contacts:
        pygame.draw.aalines(canvas, CONTACT_COLOR, False, [to_canvas(start), to_canvas(end)])
    # RGBX is a plain copy of pygame's 32-bit pixels (RGB would repack every pixel: 15x slower); the
    # padding channel is dropped after resizing, which treats channels independently.
    rgbx = pygame.image.tobytes(canvas, "RGBX")
    return np.frombuffer(rgbx, dtype=np.uint8).reshape(WINDOW_SIZE, WINDOW_SIZE, 4)


def resize_frame(canvas: np.ndarray, render_size: int) -> np.ndarray:
    """512 px canvas (512, 512, 3 or 4) -> RGB (render_size, render_size, 3) uint8.

    At 224 px and above this is upstream's `cv2.resize` default (bilinear, no antialiasing). Below
    224 px bilinear sampling skips whole canvas rows, so 2-px edges flicker in and out as the block
    moves; area averaging keeps them, hence INTER_AREA there.
    """
    def rgb(image: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2RGB) if image.shape[2] == 4 else image.copy()

    if render_size == WINDOW_SIZE:
        return rgb(canvas)
    if render_size >= UPSTREAM_RENDER_SIZE:
        return rgb(cv2.resize(canvas, (render_size, render_size), interpolation=cv2.INTER_LINEAR))
    # area averaging costs per input pixel: drop the padding channel first
    return cv2.resize(rgb(canvas), (render_size, render_size), interpolation=cv2.INTER_AREA)


def render(scene: Scene, render_size: int) -> np.ndarray:
    """The observation image of `scene`: uint8 (render_size, render_size, 3)."""
    return resize_frame(draw_canvas(scene), render_size)
