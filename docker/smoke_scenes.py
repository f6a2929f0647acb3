"""Test scenes for the smoke test, as JSON on stdout: PNG (base64), caption, a question and its answer.

Runs inside the built image (`docker compose exec -T api python - < docker/smoke_scenes.py`), so the
scenes come from the very `model.scenes` the served model was trained on, and the host needs no Pillow.
Seeds are held-out ones (never seen in training).
"""

import base64
import io
import json
import random
import sys

from model.scenes import HELD_OUT_SEED_START, ask_any, make_scene, render

count = int(sys.argv[1]) if len(sys.argv) > 1 else 4
scenes = []
for seed in range(HELD_OUT_SEED_START + 1, HELD_OUT_SEED_START + 1 + count):
    scene = make_scene(seed)
    question = ask_any(scene, random.Random(seed))
    png = io.BytesIO()
    render(scene).save(png, format="PNG")
    scenes.append(
        {
            "seed": seed,
            "png_base64": base64.b64encode(png.getvalue()).decode(),
            "caption": scene.caption,
            "question": question.text,
            "answer": question.answer,
        }
    )
json.dump(scenes, sys.stdout)
