"""PushT drawing primitives against pymunk's own pygame debug-draw (`pymunk.pygame_util.DrawOptions`),
which DINO-WM's PushT drawer extends: fat segments (the walls and every polygon edge) and polygons
with radius-2 edges must give the same pixels. Circles, which upstream's drawer replaces, are
checked against the spec's radii by their areas."""

from __future__ import annotations

import math

import numpy as np
import pygame
import pymunk
import pytest
from pymunk import pygame_util
from pymunk.space_debug_draw_options import SpaceDebugColor

from wmquant.envs import pusht_render as render

SIZE = 160


def blank() -> pygame.Surface:
    canvas = pygame.Surface((SIZE, SIZE))
    canvas.fill(render.WHITE)
    return canvas


def pixels(canvas: pygame.Surface) -> np.ndarray:
    return pygame.surfarray.array3d(canvas).transpose(1, 0, 2)


def debug_colour(colour) -> SpaceDebugColor:
    return SpaceDebugColor(*colour, 255)


def _segments():
    rng = np.random.default_rng(0)
    cases = [
        ((40.0, 40.0), (120.0, 40.0)),  # horizontal
        ((40.0, 30.0), (40.0, 130.0)),  # vertical
        ((30.0, 30.0), (130.0, 130.0)),  # down-right diagonal: the absolute-valued normal folds the quad flat
        ((30.0, 130.0), (130.0, 30.0)),  # up-right diagonal: the quad is a true rectangle
        ((130.0, 60.0), (30.0, 90.0)),  # right to left
        ((80.0, 80.0), (80.0, 80.0)),  # a point
        ((50.4, 60.6), (110.5, 71.5)),  # coordinates that round (half to even)
    ]
    cases += [(tuple(rng.uniform(20, 140, 2)), tuple(rng.uniform(20, 140, 2))) for _ in range(25)]
    return cases


@pytest.mark.parametrize("radius", [0.4, 1.0, 1.4, 2.0, 2.6, 3.3, 7.5, 10.0])
def test_fat_segments_match_pymunks_debug_draw(radius):
    for a, b in _segments():
        ours, theirs = blank(), blank()
        render._draw_fat_segment(ours, a, b, radius, render.WALL_COLOR)
        pygame_util.DrawOptions(theirs).draw_fat_segment(a, b, radius, debug_colour(render.WALL_COLOR), debug_colour(render.WALL_COLOR))
        np.testing.assert_array_equal(pixels(ours), pixels(theirs), err_msg=f"segment {a} -> {b}, radius {radius}")


def test_the_down_right_diagonal_is_drawn_thinner_than_the_up_right_one_as_upstream():
    widths = []
    for a, b in (((30.0, 30.0), (130.0, 130.0)), ((30.0, 130.0), (130.0, 30.0))):
        canvas = blank()
        render._draw_fat_segment(canvas, a, b, 10.0, render.WALL_COLOR)
        widths.append(int(np.all(pixels(canvas) == render.WALL_COLOR, axis=-1).sum()))
    assert widths[0] < 0.85 * widths[1]


def _block_polygons():
    body = pymunk.Body(1.0, 3000.0)
    body.position = (80.0, 60.0)
    for angle in (0.0, 0.3, 1.1, math.pi / 4, 2.9, 4.4):
        body.angle = angle
        for part in (((-30.0, 0.0), (30.0, 0.0), (30.0, 15.0), (-30.0, 15.0)),
                     ((-7.5, 15.0), (7.5, 15.0), (7.5, 60.0), (-7.5, 60.0))):
            yield [tuple(body.local_to_world(v)) for v in part]


def test_polygons_match_pymunks_debug_draw_with_radius_2_edges():
    for vertices in _block_polygons():
        ours, theirs = blank(), blank()
        render._draw_polygon(ours, vertices, render.BLOCK_COLOR)
        pygame_util.DrawOptions(theirs).draw_polygon(
            vertices, render.POLYGON_EDGE_RADIUS, debug_colour(render.BLOCK_COLOR),
            debug_colour(render.light_color(render.BLOCK_COLOR)),
        )
        np.testing.assert_array_equal(pixels(ours), pixels(theirs), err_msg=f"polygon {vertices}")


def test_circles_are_discs_of_rounded_radius_r_and_r_minus_4():
    canvas = blank()
    render._draw_circle(canvas, (50.4, 60.6), 10.6, render.AGENT_COLOR)
    image = pixels(canvas)
    rim = int(np.all(image == render.AGENT_COLOR, axis=-1).sum())
    inner = int(np.all(image == render.light_color(render.AGENT_COLOR), axis=-1).sum())
    # radii round(10.6) = 11 and round(6.6) = 7 (int() would give 10 and 6: 204 and 104 pixels)
    assert rim == pytest.approx(math.pi * (11**2 - 7**2), rel=0.05)
    assert inner == pytest.approx(math.pi * 7**2, rel=0.05)


def test_canvas_points_round_half_to_even():
    assert render.to_canvas((10.6, 20.4)) == (11, 20)
    assert render.to_canvas((10.5, 11.5)) == (10, 12)
    assert render.to_canvas((-0.6, 0.5)) == (-1, 0)
