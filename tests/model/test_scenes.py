import random

import numpy as np

from model.scenes import (
    COLOURS,
    HELD_OUT_SEED_START,
    NUMBERS,
    QUESTION_FAMILIES,
    SHAPES,
    ask,
    column_of,
    make_scene,
    render,
)


def test_same_seed_same_scene_and_pixels() -> None:
    a, b = make_scene(42), make_scene(42)
    assert a == b
    assert np.array_equal(np.asarray(render(a)), np.asarray(render(b)))
    assert make_scene(43) != a


def test_objects_are_left_to_right_and_caption_follows() -> None:
    for seed in range(300):
        scene = make_scene(seed)
        xs = [o.x for o in scene.objects]
        assert xs == sorted(xs)
        assert 1 <= len(scene.objects) <= 4
        assert scene.caption.startswith(scene.objects[0].phrase)
        assert scene.caption.endswith(scene.objects[-1].phrase)


def test_grammar_coverage() -> None:
    scenes = [make_scene(HELD_OUT_SEED_START + i) for i in range(500)]
    objects = [o for s in scenes for o in s.objects]
    assert {o.shape for o in objects} == set(SHAPES)
    assert {o.colour for o in objects} == set(COLOURS)
    assert {o.size for o in objects} == {"small", "large"}
    assert {len(s.objects) for s in scenes} == {1, 2, 3, 4}


def test_every_object_has_a_column_of_its_own() -> None:
    for seed in range(300):
        columns = [column_of(o) for o in make_scene(seed).objects]
        assert columns == sorted(set(columns)) and all(0 <= c < 4 for c in columns)


def test_caption_formats() -> None:
    counts = {len(make_scene(s).objects): make_scene(s).caption for s in range(100)}
    assert " and " not in counts[1]
    assert counts[2].count(" and ") == 1 and "," not in counts[2]
    assert counts[4].count(",") == 2 and counts[4].count(" and ") == 1


def test_questions_are_answered_by_the_scene() -> None:
    rng = random.Random(0)
    seen = set()
    for seed in range(400):
        scene = make_scene(seed)
        for family in QUESTION_FAMILIES:
            q = ask(scene, family, rng)
            if q is None:
                continue
            seen.add(family)
            assert len(q.answer.split()) == 1
            if family == "count":
                assert q.answer == ("zero", "one", "two", "three", "four")[len(scene.objects)]
            if family == "colour":
                shape = q.text.removeprefix("what colour is the ").removesuffix("?")
                assert [o.colour for o in scene.objects if o.shape == shape] == [q.answer]
                # the scratchpad names the column of the object asked about
                (obj,) = [o for o in scene.objects if o.shape == shape]
                assert q.scratchpad == NUMBERS[column_of(obj) + 1]
            if family == "exists":
                colour, shape = q.text.removeprefix("is there a ").removesuffix("?").split()
                present = [o for o in scene.objects if (o.colour, o.shape) == (colour, shape)]
                assert q.answer == ("yes" if present else "no")
                # the scratchpad names the matching object's column, or "zero" if there is none
                assert q.scratchpad == (NUMBERS[column_of(present[0]) + 1] if present else "zero")
            if family == "position":
                # the scratchpad names the two objects' columns, in the question's order, then their relation
                first, second, actual = q.scratchpad.split()
                a, b = NUMBERS.index(first), NUMBERS.index(second)
                assert actual == ("left" if a < b else "right"), q
                assert q.answer == ("yes" if f" {actual} of " in q.text else "no"), q
            elif family in ("count", "shape"):
                assert q.scratchpad == ""
    assert seen == set(QUESTION_FAMILIES)


def test_rendered_image_shows_the_objects_colours() -> None:
    scene = make_scene(7)
    pixels = np.asarray(render(scene)).astype(int)
    for obj in scene.objects:
        x, y = int(obj.x * 64), int(obj.y * 64)
        centre = pixels[y, x]
        assert np.abs(centre - np.array(COLOURS[obj.colour])).max() < 60


def test_family_weights_favour_a_family() -> None:
    from model.scenes import ask_any

    scenes = [make_scene(seed, min_objects=3) for seed in range(300)]
    uniform, weighted = random.Random(0), random.Random(0)
    plain = sum(ask_any(s, uniform).family == "position" for s in scenes)
    favoured = sum(ask_any(s, weighted, weights={"position": 5.0}).family == "position" for s in scenes)
    assert favoured > 2 * plain, (plain, favoured)
